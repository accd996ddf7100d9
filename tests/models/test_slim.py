"""Slim S²ViTE export: the slim model computes the masked model's logits, in both fidelities.

The masked model is the full model with the zero invariant (params zeroed by the unit weight
masks) and the gates `forward_masks(masks, fidelity)`, i.e. exactly what training and evaluation
run. Biases (qkv included) are random and nonzero, so the reference-fidelity v-bias fold matters.
"""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sparse_vit_jax import config as config_lib
from sparse_vit_jax.export import SlimExportError, export_slim
from sparse_vit_jax.models import create_model, create_model_from_config
from sparse_vit_jax.models.slim import (
    block_names,
    kept_units,
    num_params,
    slim_model_config,
    slim_params,
)
from sparse_vit_jax.sparsity.state import apply_masks, apply_weight_masks, forward_masks
from sparse_vit_jax.sparsity.transform import unit_weight_masks
from sparse_vit_jax.train import evaluation, loop
from sparse_vit_jax.train import optimizer as optimizer_lib
from sparse_vit_jax.train.checkpoint import Checkpointer
from sparse_vit_jax.train.restore import restore_model
from sparse_vit_jax.train.state import TrainState, init_params

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPTH, HEADS, HEAD_DIM, DIM, MLP = 3, 4, 8, 32, 64  # vit_test at depth 3
MODEL = create_model('vit_test', depth=DEPTH)
PARAM_SHAPES = jax.eval_shape(lambda: init_params(MODEL, jax.random.key(0), (16, 16, 3)))
NO_UNIT_MASKS = 'this run has no head/neuron masks; slim export needs an S²ViTE run (method=s2vite)'


def _random_unit_masks(seed: int) -> dict:
    """Random head/neuron masks with at least one active unit per block; seed 0 also has a block
    keeping every head and one keeping a single neuron (the extremes)."""
    rng = np.random.default_rng(seed)
    heads, neurons = rng.random((DEPTH, HEADS)) < 0.5, rng.random((DEPTH, MLP)) < 0.5
    heads[np.arange(DEPTH), rng.integers(0, HEADS, DEPTH)] = True
    neurons[np.arange(DEPTH), rng.integers(0, MLP, DEPTH)] = True
    if seed == 0:
        heads[0], neurons[1] = True, np.arange(MLP) == 5
    return {'heads': jnp.asarray(heads), 'neurons': jnp.asarray(neurons)}


def _masked_setup(seed: int):
    """(model, params with the zero invariant, masks, images) for random unit masks.

    Every param, biases and norms included, is random (drawn on the host: compiling Flax's
    initializers costs seconds here), then zeroed by the unit weight masks as training does.
    """
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: rng.normal(0.0, 0.3, s.shape).astype(s.dtype), PARAM_SHAPES)
    images = rng.normal(size=(4, 16, 16, 3)).astype(np.float32)
    masks = _random_unit_masks(seed)
    weights = unit_weight_masks(params, masks['heads'], masks['neurons'], HEAD_DIM)
    params = apply_weight_masks(params, weights)
    return MODEL, params, {**masks, 'weights': weights}, images


def _apply(model, params, images, masks=None):
    """Logits, jitted: one compile per model is cheaper than dispatching every op."""
    return jax.jit(lambda p, x, m: model.apply({'params': p}, x, masks=m))(params, images, masks)


def _relative_error(actual, expected) -> float:
    return float(jnp.max(jnp.abs(actual - expected)) / jnp.max(jnp.abs(expected)))


def _slim_logits(params, masks, images, fidelity):
    slim, overrides = slim_params(params, masks, fidelity=fidelity, head_dim=HEAD_DIM)
    return _apply(create_model('vit_test', depth=DEPTH, **overrides), slim, images)


@pytest.mark.parametrize('seed', [0, 1])
@pytest.mark.parametrize('fidelity', ['reference', 'improved'])
def test_slim_logits_equal_masked_logits(fidelity, seed):
    model, params, masks, images = _masked_setup(seed)
    masked = _apply(model, params, images, forward_masks(masks, fidelity))
    slim = _slim_logits(params, masks, images, fidelity)
    assert _relative_error(slim, masked) < 1e-5


def test_reference_slim_needs_the_v_bias_fold():
    """Without folding the pruned heads' b_v·W_proj into proj.bias (improved-fidelity slicing
    is exactly that), the slim model misses the reference model's logits."""
    model, params, masks, images = _masked_setup(0)
    masked = _apply(model, params, images, forward_masks(masks, 'reference'))
    unfolded = _slim_logits(params, masks, images, 'improved')
    assert _relative_error(unfolded, masked) > 1e-2
    folded, _ = slim_params(params, masks, fidelity='reference', head_dim=HEAD_DIM)
    pruned = ~np.asarray(masks['heads'][1])  # block 1 prunes at least one head for seed 0
    assert pruned.any()
    attn = params['blocks_1']['attn']
    b_v = np.asarray(attn['qkv']['bias']).reshape(3, HEADS, HEAD_DIM)[2, pruned].ravel()
    rows = np.asarray(attn['proj']['kernel']).reshape(HEADS, HEAD_DIM, DIM)[pruned]
    expected = np.asarray(attn['proj']['bias']) + b_v @ rows.reshape(-1, DIM)
    np.testing.assert_allclose(folded['blocks_1']['attn']['proj']['bias'], expected, rtol=1e-6)


def test_slim_param_count_is_the_kept_units_params():
    model, params, masks, _ = _masked_setup(1)
    slim, overrides = slim_params(params, masks, fidelity='reference', head_dim=HEAD_DIM)
    heads, neurons = kept_units(masks)
    assert overrides == {'num_heads': heads, 'mlp_dim': neurons, 'head_dim': HEAD_DIM}
    # Hand count of vit_test: 16×16×3 images, 4×4 patches → 17 tokens, 10 classes.
    fixed = (4 * 4 * 3 * DIM + DIM) + DIM + 17 * DIM + 2 * DIM + (DIM * 10 + 10)
    per_block = 2 * DIM + DIM + 2 * DIM + DIM  # norm1, proj bias, norm2, fc2 bias
    per_head = 3 * HEAD_DIM * DIM + 3 * HEAD_DIM + HEAD_DIM * DIM  # qkv columns + bias, proj rows
    per_neuron = DIM + 1 + DIM  # fc1 column + bias entry, fc2 row
    kept = [per_block + h * per_head + n * per_neuron for h, n in zip(heads, neurons)]
    expected = fixed + sum(kept)
    assert num_params(slim) == expected
    slim_model = create_model('vit_test', depth=DEPTH, **overrides)
    shapes = jax.eval_shape(lambda: init_params(slim_model, jax.random.key(0), (16, 16, 3)))
    assert num_params(shapes) == expected
    assert jax.tree.map(np.shape, shapes) == jax.tree.map(np.shape, slim)
    removed = sum((HEADS - h) * per_head + (MLP - n) * per_neuron for h, n in zip(heads, neurons))
    assert num_params(params) - removed == expected


def test_reference_refuses_pruned_units_that_still_contribute():
    _, params, masks, _ = _masked_setup(0)
    head = int(np.flatnonzero(~np.asarray(masks['heads'][1]))[0])
    broken = jax.tree.map(lambda x: x, params)
    v_column = 2 * HEADS * HEAD_DIM + head * HEAD_DIM
    kernel = broken['blocks_1']['attn']['qkv']['kernel']
    broken['blocks_1']['attn']['qkv']['kernel'] = kernel.at[0, v_column].set(1.0)
    with pytest.raises(ValueError, match=rf'blocks_1: pruned heads \[{head}\] have nonzero k/v'):
        slim_params(broken, masks, fidelity='reference', head_dim=HEAD_DIM)
    slim_params(broken, masks, fidelity='improved', head_dim=HEAD_DIM)  # gated: irrelevant
    neuron = int(np.flatnonzero(~np.asarray(masks['neurons'][2]))[0])
    broken = jax.tree.map(lambda x: x, params)
    fc2 = broken['blocks_2']['mlp']['fc2']['kernel']
    broken['blocks_2']['mlp']['fc2']['kernel'] = fc2.at[neuron, 3].set(1.0)
    with pytest.raises(ValueError, match=rf'blocks_2: pruned neurons \[{neuron}\] have nonzero'):
        slim_params(broken, masks, fidelity='reference', head_dim=HEAD_DIM)


def test_invalid_masks_are_rejected():
    _, params, masks, _ = _masked_setup(1)
    empty = {**masks, 'heads': masks['heads'].at[2].set(False)}
    with pytest.raises(ValueError, match='blocks_2 keeps 0 heads'):
        slim_params(params, empty, fidelity='improved', head_dim=HEAD_DIM)
    with pytest.raises(ValueError, match=re.escape(NO_UNIT_MASKS)):
        slim_params(params, {**masks, 'heads': None}, fidelity='reference', head_dim=HEAD_DIM)
    with pytest.raises(ValueError, match='fidelity'):
        slim_params(params, masks, fidelity='exact', head_dim=HEAD_DIM)
    with pytest.raises(ValueError, match='do not fit 4 heads of head_dim 16'):
        slim_params(params, masks, fidelity='reference', head_dim=16)


def test_blocks_are_taken_in_depth_order():
    names = [f'blocks_{i}' for i in (10, 2, 0, 1, 11, 9)]
    assert block_names({name: None for name in names + ['head', 'norm']}) == [
        'blocks_0',
        'blocks_1',
        'blocks_2',
        'blocks_9',
        'blocks_10',
        'blocks_11',
    ]


def test_slim_model_config_survives_json():
    config = config_lib.model_config('vit_test', depth=DEPTH)
    overrides = {'num_heads': (1, 4, 2), 'mlp_dim': (3, 64, 9), 'head_dim': HEAD_DIM}
    slim = slim_model_config(config, overrides)
    assert slim['num_heads'] == (1, 4, 2) and slim['mlp_dim'] == (3, 64, 9)
    assert slim['head_dim'] == HEAD_DIM and slim['embed_dim'] == DIM
    model = create_model_from_config(json.loads(json.dumps(slim)))  # lists back to tuples
    assert model.heads_per_layer == (1, 4, 2) and model.resolved_head_dim == HEAD_DIM
    with pytest.raises(ValueError, match='num_heads must be 3 positive ints'):
        slim_model_config(config, {**overrides, 'num_heads': (1, 0, 2)})


def _tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def _restore_params(workdir):
    restored = restore_model(workdir)
    return restored.params, restored.masks


def test_export_tool_end_to_end(tiny_config, tmp_path):
    """A tiny S²ViTE run (reference fidelity, masks moving every 2 steps), exported by the tool:
    the slim checkpoint restores, validates, and evaluates to the run's top-1 and loss."""
    config = tiny_config(
        arg='method=s2vite,head_density=0.5,neuron_density=0.5',
        **{'num_epochs': 6 / 9, 'sparsity.update_every': 2, 'sparsity.update_every_batch': 4},
    )
    run, out = str(tmp_path / 'run'), str(tmp_path / 'slim')
    loop.train_and_evaluate(config, run)
    export = _tool('tools/export.py', '--format=slim', '--workdir', run, '--out', out, '--json')
    assert export.returncode == 0, export.stderr[-3000:]
    report = json.loads(export.stdout.strip().splitlines()[-1])
    assert report['step'] == 6 and report['fidelity'] == 'reference'
    assert report['kept_heads'] == [2, 2] and report['kept_neurons'] == [32, 32]

    masked, slim = evaluation.evaluate_checkpoint(run), evaluation.evaluate_checkpoint(out)
    assert slim['method'] == 'dense' and slim['num_examples'] == masked['num_examples'] == 23
    assert slim['top1'] == masked['top1'] and slim['top5'] == masked['top5']
    assert slim['loss'] == pytest.approx(masked['loss'], rel=1e-5)
    assert slim['num_params'] == report['num_params'] < masked['num_params']

    meta = Checkpointer(out, create=False).meta()
    assert meta['has_masks'] is False and meta['slim_export']['workdir'] == os.path.abspath(run)
    slim_config = ml_collections.ConfigDict(meta['config'])
    config_lib.validate(slim_config)
    assert list(slim_config.model.num_heads) == [2, 2] and slim_config.model.head_dim == 8
    # Logits on random images too: this short run's top-1 and loss would barely notice a missing
    # fold (its pruned heads' v-biases are ~1e-4), the logits do.
    (source, masks), (exported, _) = _restore_params(run), _restore_params(out)
    images = np.random.default_rng(0).normal(size=(8, 16, 16, 3)).astype(np.float32)
    gates = forward_masks(masks, 'reference')
    masked_logits = _apply(create_model_from_config(config.model), source, images, gates)
    slim_model = create_model_from_config(meta['config']['model'])
    assert _relative_error(_apply(slim_model, exported, images), masked_logits) < 1e-5
    unfolded, _ = slim_params(source, masks, fidelity='improved', head_dim=8)
    assert _relative_error(_apply(slim_model, unfolded, images), masked_logits) > 1e-4
    for block in ('blocks_0', 'blocks_1'):  # the pruned heads' v-biases trained away from 0
        before = source[block]['attn']['proj']['bias']
        after = exported[block]['attn']['proj']['bias']
        assert not np.allclose(before, after, rtol=0, atol=1e-7)

    assert export_slim(run, str(tmp_path / 'slim3'), step=3)['step'] == 3
    with pytest.raises(SlimExportError, match='already holds checkpoints'):
        export_slim(run, out)


def test_export_refuses_runs_without_unit_masks(tiny_config, tmp_path):
    """An SViTE run's checkpoint (its real optimizer state, saved by Checkpointer.save as
    training does, at step 0 to skip compiling a train step) and a dense model-only checkpoint
    are refused with the clear message; the tool exits non-zero and writes nothing."""
    config = tiny_config(arg='method=svite')
    model = create_model_from_config(config.model)
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0), (16, 16, 3)))
    params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)
    tx, _, _ = optimizer_lib.make_optimizer(config, model, shapes, total_steps=9, steps_per_epoch=9)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        nonfinite_step=jnp.full((), -1, jnp.int32),
    )
    assert state.masks['weights'] is not None and state.masks['heads'] is None
    svite = str(tmp_path / 'svite')
    checkpointer = Checkpointer(svite)
    checkpointer.save(state, {'config': config.to_dict()})
    checkpointer.wait()
    out = str(tmp_path / 'out')
    result = _tool('tools/export.py', '--format=slim', '--workdir', svite, '--out', out)
    assert result.returncode != 0
    assert NO_UNIT_MASKS in result.stderr and 'method=svite' in result.stderr
    assert not os.path.exists(tmp_path / 'out')

    dense = str(tmp_path / 'dense')  # a model-only checkpoint, as tools/convert_timm.py writes
    Checkpointer(dense).save_model(0, params, None, {'config': tiny_config().to_dict()})
    with pytest.raises(SlimExportError, match=re.escape(NO_UNIT_MASKS)):
        export_slim(dense, str(tmp_path / 'out'))


def _untrained_run(tiny_config, workdir, arg, **overrides) -> str:
    """A run's checkpoint at step 0 without compiling a train step: its real optimizer state
    (the method's initial masks), random params and biases, with the zeros the fidelity keeps."""
    config = tiny_config(arg=arg, **overrides)
    model = create_model_from_config(config.model, config.tokens)
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0), (16, 16, 3)))
    params = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(s.dtype), shapes)
    tx, _, _ = optimizer_lib.make_optimizer(config, model, shapes, total_steps=9, steps_per_epoch=9)
    opt_state = tx.init(params)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=apply_masks(params, opt_state, config.sparsity.fidelity),
        opt_state=opt_state,
        nonfinite_step=jnp.full((), -1, jnp.int32),
    )
    checkpointer = Checkpointer(workdir)
    checkpointer.save(state, {'config': config.to_dict()})
    checkpointer.wait()
    return workdir


STRUCTURED_RUNS = {
    's2vite': ('method=s2vite', {}),
    's2static': ('method=s2static', {}),
    's2viteplus': ('method=s2viteplus,keep_tokens=13', {}),
    # Layer-wise selectors, zeroed tokens and Gumbel evaluation: the official `*_data` models.
    's2viteplus_layerwise': (
        'method=s2viteplus,keep_tokens=13',
        {'tokens.layerwise': True, 'tokens.mode': 'zero', 'tokens.eval_mode': 'gumbel'},
    ),
}


@pytest.mark.parametrize('fidelity', ['reference', 'improved'])
@pytest.mark.parametrize('run', sorted(STRUCTURED_RUNS))
def test_every_structured_method_exports_and_the_export_restores_to_the_same_logits(
    tiny_config, tmp_path, run, fidelity
):
    """Export → restore the exported checkpoint the way evaluation does → the logits of the
    masked run (token selectors and their Gumbel noise included)."""
    arg, overrides = STRUCTURED_RUNS[run]
    workdir = _untrained_run(
        tiny_config, str(tmp_path / 'run'), f'{arg},fidelity={fidelity}', **overrides
    )
    report = export_slim(workdir, str(tmp_path / 'slim'))
    masked = restore_model(workdir)
    slim = restore_model(str(tmp_path / 'slim'))
    assert slim.masks is None and slim.model.keep_tokens == masked.model.keep_tokens
    assert slim.model.layerwise_tokens == masked.model.layerwise_tokens
    images = np.random.default_rng(1).normal(size=(4, 16, 16, 3)).astype(np.float32)

    def logits(restored):
        return jax.jit(
            lambda p, x, m: restored.model.apply(
                {'params': p}, x, masks=m, rngs={'gumbel': jax.random.key(3)}
            )
        )(restored.params, images, restored.forward_masks)

    assert _relative_error(logits(slim), logits(masked)) < 1e-5
    assert report['num_params'] < report['source_num_params']


@pytest.mark.parametrize('arg', ['method=static', 'method=sviteplus', 'method=dense'])
def test_unstructured_and_dense_runs_are_refused_in_one_line(tiny_config, tmp_path, arg):
    workdir = _untrained_run(tiny_config, str(tmp_path / 'run'), arg)
    method = arg.split('=')[1]
    message = f'{NO_UNIT_MASKS}, but {workdir} is method={method}'
    with pytest.raises(SlimExportError, match=re.escape(message)):
        export_slim(workdir, str(tmp_path / 'out'))
    assert not os.path.exists(tmp_path / 'out')
