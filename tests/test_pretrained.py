"""Starting from trained weights (config.init_from): sources, adaptation to the run's model,
magnitude masks, and resume ignoring init_from."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from sparse_vit_jax import convert, pretrained, weights
from sparse_vit_jax.benchmark.timm_torch import stub_torchvision
from sparse_vit_jax.models import create_model
from sparse_vit_jax.sparsity import masks as masks_lib
from sparse_vit_jax.train import loop
from sparse_vit_jax.train.checkpoint import Checkpointer
from sparse_vit_jax.train.restore import restore_model
from timm_reference import random_state_dict, timm_layout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# vit_test's sizes (32 wide, 2 blocks, 4x4 patches) but 5 classes on 24x24 images: a 6x6 grid.
OTHER_TASK = dict(dim=32, depth=2, hidden=64, classes=5, patch=4, image=24)


def _source(**sizes) -> pretrained.Source:
    state = random_state_dict(timm_layout(**{**OTHER_TASK, **sizes}))
    return pretrained.Source(convert.from_timm(state), 'test weights')


def _target(channels: int = 3, **overrides) -> dict:
    """Params of vit_test (10 classes, 16x16 images: a 4x4 grid) with random values."""
    shapes = convert.param_shapes(create_model('vit_test', **overrides), channels)
    rng = np.random.default_rng(1)
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)


def test_parse_source_keeps_schemes_and_reads_steps():
    assert pretrained.parse_source('runs/x') == ('runs/x', None)
    assert pretrained.parse_source('runs/x:300') == ('runs/x', 300)
    assert pretrained.parse_source('gs://bucket/runs/x') == ('gs://bucket/runs/x', None)
    assert pretrained.parse_source('gs://bucket/runs/x:12') == ('gs://bucket/runs/x', 12)
    assert pretrained.parse_source('deit_s.safetensors') == ('deit_s.safetensors', None)


def test_adapt_resets_the_head_resamples_pos_embed_and_keeps_the_rest():
    source, target = _source(), _target()
    params, report = pretrained.adapt(source, target)
    assert jax.tree.structure(params) == jax.tree.structure(target)
    np.testing.assert_array_equal(params['head']['kernel'], target['head']['kernel'])
    np.testing.assert_array_equal(params['head']['bias'], target['head']['bias'])
    pos = params['pos_embed']
    assert pos.shape == (1, 17, 32)
    np.testing.assert_array_equal(pos[:, 0], source.params['pos_embed'][:, 0])  # cls kept
    np.testing.assert_array_equal(pos, pretrained.resample_pos_embed(source.params['pos_embed'], 4))
    qkv = params['blocks_1']['attn']['qkv']['kernel']
    np.testing.assert_array_equal(qkv, source.params['blocks_1']['attn']['qkv']['kernel'])
    assert len(report.kept) == 29 and len(report.reset) == 2 and len(report.resampled) == 1
    assert 'head/kernel (5 -> 10 classes, re-initialized)' in report.reset
    assert 'pos_embed (6x6 -> 4x4 patches, bicubic)' in report.lines()[-1]


def test_resampling_keeps_smooth_fields_and_the_same_grid_unchanged():
    grid = np.linspace(-1, 1, 6, dtype=np.float32)
    ramp = (grid[:, None] + 2 * grid[None, :]).reshape(1, 36, 1)
    pos = np.concatenate([np.full((1, 1, 1), 7.0, np.float32), ramp], axis=1)
    np.testing.assert_array_equal(pretrained.resample_pos_embed(pos, 6), pos)
    constant = np.full((1, 37, 3), 0.25, np.float32)
    np.testing.assert_allclose(pretrained.resample_pos_embed(constant, 9), 0.25, atol=1e-6)


def test_resampling_equals_timms():
    torch = pytest.importorskip('torch')
    stub_torchvision()
    layers = pytest.importorskip('timm.layers')
    pos = np.random.default_rng(0).normal(size=(1, 1 + 14 * 14, 8)).astype(np.float32)
    for grid in (4, 24):
        expected = layers.resample_abs_pos_embed(torch.from_numpy(pos), (grid, grid)).numpy()
        np.testing.assert_allclose(pretrained.resample_pos_embed(pos, grid), expected, atol=1e-5)


def test_rgb_patch_embedding_adapts_to_grayscale_and_more_channels():
    """timm's adapt_input_conv: for 1 channel or a multiple of 3, a gray image gives the same
    response through either kernel; otherwise the RGB kernel is tiled and scaled by 3/C."""
    kernel = np.random.default_rng(0).normal(size=(4, 4, 3, 8)).astype(np.float32)
    gray = np.random.default_rng(1).normal(size=(4, 4)).astype(np.float32)
    rgb_response = np.einsum('hwc,hwcd->d', np.repeat(gray[..., None], 3, -1), kernel)
    two = pretrained.adapt_input_channels(kernel, 2)
    np.testing.assert_array_equal(two, kernel[:, :, :2] * np.float32(1.5))
    for channels in (1, 6):
        adapted = pretrained.adapt_input_channels(kernel, channels)
        assert adapted.shape == (4, 4, channels, 8)
        response = np.einsum('hwc,hwcd->d', np.repeat(gray[..., None], channels, -1), adapted)
        np.testing.assert_allclose(response, rgb_response, rtol=1e-5, atol=1e-5)
    source = _source(classes=10, image=16)
    params, report = pretrained.adapt(source, _target(channels=1))
    assert params['patch_embed']['kernel'].shape == (4, 4, 1, 32)
    assert report.adapted == ['patch_embed/kernel (3 -> 1 input channels)']


def test_token_selectors_the_source_lacks_are_initialized_and_extra_ones_dropped():
    target = _target(keep_tokens=9)
    params, report = pretrained.adapt(_source(), target)
    np.testing.assert_array_equal(
        params['token_selector']['scorer']['kernel'], target['token_selector']['scorer']['kernel']
    )
    assert sorted(report.initialized) == [
        'token_selector/scorer/bias (not in the weights)',
        'token_selector/scorer/kernel (not in the weights)',
    ]
    back, report = pretrained.adapt(pretrained.Source(params, 'with selector'), _target())
    assert 'token_selector' not in back and len(report.dropped) == 2


@pytest.mark.parametrize(
    'sizes, problem',
    [
        (
            dict(dim=64, hidden=128),
            r'31 tensors differ \(blocks_0/attn/proj/bias \(64,\) vs \(32,\)',
        ),
        (dict(depth=3), r'12 tensors differ \(blocks_2/norm1/scale not in the model'),
        (dict(patch=8, image=32), r'patch_embed/kernel \(8, 8, 3, 32\) vs \(4, 4, 3, 32\)'),
    ],
)
def test_weights_of_another_architecture_are_refused_in_one_line(sizes, problem):
    with pytest.raises(ValueError, match=problem) as error:
        pretrained.adapt(_source(**sizes), _target())
    message = str(error.value)
    assert '\n' not in message and 'set config.model to the weights' in message


def test_bad_weight_files_are_refused_in_one_line(tmp_path):
    state = random_state_dict(timm_layout(**OTHER_TASK))
    path = tmp_path / 'w.safetensors'
    save_file(state, str(path))
    path.write_bytes(path.read_bytes()[:-100])  # truncated
    with pytest.raises(ValueError, match='not a readable .safetensors file.*truncated') as error:
        pretrained.load_source(str(path))
    assert '\n' not in str(error.value)
    del state['blocks.1.norm2.bias']
    state['dist_token'] = np.zeros((1, 1, 32), np.float32)
    save_file(state, str(path))
    with pytest.raises(ValueError, match=r'init_from .*w\.safetensors: the state dict') as error:
        pretrained.load_source(str(path))
    assert '\n' not in str(error.value) and 'blocks.1.norm2.bias' in str(error.value)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        pretrained.load_source(str(tmp_path / 'no_such_run'))
    with pytest.raises(ValueError, match='a weights file has no steps'):
        pretrained.load_source(f'{path}:3')


def test_a_run_starts_from_the_weights_with_magnitude_masks(tiny_config, tmp_path, caplog):
    """SViTE from a timm file of another task: head reset, grid resampled, masks = largest."""
    state = random_state_dict(timm_layout(**OTHER_TASK))
    path = str(tmp_path / 'pretrained.safetensors')
    weights.save_safetensors(state, path)
    config = tiny_config('method=svite,density=0.5', init_from=path)
    trainer = loop.Trainer(config, str(tmp_path / 'run'))
    with caplog.at_level(logging.INFO):
        fresh = jax.device_get(trainer.fresh_state())
    expected, _ = pretrained.adapt(
        pretrained.load_source(path), jax.device_get(jax.jit(trainer.init_params)())
    )
    densities = masks_lib.layer_densities(expected, 0.5)
    np.testing.assert_equal(
        jax.tree.map(np.asarray, fresh.masks['weights']),
        jax.tree.map(np.asarray, masks_lib.magnitude_weight_masks(expected, densities)),
    )
    zeroed = jax.tree.map(
        lambda p, m: p if m is None else np.where(m, p, 0),
        expected,
        fresh.masks['weights'],
        is_leaf=lambda x: x is None,
    )
    np.testing.assert_equal(jax.tree.map(np.asarray, fresh.params), zeroed)
    logged = caplog.text
    assert 'reset: head/kernel (5 -> 10 classes' in logged and 'resampled: pos_embed' in logged

    # A checkpoint in the workdir wins over init_from, and the log says so.
    saved = jax.jit(trainer.init_state)().replace(step=np.int32(trainer.total_steps))
    checkpointer = Checkpointer(str(tmp_path / 'run'))
    checkpointer.save(saved, trainer.meta)
    checkpointer.wait()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        loop.Trainer(config, str(tmp_path / 'run')).run()
    assert f'init_from={path} is ignored' in caplog.text and 'reset: head' not in caplog.text
    restored = restore_model(str(tmp_path / 'run'))
    np.testing.assert_equal(jax.device_get(restored.params), jax.device_get(saved.params))


def test_s2vite_from_weights_keeps_the_heads_with_the_largest_taylor_scores(tiny_config, tmp_path):
    state = random_state_dict(timm_layout(**{**OTHER_TASK, 'classes': 10, 'image': 16}))
    path = str(tmp_path / 'pretrained.npz')
    np.savez(path, **state)
    config = tiny_config('method=s2vite,head_density=0.5,neuron_density=0.5', init_from=path)
    trainer = loop.Trainer(config, str(tmp_path / 'run'))
    fresh = jax.device_get(trainer.fresh_state())
    source = convert.from_timm(state)
    batch = next(
        loop.data_lib.prefetch_to_device(trainer.train_input.batches(0), trainer.batch_sharding)
    )
    taylor = np.asarray(jax.jit(trainer.step_fn.initial_head_scores)(source, batch)['head_taylor'])
    heads = np.asarray(fresh.masks['heads'])
    assert heads.sum(1).tolist() == [2, 2]
    for block in range(2):
        assert taylor[block][heads[block]].min() >= taylor[block][~heads[block]].max()


def test_train_tool_refuses_a_truncated_weights_file_in_one_line(tiny_data_dir, tmp_path):
    path = tmp_path / 'w.safetensors'
    save_file(random_state_dict(timm_layout(**OTHER_TASK)), str(path))
    path.write_bytes(path.read_bytes()[:1000])
    config = f'{ROOT}/tests/tiny_config.py:data_dir={tiny_data_dir},method=svite'
    command = [
        sys.executable,
        f'{ROOT}/tools/train.py',
        '--config',
        config,
        '--workdir',
        str(tmp_path / 'run'),
        f'--config.init_from={path}',
    ]
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1 and 'w.safetensors is not a readable .safetensors file' in errors[0]
    assert not (tmp_path / 'run' / 'checkpoints').exists() or not os.listdir(
        tmp_path / 'run' / 'checkpoints'
    )
