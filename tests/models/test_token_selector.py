"""SViTE+ token selector: exact keep counts, cls always kept, drop vs zero, the straight-through
gradient against a hand derivation, eval determinism, tau, the layer-wise variant, and short
sviteplus / s2viteplus runs through the training loop."""

import importlib.util
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_vit_jax import config as config_lib
from sparse_vit_jax import token_quality
from sparse_vit_jax.models import create_model, create_model_from_config
from sparse_vit_jax.models import token_selector as ts
from sparse_vit_jax.sparsity import masks as masks_lib
from sparse_vit_jax.train import evaluation, loop, steps

TOKENS = 17  # vit_test: 16 patches of 4x4 and the class token
_REPO = pathlib.Path(__file__).resolve().parents[2]
_VISUALIZE = _REPO / 'tools' / 'visualize.py'


def _tokens_where_cls_scores_lowest(batch=3, tokens=TOKENS, dim=8, seed=0):
    """Tokens whose scores (with the selector's kernel set to e_0) put cls last by far, so the
    official top-k would not pick it."""
    x = jax.random.normal(jax.random.key(seed), (batch, tokens, dim))
    return x.at[:, 0, 0].set(-100.0)


def _selector_params(dim=8):
    kernel = jnp.zeros((dim, 1)).at[0, 0].set(1.0)
    return {'params': {'scorer': {'kernel': kernel, 'bias': jnp.zeros((1,))}}}


def _kept(selector, params, x, **kwargs):
    out, state = selector.apply(params, x, mutable=[ts.SELECTION], **kwargs)
    return out, np.asarray(state[ts.SELECTION][ts.KEPT][0])


@pytest.mark.parametrize('mode', ['drop', 'zero'])
@pytest.mark.parametrize('train, eval_mode', [(True, 'topk'), (False, 'topk'), (False, 'gumbel')])
@pytest.mark.parametrize('keep', [1, 5, TOKENS])
def test_cls_always_kept_and_exactly_k_tokens_survive(mode, train, eval_mode, keep):
    x = _tokens_where_cls_scores_lowest()
    selector = ts.TokenSelector(keep, mode, eval_mode)
    out, kept = _kept(
        selector, _selector_params(), x, train=train, tau=0.5, rngs={'gumbel': jax.random.key(3)}
    )
    assert kept.shape == (3, keep) and np.all(kept[:, 0] == 0)
    for row in kept:  # distinct, cls first, then patches in ascending order
        assert len(set(row.tolist())) == keep and np.all(np.diff(row) > 0)
    if mode == 'drop':
        assert out.shape == (3, keep, 8)
        np.testing.assert_allclose(out, jnp.take_along_axis(x, kept[..., None], 1), rtol=1e-6)
    else:
        assert out.shape == x.shape
        alive = np.asarray(jnp.any(out != 0, axis=-1))
        assert np.all(alive.sum(1) == keep) and np.all(alive[:, 0])
        np.testing.assert_array_equal(np.nonzero(alive)[1].reshape(3, keep), kept)


def test_model_keeps_exactly_k_patches_plus_cls():
    model = create_model('vit_test', keep_tokens=6)
    images = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
    params = model.init(jax.random.key(1), images)['params']
    kept = ts.kept_patches(model, params, images)
    assert kept.shape == (4, 16) and np.all(np.asarray(kept).sum(1) == 5)
    _, state = jax.eval_shape(
        lambda: model.apply(
            {'params': params},
            images,
            train=True,
            rngs={'gumbel': jax.random.key(2)},
            mutable=[ts.SELECTION],
        )
    )
    assert state[ts.SELECTION]['token_selector'][ts.KEPT][0].shape == (4, 6)


def _model_and_params(**overrides):
    model = create_model('vit_test', **overrides)
    images = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
    return model, model.init(jax.random.key(1), images)['params'], images


def test_drop_equals_zero_when_every_token_is_kept():
    """k = N: the gather is the identity (cls, then patches in order), so both modes run the same
    sequence through the same blocks: equal in training (same noise) and in evaluation."""
    drop, params, images = _model_and_params(keep_tokens=TOKENS, token_mode='drop')
    zero = drop.clone(token_mode='zero')
    rngs = {'gumbel': jax.random.key(5)}
    for kwargs in (dict(train=True, tau=0.3, rngs=rngs), dict(train=False)):
        np.testing.assert_array_equal(
            drop.apply({'params': params}, images, **kwargs),
            zero.apply({'params': params}, images, **kwargs),
        )


def test_drop_and_zero_select_the_same_tokens_but_differ_when_some_are_dropped():
    """k < N: the selection (before any block) is identical, but zeroed tokens still act as keys
    and values after LayerNorm (they become its bias), so the logits must differ."""
    drop, params, images = _model_and_params(keep_tokens=9, token_mode='drop')
    zero = drop.clone(token_mode='zero')
    rngs = {'gumbel': jax.random.key(5)}
    outputs, selections = [], []
    for model in (drop, zero):
        logits, state = model.apply(
            {'params': params}, images, train=True, rngs=rngs, mutable=[ts.SELECTION]
        )
        outputs.append(logits)
        selections.append(state[ts.SELECTION]['token_selector'][ts.KEPT][0])
    np.testing.assert_array_equal(*selections)
    assert not np.allclose(outputs[0], outputs[1], atol=1e-3)


def test_mask_mode_computes_what_drop_computes_and_trains_the_selector_far_more():
    """'mask' keeps every token but leaves the unselected ones out of attention: in training (same
    noise) and evaluation its logits are drop mode's; its scorer gradient carries what attending
    to the dropped tokens would do, orders of magnitude more than drop mode's (pre-LN blocks
    barely feel the straight-through scale of a kept token)."""
    drop, params, images = _model_and_params(keep_tokens=9, token_mode='drop')
    mask = drop.clone(token_mode='mask')
    labels = jnp.arange(4) % 10

    def loss(model, p):
        logits = model.apply(
            {'params': p}, images, train=True, tau=1.0, rngs={'gumbel': jax.random.key(5)}
        )
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels]), logits

    outputs, norms = [], []
    for model in (drop, mask):
        (_, logits), grads = jax.jit(jax.value_and_grad(lambda p: loss(model, p), has_aux=True))(
            params
        )
        outputs.append(logits)
        norms.append(float(jnp.linalg.norm(grads['token_selector']['scorer']['kernel'])))
        evaluated = jax.jit(model.apply)({'params': params}, images)
        outputs.append(evaluated)
    np.testing.assert_allclose(outputs[2], outputs[0], rtol=2e-5, atol=2e-6)  # training
    np.testing.assert_allclose(outputs[3], outputs[1], rtol=2e-5, atol=2e-6)  # evaluation
    assert norms[1] > 100 * norms[0] > 0
    with pytest.raises(ValueError, match="'mask' does not combine with layerwise_tokens"):
        mask.clone(layerwise_tokens=True).init(jax.random.key(0), images)


# ---------------------------------------------------------------------------- the gradient

_X = np.array([[[0.5, -1.0], [2.0, 0.3], [-0.4, 1.2], [1.1, -0.7]]], np.float32)  # cls + 3
_C = np.array([0.7, -1.3], np.float32)
_NOISE = np.array([[0.2, -0.5, 0.9, 0.1]], np.float32)
_W, _B = np.array([0.8, -0.6], np.float32), 0.25


def _hand_gradient(tau: float, all_patches: bool) -> tuple[np.ndarray, float]:
    """d/d(kernel, bias) of f = Σ_i m_i (x_i · c), by hand.

    s_j = x_j·w + b; p = softmax((log_softmax(s) + g) / tau) = softmax((s + g) / tau). The
    straight-through mask is m_i = hard_i − sg(p_i) + p_i on patches (m_0 = 1, constant), so
    ∂m_i/∂s_j = ∂p_i/∂s_j = p_i (δ_ij − p_j) / tau. With a_i = x_i·c and S the patches whose m_i
    reach f: ∂f/∂s_j = p_j (a_j [j ∈ S] − Σ_{i∈S} a_i p_i) / tau, ∂f/∂w = Σ_j ∂f/∂s_j x_j and
    ∂f/∂b = Σ_j ∂f/∂s_j. 'zero' mode: S = every patch (a dropped token is the zero vector
    m_i·x_i, value 0 but gradient a_i ∂p_i). 'drop' mode: S = the kept patches only (dropped
    tokens are not in the sequence at all).
    """
    x = _X[0]
    s = x @ _W + _B
    z = (s + _NOISE[0]) / tau
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    a = x @ _C
    kept = 1 + np.argsort(-(s + _NOISE[0])[1:])[:2]  # keep 3 = cls + top 2 patches
    in_s = np.zeros(4, bool)
    in_s[1:] = True if all_patches else False
    in_s[kept] = True
    ds = p * (a * in_s - np.sum(a * p * in_s)) / tau
    return ds @ x, ds.sum()


@pytest.mark.parametrize('mode', ['zero', 'drop'])
@pytest.mark.parametrize('tau', [0.5, 3.0])
def test_straight_through_gradient_reaches_the_scorer_as_derived_by_hand(mode, tau):
    selector = ts.TokenSelector(3, mode)

    def f(params):
        out = selector.apply({'params': params}, _X, train=True, tau=tau, noise=_NOISE)
        return jnp.sum(out @ _C)

    params = {'scorer': {'kernel': jnp.asarray(_W)[:, None], 'bias': jnp.full((1,), _B)}}
    grads = jax.grad(f)(params)['scorer']
    dw, db = _hand_gradient(tau, all_patches=mode == 'zero')
    assert np.all(np.abs(dw) > 1e-3)
    np.testing.assert_allclose(grads['kernel'][:, 0], dw, rtol=1e-5, atol=1e-6)
    # Σ_j ∂p_i/∂s_j = 0: a shift of every score leaves the softmax unchanged, so d/d(bias) = 0.
    assert db == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(grads['bias'][0], db, atol=1e-6)


def test_gradient_reaches_the_scorer_through_the_whole_model():
    model, params, images = _model_and_params(keep_tokens=9)

    def loss(p):
        logits = model.apply(
            {'params': p}, images, train=True, tau=1.0, rngs={'gumbel': jax.random.key(0)}
        )
        return jnp.sum(jnp.sin(logits))

    grads = jax.jit(jax.grad(loss))(params)['token_selector']['scorer']
    assert float(jnp.abs(grads['kernel']).sum()) > 0 and float(jnp.abs(grads['bias']).sum()) > 0


def test_tau_changes_the_gradient_but_not_the_selection():
    selector = ts.TokenSelector(3, 'drop')
    params = {'scorer': {'kernel': jnp.asarray(_W)[:, None], 'bias': jnp.full((1,), _B)}}
    results = []
    for tau in (0.1, 1.0, 10.0):
        apply = lambda p: selector.apply(
            {'params': p}, _X, train=True, tau=tau, noise=_NOISE, mutable=[ts.SELECTION]
        )
        (out, state) = apply(params)
        grad = jax.grad(lambda p: jnp.sum(apply(p)[0] @ _C))(params)['scorer']['kernel']
        results.append((out, state[ts.SELECTION][ts.KEPT][0], grad))
    for out, kept, grad in results[1:]:
        np.testing.assert_allclose(out, results[0][0], rtol=1e-6)
        np.testing.assert_array_equal(kept, results[0][1])
        assert not np.allclose(grad, results[0][2], rtol=1e-2)


# ---------------------------------------------------------------------------- evaluation


def _scores(model, params, images):
    """The input-level scorer's outputs (B, N): patch embedding + cls + position embedding, by
    hand, then the scorer's Dense(1)."""
    p, dim = model.patch_size, model.embed_dim
    patches = jax.lax.conv_general_dilated(
        images,
        params['patch_embed']['kernel'],
        (p, p),
        'VALID',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    )
    x = (patches + params['patch_embed']['bias']).reshape(images.shape[0], -1, dim)
    cls = jnp.broadcast_to(params['cls_token'], (images.shape[0], 1, dim))
    x = jnp.concatenate([cls, x], 1) + params['pos_embed']
    scorer = params['token_selector']['scorer']
    return np.asarray(x @ scorer['kernel'] + scorer['bias'])[..., 0]


def test_topk_evaluation_is_deterministic_and_is_the_top_k_of_the_scores():
    model, params, images = _model_and_params(keep_tokens=9, token_eval='topk')
    apply = lambda seed: model.apply(
        {'params': params}, images, rngs={'gumbel': jax.random.key(seed)}
    )
    np.testing.assert_array_equal(apply(0), apply(1))
    np.testing.assert_array_equal(apply(0), model.apply({'params': params}, images))
    top = np.sort(np.argsort(-_scores(model, params, images)[:, 1:], axis=1)[:, :8], axis=1)
    kept = np.asarray(ts.kept_patches(model, params, images))
    np.testing.assert_array_equal(np.nonzero(kept)[1].reshape(4, 8), top)


def test_gumbel_evaluation_is_stochastic_and_repeatable_per_key():
    model, params, images = _model_and_params(keep_tokens=9, token_eval='gumbel')
    kept = [
        np.asarray(ts.kept_patches(model, params, images, rng=jax.random.key(seed)))
        for seed in range(4)
    ]
    assert any(not np.array_equal(kept[0], other) for other in kept[1:])
    np.testing.assert_array_equal(
        kept[2], ts.kept_patches(model, params, images, rng=jax.random.key(2))
    )
    for k in kept:
        assert np.all(k.sum(1) == 8)


# ---------------------------------------------------------------------------- variants


def test_layerwise_selectors_sit_in_every_attention_and_are_never_pruned():
    model, params, images = _model_and_params(
        keep_tokens=9, token_mode='zero', layerwise_tokens=True
    )
    for i in range(2):
        assert params[f'blocks_{i}']['attn']['token_selector']['scorer']['kernel'].shape == (32, 1)
    names = masks_lib.prunable_shapes(params)
    assert names and not any('token_selector' in name for name in names)
    _, state = model.apply(
        {'params': params},
        images,
        train=True,
        rngs={'gumbel': jax.random.key(0)},
        mutable=[ts.SELECTION],
    )
    selected = state[ts.SELECTION]
    # zero mode: the sequence keeps its 17 tokens, so each block keeps 9 of them, as the
    # reference's *_data models; each block draws its own noise.
    for i in range(2):
        assert selected[f'blocks_{i}']['attn']['token_selector'][ts.KEPT][0].shape == (4, 9)
    # drop mode: blocks see 9 tokens and keep the same fraction of them, round(9 · 9 / 17) = 5.
    drop = model.clone(token_mode='drop')
    _, state = drop.apply(
        {'params': params},
        images,
        train=True,
        rngs={'gumbel': jax.random.key(0)},
        mutable=[ts.SELECTION],
    )
    assert state[ts.SELECTION]['blocks_1']['attn']['token_selector'][ts.KEPT][0].shape == (4, 5)
    with pytest.raises(ValueError, match='layerwise_tokens needs keep_tokens'):
        _model_and_params(layerwise_tokens=True)


def test_layerwise_selector_masks_only_the_qkv_input():
    """A block's selector changes attention but not the residual stream: with keep = N it is a
    no-op, and its gradient reaches the per-block scorer."""
    model, params, images = _model_and_params(
        keep_tokens=TOKENS, token_mode='zero', layerwise_tokens=True
    )
    plain = create_model('vit_test', keep_tokens=TOKENS, token_mode='zero')
    plain_params = {k: v for k, v in params.items()}
    for i in range(2):
        plain_params[f'blocks_{i}'] = dict(params[f'blocks_{i}'])
        plain_params[f'blocks_{i}']['attn'] = {
            k: v for k, v in params[f'blocks_{i}']['attn'].items() if k != 'token_selector'
        }
    np.testing.assert_allclose(
        model.apply({'params': params}, images),
        plain.apply({'params': plain_params}, images),
        rtol=1e-5,
        atol=1e-6,
    )


def test_bad_keep_counts_are_rejected():
    with pytest.raises(ValueError, match='keep must be between 1 and the 17 tokens'):
        _model_and_params(keep_tokens=18)


# ---------------------------------------------------------------------------- training


def _load_tool(path):
    """A tool as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_fashion_config_builds_the_selector_and_the_tau_schedule():
    config = config_lib.load('configs/fashion_mnist.py:method=s2viteplus,keep_tokens=15')
    config_lib.validate(config)
    model = create_model_from_config(config.model, config.tokens)
    assert (model.keep_tokens, model.token_mode, model.token_eval) == (15, 'zero', 'gumbel')
    tau = steps.token_temperature(config, total_steps=100)
    assert float(tau(0)) == pytest.approx(10.0) and float(tau(100)) == pytest.approx(0.1)
    dense = config_lib.load('configs/fashion_mnist.py:method=svite,keep_tokens=15')
    assert dense.tokens.keep == 0 and steps.token_temperature(dense, 100) is None
    assert create_model_from_config(dense.model, dense.tokens).keep_tokens is None


@pytest.mark.parametrize(
    'fidelity, selection', [('reference', ('zero', 'gumbel')), ('improved', ('drop', 'topk'))]
)
def test_a_fidelity_selects_tokens_alike_in_every_config(fidelity, selection):
    """The official code zeroes tokens and evaluates with Gumbel noise: `fidelity=reference`
    means that whichever config file builds the run (the Fashion-MNIST one once meant drop)."""
    for spec in ('configs/fashion_mnist.py:', 'configs/sviteplus.py:model=deit_tiny,'):
        for method in ('sviteplus', 's2viteplus'):
            c = config_lib.load(f'{spec}method={method},fidelity={fidelity}')
            assert (c.tokens.mode, c.tokens.eval_mode) == selection
            assert c.tokens.keep > 0 and c.sparsity.fidelity == fidelity


@pytest.mark.parametrize('method', ['sviteplus', 's2viteplus'])
def test_token_runs_train_and_their_checkpoints_evaluate(tiny_config, tmp_path, method):
    config = tiny_config(
        arg=f'method={method},keep_tokens=9,head_density=0.5,neuron_density=0.5',
        **{
            'num_epochs': 4 / 9,
            'checkpoint_every_steps': 100,  # only the final checkpoint: keeps the test short
            'sparsity.update_every': 2,
            'sparsity.update_every_batch': 4,
            'tokens.mode': 'drop',  # the improved selection on the reference sparsity
            'tokens.eval_mode': 'topk',
        },
    )
    workdir = str(tmp_path / method)
    final = loop.train_and_evaluate(config, workdir)
    assert final['step'] == 4 and np.isfinite(final['loss'])
    report = evaluation.evaluate_checkpoint(workdir)
    assert report['top1'] == final['top1'] and report['loss'] == pytest.approx(final['loss'])
    if method == 'sviteplus':
        assert report['density'] == pytest.approx(0.5, abs=0.05)
        out = tmp_path / 'tokens'
        written = _load_tool(_VISUALIZE).render_tokens(workdir, str(out), num_images=3)
        assert len(written) == 1 and os.path.getsize(written[0]) > 0
        # Selection quality: the learned selection is the checkpoint's own; the reversed scorer
        # keeps exactly the 8 patches the learned one leaves out; the flat one keeps random ones.
        quality = token_quality.selection_quality(workdir)
        assert quality['learned'] == report['top1'] and quality['mode'] == 'drop'
        assert {'random', 'lowest'} <= set(quality) and 'dropped' not in quality
        restored = evaluation.restore_model(workdir)
        images = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
        kept = lambda params, key: np.asarray(
            ts.kept_patches(restored.model, params, images, rng=jax.random.key(key))
        )
        lowest = token_quality._with_scorer(restored.params, -1.0)
        np.testing.assert_array_equal(kept(lowest, 0), ~kept(restored.params, 0))
        gumbel = restored.model.clone(token_eval='gumbel')
        flat = token_quality._with_scorer(restored.params, 0.0)
        draws = [ts.kept_patches(gumbel, flat, images, rng=jax.random.key(k)) for k in range(2)]
        assert not np.array_equal(*draws)
    else:  # half of the 4 heads per block, preserved through the topology updates
        assert report['active_heads'] == [2, 2]


def test_plotted_patches_follow_the_models_raster_order():
    """Patch index r · side + c (the patch embedding's reshape) covers rows r·p.., columns c·p..."""
    from sparse_vit_jax import plots

    kept = np.zeros(16, bool)
    kept[6] = True  # row 1, column 2 of a 4 x 4 grid of 4-pixel patches
    pixels = plots.patch_grid(kept, 16, 4)
    assert pixels[4:8, 8:12].all() and pixels.sum() == 16
    # Dropped patches are outlined, on black as on white (dimming hid them on black); the kept
    # patch and the inside of every dropped one keep their pixels.
    for value in (0.0, 1.0):
        image = np.full((16, 16, 1), value)  # grayscale, as Fashion-MNIST
        shown = plots.outline_dropped_patches(image, kept, 4)
        assert shown.shape == (16, 16, 3)
        assert (shown[4:8, 8:12] == value).all()  # the kept patch
        np.testing.assert_allclose(shown[0, 0], plots.DROPPED_COLOUR)  # a dropped border
        np.testing.assert_allclose(shown[12, 13], plots.DROPPED_COLOUR)
        assert (shown[1:3, 1:3] == value).all()  # inside a dropped patch
