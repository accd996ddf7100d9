"""The DeiT/ViT model: exact sizes, per-layer widths, gates, drop-path, head-output gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_vit_jax.models import create_model
from sparse_vit_jax.models.vit import HEAD_OUTPUTS, HeadsMajorQkv, _gelu, attention, exact_gelu


def _count(model, channels=3):
    shape = (1, model.image_size, model.image_size, channels)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
    return sum(x.size for x in jax.tree.leaves(variables['params']))


@pytest.mark.parametrize(
    'name, expected',
    [
        ('deit_tiny_patch16_224', 5_717_416),
        ('deit_small_patch16_224', 22_050_664),
        ('deit_base_patch16_224', 86_567_656),
    ],
)
def test_deit_param_counts_match_timm(name, expected):
    assert _count(create_model(name)) == expected


def test_short_names_and_unknown_names():
    assert _count(create_model('deit_tiny')) == 5_717_416
    with pytest.raises(ValueError, match='unknown model'):
        create_model('deit_huge')
    with pytest.raises(ValueError, match='unknown model overrides'):
        create_model('vit_test', depthh=3)


def _init(model, batch=2, seed=0):
    x = jax.random.normal(jax.random.key(seed), (batch, model.image_size, model.image_size, 3))
    return model.init(jax.random.key(1), x)['params'], x


def test_per_layer_heads_and_mlp_widths():
    model = create_model('vit_test', num_heads=(1, 3), mlp_dim=(5, 7), head_dim=8)
    params, x = _init(model)
    assert params['blocks_0']['attn']['qkv']['kernel'].shape == (32, 3 * 1 * 8)
    assert params['blocks_1']['attn']['proj']['kernel'].shape == (3 * 8, 32)
    assert params['blocks_0']['mlp']['fc1']['kernel'].shape == (32, 5)
    assert params['blocks_1']['mlp']['fc2']['kernel'].shape == (7, 32)
    assert model.apply({'params': params}, x).shape == (2, 10)


def test_exact_gelu_equals_jax_exact_gelu_with_gradient():
    x = jnp.linspace(-12.0, 12.0, 20001)
    np.testing.assert_allclose(exact_gelu(x), jax.nn.gelu(x, approximate=False), atol=2e-6)
    grad = lambda f: jax.vmap(jax.grad(f))(x)
    np.testing.assert_allclose(
        grad(exact_gelu), grad(lambda t: jax.nn.gelu(t, approximate=False)), atol=2e-6
    )
    # and it is not the tanh approximation, which differs by ~5e-4 here
    assert float(jnp.abs(exact_gelu(x) - jax.nn.gelu(x, approximate=True)).max()) > 1e-4
    # bfloat16: the written-out derivative is no further from float32 than autodiff's
    x16 = jnp.linspace(-6.0, 6.0, 2001).astype(jnp.bfloat16)
    ours16 = jax.vmap(jax.grad(exact_gelu))(x16).astype(jnp.float32)
    autodiff16 = jax.vmap(jax.grad(lambda t: _gelu(t)))(x16).astype(jnp.float32)
    reference = jax.vmap(jax.grad(lambda t: jax.nn.gelu(t, approximate=False)))(
        x16.astype(jnp.float32)
    )
    assert float(jnp.abs(ours16 - reference).max()) <= float(jnp.abs(autodiff16 - reference).max())


def _attention_pair(dtype):
    """Ours and jax.nn.dot_product_attention at compute dtype, both heads-major float32 in/out."""
    cast = lambda *qkv: [t.astype(dtype) for t in qkv]
    ours = lambda *qkv: attention(*cast(*qkv)).astype(jnp.float32)
    swap = lambda t: t.transpose(0, 2, 1, 3)  # jax's layout is (B, N, H, hd)
    theirs = lambda *qkv: swap(jax.nn.dot_product_attention(*map(swap, cast(*qkv)))).astype(
        jnp.float32
    )
    return ours, theirs


def _values_and_grads(f, qkv):
    value = f(*qkv)
    grads = jax.grad(lambda *qkv: jnp.sum(jnp.sin(f(*qkv))), argnums=(0, 1, 2))(*qkv)
    return [value, *grads]


def test_attention_equals_jax_dot_product_attention_with_gradients():
    qkv = [
        3 * jax.random.normal(key, (2, 3, 7, 8)) for key in jax.random.split(jax.random.key(0), 3)
    ]
    ours, theirs = _attention_pair(jnp.float32)
    for a, b in zip(_values_and_grads(ours, qkv), _values_and_grads(theirs, qkv)):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)
    # bfloat16 compute: no further from the float32 result than jax's own bfloat16 attention
    exact = _values_and_grads(ours, qkv)
    ours16, theirs16 = _attention_pair(jnp.bfloat16)
    for a, b, e in zip(_values_and_grads(ours16, qkv), _values_and_grads(theirs16, qkv), exact):
        assert float(jnp.abs(a - e).max()) <= 1.5 * float(jnp.abs(b - e).max()) + 1e-3


def _qkv_values_and_grads(heads_major, dtype, params, x):
    """q, k, v (B, H, N, hd) from the qkv params, and the gradients of a loss of all three with
    respect to the params and x: by `HeadsMajorQkv`, or by nn.Dense + reshape + transpose."""
    heads, width = 2, 8
    if heads_major:
        module = HeadsMajorQkv(heads, width, nn.initializers.zeros, dtype)
        qkv = lambda p, x: jnp.stack(module.apply({'params': p}, x))
    else:
        dense = nn.Dense(3 * heads * width, dtype=dtype)
        qkv = lambda p, x: (
            dense.apply({'params': p}, x)
            .reshape(x.shape[:2] + (3, heads, width))
            .transpose(2, 0, 3, 1, 4)
        )
    weights = jax.random.normal(jax.random.key(5), (3, 1, heads, 1, width))
    loss = lambda p, x: jnp.sum(jnp.sin(qkv(p, x).astype(jnp.float32) * weights))
    grads = jax.grad(loss, argnums=(0, 1))(params, x.astype(dtype))
    return [qkv(params, x.astype(dtype)), *jax.tree.leaves(grads)]


def test_heads_major_qkv_equals_dense_reshape_transpose_with_gradients():
    """The stored params are nn.Dense's (same names, shapes, (D, 3·H·hd) column order); only
    the computation views the kernel as (D, 3, H, hd)."""
    x = jax.random.normal(jax.random.key(0), (3, 7, 12))
    module = HeadsMajorQkv(2, 8, nn.initializers.normal(1.0), jnp.float32)
    params = module.init(jax.random.key(1), x)['params']
    dense_params = nn.Dense(48).init(jax.random.key(1), x)['params']
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, dense_params)
    params['bias'] = jax.random.normal(jax.random.key(2), (48,))
    exact = _qkv_values_and_grads(False, jnp.float32, params, x)
    for a, b in zip(_qkv_values_and_grads(True, jnp.float32, params, x), exact):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # bfloat16 compute: no further from the float32 result than Dense's own bfloat16 path
    ours16 = _qkv_values_and_grads(True, jnp.bfloat16, params, x)
    dense16 = _qkv_values_and_grads(False, jnp.bfloat16, params, x)
    for a, b, e in zip(ours16, dense16, exact):
        assert a.dtype == b.dtype
        error = lambda t: float(jnp.abs(t.astype(jnp.float32) - e).max())
        assert error(a) <= 1.5 * error(b) + 1e-6


def test_head_gate_equals_zeroing_the_heads_proj_rows():
    model = create_model('vit_test')  # 4 heads of 8
    params, x = _init(model)
    heads = jnp.array([[True, False, True, True], [False, True, True, False]])
    gated = model.apply({'params': params}, x, masks={'heads': heads})
    zeroed = jax.tree.map(lambda a: a, params)
    for i in range(2):
        rows = jnp.repeat(heads[i], 8)[:, None]
        kernel = zeroed[f'blocks_{i}']['attn']['proj']['kernel']
        zeroed[f'blocks_{i}']['attn']['proj']['kernel'] = jnp.where(rows, kernel, 0.0)
    np.testing.assert_allclose(gated, model.apply({'params': zeroed}, x), rtol=1e-5, atol=1e-6)
    assert not np.allclose(gated, model.apply({'params': params}, x), atol=1e-4)


def test_neuron_gate_equals_zeroing_fc2_rows():
    model = create_model('vit_test')
    params, x = _init(model)
    neurons = jax.random.bernoulli(jax.random.key(3), 0.5, (2, 64))
    gated = model.apply({'params': params}, x, masks={'neurons': neurons})
    zeroed = jax.tree.map(lambda a: a, params)
    for i in range(2):
        fc2 = zeroed[f'blocks_{i}']['mlp']['fc2']['kernel']
        zeroed[f'blocks_{i}']['mlp']['fc2']['kernel'] = jnp.where(neurons[i][:, None], fc2, 0.0)
    np.testing.assert_allclose(gated, model.apply({'params': zeroed}, x), rtol=1e-5, atol=1e-6)


def test_drop_path_is_random_in_training_only_and_grows_with_depth():
    model = create_model('vit_test', drop_path_rate=0.5, depth=3)
    params, x = _init(model, batch=16)
    apply = lambda seed: model.apply(
        {'params': params}, x, train=True, rngs={'dropout': jax.random.key(seed)}
    )
    assert not np.allclose(apply(0), apply(1))
    np.testing.assert_array_equal(apply(0), apply(0))
    eval_a = model.apply({'params': params}, x)
    np.testing.assert_array_equal(eval_a, model.apply({'params': params}, x))
    # timm spreads the rate linearly over depth: 0, 0.25, 0.5 — block 0 never drops.
    no_drop_first = create_model('vit_test', drop_path_rate=0.5, depth=1)
    p1, _ = _init(no_drop_first)
    out = no_drop_first.apply({'params': p1}, x, train=True, rngs={'dropout': jax.random.key(0)})
    np.testing.assert_allclose(out, no_drop_first.apply({'params': p1}, x), rtol=1e-6)


def test_timm_init_statistics():
    params, _ = _init(create_model('deit_tiny_patch16_224'), batch=1)
    qkv = np.asarray(params['blocks_0']['attn']['qkv']['kernel'])
    assert abs(qkv.std() - 0.02) < 0.001 and np.all(params['blocks_0']['attn']['qkv']['bias'] == 0)
    conv = np.asarray(params['patch_embed']['kernel'])
    bound = (16 * 16 * 3) ** -0.5  # PyTorch's kaiming_uniform(a=√5) = U(±1/sqrt(fan_in))
    assert conv.max() <= bound and conv.min() >= -bound and conv.std() > bound / 2
    assert np.all(params['norm']['scale'] == 1) and np.all(params['norm']['bias'] == 0)


def test_head_output_gradient_matches_finite_differences():
    """The perturbation gradient is ∂L/∂(head outputs), used for the S²ViTE head scores."""
    model = create_model('vit_test')
    params, x = _init(model)
    _, shapes = jax.eval_shape(
        lambda: model.apply({'params': params}, x, mutable=['intermediates'])
    )
    zeros = jax.tree.map(
        lambda t: jnp.zeros(t[0].shape),
        shapes['intermediates'],
        is_leaf=lambda t: isinstance(t, tuple),
    )

    def loss(perturbations):
        logits = model.apply({'params': params, 'perturbations': perturbations}, x)
        return jnp.sum(jnp.sin(logits))

    grads = jax.grad(loss)(zeros)
    eps = 1e-3
    for block, index in (('blocks_0', (0, 3, 1, 2)), ('blocks_1', (1, 0, 3, 7))):
        bump = lambda sign: jax.tree.map(lambda a: a, zeros)
        plus, minus = bump(1), bump(-1)
        plus[block]['attn'][HEAD_OUTPUTS] = zeros[block]['attn'][HEAD_OUTPUTS].at[index].set(eps)
        minus[block]['attn'][HEAD_OUTPUTS] = zeros[block]['attn'][HEAD_OUTPUTS].at[index].set(-eps)
        numeric = (loss(plus) - loss(minus)) / (2 * eps)
        analytic = grads[block]['attn'][HEAD_OUTPUTS][index]
        np.testing.assert_allclose(analytic, numeric, rtol=2e-2, atol=1e-4)


def _remat_values_and_grads(remat, dtype):
    """Logits, param gradients and head-output gradients of a masked, drop-path training
    forward (everything the train step differentiates)."""
    model = create_model('vit_test', drop_path_rate=0.3, remat=remat, dtype=dtype)
    images = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
    masks = {
        'heads': jnp.array([[1, 0, 1, 1], [1, 1, 0, 1]], bool),
        'neurons': jax.random.bernoulli(jax.random.key(2), 0.6, (2, 64)),
    }
    params = model.init(jax.random.key(0), images)['params']
    rngs = {'dropout': jax.random.key(3)}
    heads = jnp.zeros((4, 17, 4, 8), dtype)
    perturbations = {f'blocks_{i}': {'attn': {HEAD_OUTPUTS: heads}} for i in range(2)}

    def loss(params, perturbations):
        logits = model.apply(
            {'params': params, 'perturbations': perturbations},
            images,
            masks=masks,
            train=True,
            rngs=rngs,
        )
        return jnp.sum(jnp.sin(logits)), logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
        params, perturbations
    )
    return [logits, *jax.tree.leaves(grads)]


@pytest.mark.parametrize(
    'dtype, policies', [(jnp.float32, ('block', 'dots')), (jnp.bfloat16, ('dots',))]
)
def test_remat_changes_neither_values_nor_gradients(dtype, policies):
    plain = _remat_values_and_grads('none', dtype)
    # the forward is the same program: bit for bit; gradients only by the summation order
    # XLA picks for the recomputed graph (float32 ~1e-7 relative, bfloat16 ~1 unit in the last place)
    tolerance = 2e-6 if dtype == jnp.float32 else 2e-2
    for remat in policies:
        ours = _remat_values_and_grads(remat, dtype)
        np.testing.assert_array_equal(ours[0], plain[0])
        for a, b in zip(ours[1:], plain[1:]):
            a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, atol=tolerance * float(np.abs(b).max()) + 1e-30)
    with pytest.raises(ValueError, match='remat must be one of'):
        create_model('vit_test', remat='everything').init(
            jax.random.key(0), jnp.zeros((1, 16, 16, 3))
        )
