"""Prunable-set selection, initial masks and density statistics (docs/reference.md §2.1, §2.2,
§3.1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_vit_jax.sparsity import distributions, masks

DIM, HIDDEN, DEPTH, CLASSES = 8, 16, 2, 5
PRUNABLE = ['patch_embed/kernel', 'head/kernel'] + [
    f'blocks_{i}/{name}/kernel'
    for i in range(DEPTH)
    for name in ('attn/qkv', 'attn/proj', 'mlp/fc1', 'mlp/fc2')
]


def tiny_params(make=lambda shape: jnp.zeros(shape)) -> dict:
    """A DeiT-shaped Flax params tree, leaves built by `make(shape)`."""
    dense = lambda i, o: {'kernel': make((i, o)), 'bias': make((o,))}
    norm = lambda: {'scale': make((DIM,)), 'bias': make((DIM,))}
    params = {
        'patch_embed': {'kernel': make((4, 4, 3, DIM)), 'bias': make((DIM,))},
        'cls_token': make((1, 1, DIM)),
        'pos_embed': make((1, 5, DIM)),
        'token_selector': dense(DIM, 1),
        'norm': norm(),
        'head': dense(DIM, CLASSES),
    }
    for i in range(DEPTH):
        params[f'blocks_{i}'] = {
            'norm1': norm(),
            'norm2': norm(),
            'attn': {
                'qkv': dense(DIM, 3 * DIM),
                'proj': dense(DIM, DIM),
                'token_selector': dense(DIM, 1),
            },
            'mlp': {'fc1': dense(DIM, HIDDEN), 'fc2': dense(HIDDEN, DIM)},
        }
    return params


def flat(tree) -> dict:
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]:
        out[masks.path_name(path)] = leaf
    return out


@pytest.mark.parametrize(
    'make',
    [
        jnp.zeros,
        lambda s: jax.ShapeDtypeStruct(s, jnp.float32),
        tuple,
    ],
    ids=['arrays', 'shape_dtype_structs', 'shape_tuples'],
)
def test_prunable_set_is_exactly_patch_qkv_proj_fc_head(make):
    params = tiny_params(make)
    assert sorted(masks.prunable_shapes(params)) == sorted(PRUNABLE)


def test_is_prunable_rules():
    assert masks.is_prunable(('blocks_0', 'attn', 'qkv', 'kernel'), jnp.zeros((2, 6)))
    assert masks.is_prunable(('patch_embed', 'kernel'), jnp.zeros((1, 1, 1, 1)))
    assert not masks.is_prunable(('cls_token',), jnp.zeros((1, 1, 2)))
    assert not masks.is_prunable(('head', 'bias'), jnp.zeros((3,)))
    assert not masks.is_prunable(('token_selector', 'kernel'), jnp.zeros((4, 1)))
    assert not masks.is_prunable(('blocks_3', 'attn', 'token_selector', 'kernel'), (4, 1))
    # jax key-path entries work as path components
    key_path = jax.tree_util.tree_flatten_with_path({'head': {'kernel': 0}})[0][0][0]
    assert masks.is_prunable(key_path, (3, 2))


def test_layer_densities_erk_tree_matches_distributions():
    params = tiny_params()
    dens = masks.layer_densities(params, 0.3)
    flat_d = {k: v for k, v in flat(dens).items() if v is not None}
    assert flat_d == distributions.erk(masks.prunable_shapes(params), 0.3)
    assert dens['cls_token'] is None and dens['blocks_0']['norm1']['scale'] is None
    assert dens['token_selector']['kernel'] is None
    uni = masks.layer_densities(params, 0.3, distribution='uniform')
    assert {v for v in flat(uni).values() if v is not None} == {0.3}
    with pytest.raises(ValueError, match='distribution'):
        masks.layer_densities(params, 0.3, distribution='er')


def test_random_weight_masks_structure_and_none_leaves():
    params = tiny_params()
    m = masks.random_weight_masks(jax.random.key(0), params, masks.layer_densities(params, 0.5))
    fm = flat(m)
    assert sorted(k for k, v in fm.items() if v is not None) == sorted(PRUNABLE)
    for name in PRUNABLE:
        assert fm[name].dtype == jnp.bool_ and fm[name].shape == flat(params)[name].shape
    assert m['pos_embed'] is None and m['head']['bias'] is None


def test_random_weight_masks_exact_counts():
    shapes = {'a': (37, 11), 'b': (4, 4, 3, 5), 'c': (3, 3)}
    dens = {'a': 0.3, 'b': 0.051, 'c': 1.0}
    m = masks.random_weight_masks(jax.random.key(1), shapes, dens, exact=True)
    assert int(m['a'].sum()) == round(0.3 * 37 * 11)
    assert int(m['b'].sum()) == int(np.floor(0.051 * 240 + 0.5))
    assert bool(m['c'].all())


def test_random_weight_masks_bernoulli_mean_close_to_density():
    shapes = {'big': (200, 300), 'dense': (10, 10), 'tiny': (50, 40)}
    dens = {'big': 0.2, 'dense': 1.0, 'tiny': 0.05}
    m = masks.random_weight_masks(jax.random.key(2), shapes, dens)
    assert abs(float(m['big'].mean()) - 0.2) < 0.01
    assert abs(float(m['tiny'].mean()) - 0.05) < 0.02
    assert bool(m['dense'].all())


def test_random_weight_masks_deterministic_and_per_layer_independent():
    params = tiny_params()
    dens = masks.layer_densities(params, 0.4)
    a = flat(masks.random_weight_masks(jax.random.key(3), params, dens))
    b = flat(masks.random_weight_masks(jax.random.key(3), params, dens))
    c = flat(masks.random_weight_masks(jax.random.key(4), params, dens))
    for name in PRUNABLE:
        np.testing.assert_array_equal(a[name], b[name])
    assert any(not np.array_equal(a[n], c[n]) for n in PRUNABLE)
    # same-shaped layers get different masks (per-layer keys)
    assert not np.array_equal(a['blocks_0/mlp/fc1/kernel'], a['blocks_1/mlp/fc1/kernel'])
    # a layer's mask depends only on the key and its name, not on the other layers
    alone = masks.random_weight_masks(
        jax.random.key(3),
        {'head': {'kernel': (DIM, CLASSES)}},
        {'head/kernel': dens['head']['kernel']},
    )
    np.testing.assert_array_equal(alone['head']['kernel'], a['head/kernel'])


def test_random_weight_masks_validates_densities():
    with pytest.raises(ValueError, match='no density'):
        masks.random_weight_masks(jax.random.key(0), {'a': (2, 2)}, {'b': 0.5})
    with pytest.raises(ValueError, match=r'\[0, 1\]'):
        masks.random_weight_masks(jax.random.key(0), {'a': (2, 2)}, {'a': 1.5})


@pytest.mark.parametrize(
    'num_units,density,count',
    [
        (3, 0.7, 2),
        (6, 0.5, 3),
        (12, 0.4, 4),
        (768, 0.7, 537),
        (1536, 0.7, 1075),
        (3072, 0.6, 1843),
        (3072, 0.3, 921),
    ],
)
def test_random_unit_masks_counts_follow_reference_int_truncation(num_units, density, count):
    m = masks.random_unit_masks(jax.random.key(5), 4, num_units, density)
    assert m.shape == (4, num_units) and m.dtype == jnp.bool_
    assert np.asarray(m.sum(axis=1)).tolist() == [count] * 4


def test_random_unit_masks_rows_differ_and_deterministic():
    a = masks.random_unit_masks(jax.random.key(6), 8, 32, 0.5)
    b = masks.random_unit_masks(jax.random.key(6), 8, 32, 0.5)
    np.testing.assert_array_equal(a, b)
    assert len({tuple(np.asarray(r).tolist()) for r in a}) > 1
    with pytest.raises(ValueError):
        masks.random_unit_masks(jax.random.key(6), 8, 32, 1.5)


def test_density_stats():
    m = {
        'a': {'kernel': jnp.array([[True, False], [False, False]]), 'bias': None},
        'b': jnp.ones((2, 3), bool),
    }
    assert masks.weight_density_stats(m) == {'a/kernel': 0.25, 'b': 1.0}
    assert masks.overall_weight_density(m) == pytest.approx(7 / 10)


def test_exact_masks_reach_erk_overall_density():
    params = tiny_params()
    m = masks.random_weight_masks(
        jax.random.key(7), params, masks.layer_densities(params, 0.5), exact=True
    )
    total = sum(int(np.prod(s)) for s in masks.prunable_shapes(params).values())
    # per-layer rounding moves the overall count by at most half an entry per layer
    assert abs(masks.overall_weight_density(m) - 0.5) * total <= 0.5 * len(PRUNABLE)


# ----------------------------------------------------------------------------- magnitude init


def _random_params(seed=0):
    rng = np.random.default_rng(seed)
    return tiny_params(lambda shape: jnp.asarray(rng.normal(size=shape), jnp.float32))


@pytest.mark.parametrize('distribution', ['erk', 'uniform'])
def test_magnitude_masks_keep_the_largest_weights_at_the_exact_random_counts(distribution):
    params = _random_params()
    densities = masks.layer_densities(params, 0.4, distribution)
    by_magnitude = flat(masks.magnitude_weight_masks(params, densities))
    weights, density = flat(params), flat(densities)
    assert {k for k, v in by_magnitude.items() if v is not None} == set(PRUNABLE)
    for name in PRUNABLE:
        mask, magnitude = np.asarray(by_magnitude[name]), np.abs(np.asarray(weights[name]))
        assert mask.dtype == bool and mask.shape == magnitude.shape
        # exact random init's count for the distribution's density (test_random_weight_masks_
        # exact_counts checks that formula against the random masks)
        assert mask.sum() == np.floor(float(density[name]) * mask.size + 0.5), name
        if 0 < mask.sum() < mask.size:
            assert magnitude[mask].min() > magnitude[~mask].max(), name


def test_magnitude_masks_break_ties_by_index_and_keep_dense_layers_dense():
    params = {'a': {'kernel': jnp.zeros((2, 5))}, 'b': {'kernel': jnp.ones((3, 3))}}
    m = masks.magnitude_weight_masks(params, {'a/kernel': 0.3, 'b/kernel': 1.0})
    np.testing.assert_array_equal(m['a']['kernel'].reshape(-1), np.arange(10) < 3)
    assert bool(m['b']['kernel'].all())


def test_top_unit_masks_keep_the_random_counts_by_largest_score():
    scores = jnp.asarray([[0.1, 0.9, 0.5, 0.7, 0.2], [3.0, 1.0, 1.0, 2.0, 0.0]])
    m = np.asarray(masks.top_unit_masks(scores, 0.5))  # int(5 * 0.5) = 2 per block
    np.testing.assert_array_equal(m, [[0, 1, 0, 1, 0], [1, 0, 0, 1, 0]])
    random = masks.random_unit_masks(jax.random.key(0), 2, 5, 0.5)
    assert (m.sum(1) == np.asarray(random).sum(1)).all()
