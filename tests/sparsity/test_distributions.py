"""ERK and uniform layer densities: golden values from docs/reference.md §2.2."""

import numpy as np
import pytest

from sparse_vit_jax.sparsity import distributions


def deit_shapes(dim: int, mlp: int, num_classes: int = 1000, depth: int = 12) -> dict:
    """Prunable shapes of a DeiT in Flax layouts (patch conv HWIO, Dense kernels (in, out))."""
    shapes = {'patch_embed/kernel': (16, 16, 3, dim)}
    for i in range(depth):
        shapes[f'blocks_{i}/attn/qkv/kernel'] = (dim, 3 * dim)
        shapes[f'blocks_{i}/attn/proj/kernel'] = (dim, dim)
        shapes[f'blocks_{i}/mlp/fc1/kernel'] = (dim, mlp)
        shapes[f'blocks_{i}/mlp/fc2/kernel'] = (mlp, dim)
    shapes['head/kernel'] = (dim, num_classes)
    return shapes


TINY, SMALL, BASE = (192, 768), (384, 1536), (768, 3072)


def by_kind(densities: dict, block: int = 0) -> dict:
    prefix = f'blocks_{block}/'
    return {
        'qkv': densities[prefix + 'attn/qkv/kernel'],
        'proj': densities[prefix + 'attn/proj/kernel'],
        'fc1': densities[prefix + 'mlp/fc1/kernel'],
        'fc2': densities[prefix + 'mlp/fc2/kernel'],
        'patch': densities['patch_embed/kernel'],
        'head': densities['head/kernel'],
    }


def test_erk_tiny_half_density_matches_reference_table():
    d = by_kind(distributions.erk(deit_shapes(*TINY), 0.5))
    assert {k: round(v, 3) for k, v in d.items()} == {
        'qkv': 0.512,
        'proj': 0.768,
        'fc1': 0.480,
        'fc2': 0.480,
        'patch': 0.114,
        'head': 0.458,
    }


def test_erk_tiny_cifar100_matches_official_log():
    # SViTE/backup/032801_cifar_dst.log: Tiny, 100 classes, density 0.05.
    d = by_kind(distributions.erk(deit_shapes(*TINY, num_classes=100), 0.05))
    assert round(d['qkv'], 4) == 0.0509
    assert round(d['proj'], 4) == 0.0763
    assert round(d['fc1'], 4) == round(d['fc2'], 4) == 0.0477
    assert round(d['patch'], 4) == 0.0113
    assert round(d['head'], 3) == 0.111


def test_erk_same_epsilon_for_every_block():
    d = distributions.erk(deit_shapes(*TINY), 0.5)
    assert len({round(by_kind(d, i)['qkv'], 15) for i in range(12)}) == 1


@pytest.mark.parametrize('model', [TINY, SMALL, BASE])
@pytest.mark.parametrize('density', [0.05, 0.3, 0.5, 0.7, 0.8, 0.95])
def test_erk_overall_density_is_exact_and_layers_valid(model, density):
    shapes = deit_shapes(*model)
    d = distributions.erk(shapes, density)
    assert distributions.overall_density(shapes, d) == pytest.approx(density, abs=1e-12)
    assert all(0.0 < v <= 1.0 for v in d.values())


@pytest.mark.parametrize('model', [TINY, SMALL, BASE])
def test_erk_attn_proj_dense_at_density_07(model):
    d = by_kind(distributions.erk(deit_shapes(*model), 0.7))
    assert d['proj'] == 1.0
    assert all(v < 1.0 for k, v in d.items() if k != 'proj')


@pytest.mark.parametrize('model', [TINY, SMALL, BASE])
def test_erk_nothing_dense_at_density_06(model):
    assert all(v < 1.0 for v in distributions.erk(deit_shapes(*model), 0.6).values())


def test_erk_base_08_runs_the_dense_loop_twice():
    shapes = deit_shapes(*BASE)
    d = by_kind(distributions.erk(shapes, 0.8))
    assert d['proj'] == 1.0 and d['head'] == 1.0
    # head's raw value is strictly below proj's, so exact-equality selection cannot have made it
    # dense in the same iteration as proj: the loop ran at least twice.
    raw = {k: sum(s) / np.prod(s) for k, s in shapes.items()}
    assert raw['head/kernel'] < raw['blocks_0/attn/proj/kernel']


def test_erk_is_invariant_to_dimension_order():
    hwio = deit_shapes(*TINY)
    oihw = {k: tuple(reversed(s)) for k, s in hwio.items()}
    a, b = distributions.erk(hwio, 0.4), distributions.erk(oihw, 0.4)
    assert all(a[k] == pytest.approx(b[k], rel=1e-14) for k in a)


def test_erk_hand_computed_two_layers():
    # raw: a (10, 10) -> 0.2; b (2, 2) -> 1.0. density 0.5: eps = 52/(20 + 4) = 2.1667 -> b
    # exceeds 1 and turns dense. Then eps = (50 - 2) / 20 = 2.4, a = 0.48.
    d = distributions.erk({'a': (10, 10), 'b': (2, 2)}, 0.5)
    assert d['b'] == 1.0
    assert d['a'] == pytest.approx(0.48, rel=1e-12)


def test_erk_all_equal_raw_at_density_one_is_all_dense():
    assert distributions.erk({'a': (4, 4), 'b': (4, 4)}, 1.0) == {'a': 1.0, 'b': 1.0}


def test_uniform():
    assert distributions.uniform({'a': (2, 3), 'b': (4, 4, 1, 2)}, 0.3) == {'a': 0.3, 'b': 0.3}


@pytest.mark.parametrize('bad', [0.0, -0.1, 1.5])
def test_invalid_density_raises(bad):
    with pytest.raises(ValueError, match='density'):
        distributions.erk({'a': (2, 2)}, bad)
    with pytest.raises(ValueError, match='density'):
        distributions.uniform({'a': (2, 2)}, bad)


def test_invalid_shapes_raise():
    with pytest.raises(ValueError, match='non-empty'):
        distributions.erk({}, 0.5)
    with pytest.raises(ValueError, match='shape'):
        distributions.erk({'a': (0, 3)}, 0.5)
