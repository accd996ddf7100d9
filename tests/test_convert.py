"""timm import: sparse_vit_jax.convert and tools/convert_timm.py.

The timm layout and the NumPy DeiT forward pass (tests/timm_reference.py) are written from timm's
definition of the model, not from convert.py or models/vit.py, so agreement means the mapping is
right.

`test_parity_with_timm` and the .pth test run only where torch and timm import (neither is a
dependency). Without touching the JAX venv (--no-deps keeps CUDA wheels and newer copies of the
venv's packages out; add --index-url https://download.pytorch.org/whl/cpu where no CPU wheel of
torch is on the package index), from the repository root:

    python -m pip install --target /tmp/torch_timm --no-deps torch==2.13.0 timm==1.0.31 \
        sympy mpmath networkx filelock jinja2 huggingface_hub
    PYTHONPATH=.:/tmp/torch_timm python -m pytest tests/test_convert.py -k 'timm or pth' -rs

timm imports torchvision, whose PyPI wheels need CUDA torch (docs/benchmarks.md, "Installing
torch and timm"); when it does not import, the test puts a stub of the few names timm touches in
its place (sparse_vit_jax/benchmark/timm_torch.py, shared with `tools/benchmark.py --vs_timm`).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from sparse_vit_jax import convert, weights
from sparse_vit_jax.benchmark.timm_torch import TorchvisionStub, stub_torchvision
from sparse_vit_jax.models import create_model
from timm_reference import numpy_deit, random_state_dict, timm_layout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A model small enough to compile in about a second: 16 patches of 8x8, 17 tokens.
SMALL = dict(image_size=32, patch_size=8)
SMALL_SIZES = dict(dim=32, depth=2, hidden=64, classes=10, patch=8, image=32)
HEADS = 4  # vit_test's head count

DEIT = dict(patch=16, image=224, classes=1000, depth=12)
TINY = timm_layout(dim=192, hidden=768, **DEIT)
DEIT_SIZES = {  # parameter counts from DESIGN.md
    'deit_tiny_patch16_224': (TINY, 5_717_416),
    'deit_small_patch16_224': (timm_layout(dim=384, hidden=1536, **DEIT), 22_050_664),
    'deit_base_patch16_224': (timm_layout(dim=768, hidden=3072, **DEIT), 86_567_656),
}


def shapes_only(layout: dict[str, tuple]) -> dict[str, np.ndarray]:
    """Zero-stride arrays of the right shapes: a DeiT-B 'state dict' that takes no memory."""
    return {name: np.broadcast_to(np.float32(0), shape) for name, shape in layout.items()}


def test_numpy_reference_matches_flax_with_converted_weights():
    """The converted params make our model compute timm's DeiT: same logits, different code."""
    state = random_state_dict(timm_layout(**SMALL_SIZES))
    images = np.random.default_rng(1).normal(size=(2, 3, 32, 32)).astype(np.float32)
    expected = numpy_deit(state, images, HEADS)

    assert convert.infer_model(state) == ('vit_test', SMALL)
    model = create_model('vit_test', **SMALL)
    logits = model.apply({'params': convert.from_timm(state)}, images.transpose(0, 2, 3, 1))
    assert logits.shape == (2, 10)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_layer_norm_matches_timm_when_tokens_have_a_large_mean():
    """A residual stream offset by 10 (pretrained ViTs have large-norm tokens): still timm's."""
    state = random_state_dict(timm_layout(**SMALL_SIZES))
    state['pos_embed'] = state['pos_embed'] + np.float32(10.0)
    images = np.random.default_rng(1).normal(size=(2, 3, 32, 32)).astype(np.float32)
    expected = numpy_deit(state, images, HEADS)
    model = create_model('vit_test', **SMALL)
    logits = model.apply({'params': convert.from_timm(state)}, images.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


# ----------------------------------------------------------------------------- tables, round trip


@pytest.mark.parametrize('name', sorted(DEIT_SIZES))
def test_deit_tables_and_inferred_names(name):
    """The timm tables hold DESIGN.md's counts, and shapes alone name the model."""
    layout, count = DEIT_SIZES[name]
    assert sum(int(np.prod(shape)) for shape in layout.values()) == count
    assert len(layout) == 152
    assert convert.infer_model(shapes_only(layout)) == (name, {})
    assert convert.infer_model_name(shapes_only(layout)) == name


def test_infer_model_reads_classes_and_resolution():
    layout = timm_layout(dim=384, hidden=1536, depth=12, classes=100, patch=16, image=384)
    expected = ('deit_small_patch16_224', {'image_size': 384, 'num_classes': 100})
    assert convert.infer_model(shapes_only(layout)) == expected


def test_tiny_round_trip_is_exact_and_matches_timm_table():
    """to_timm gives timm's 152 Tiny tensors; from_timm(to_timm(p)) == p bit for bit."""
    shapes = convert.param_shapes(create_model('deit_tiny_patch16_224'))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)

    exported = convert.to_timm(params)
    assert list(exported) == list(TINY)  # timm's names, in timm's module order
    assert {name: value.shape for name, value in exported.items()} == TINY
    assert sum(value.size for value in exported.values()) == 5_717_416
    assert all(value.dtype == np.float32 for value in exported.values())

    back = convert.from_timm(exported)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for got, want in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        assert got.dtype == np.float32 and np.array_equal(got, want)


def test_module_prefix_and_checkpoint_wrapper_are_accepted():
    """DeiT/SViTE .pth files: {'model': state_dict, 'optimizer': ..., ...}, DDP 'module.' names."""
    state = random_state_dict(timm_layout(**SMALL_SIZES))
    wrapped = {
        'model': {f'module.{name}': value for name, value in state.items()},
        'optimizer': {'state': {}},
        'epoch': 299,
    }
    expected = convert.from_timm(state)
    for variant in (wrapped, wrapped['model'], {'model': state}):
        got = convert.from_timm(variant)
        assert jax.tree.all(jax.tree.map(np.array_equal, got, expected))


def test_sviteplus_selector_maps_to_token_selector_when_the_model_has_one():
    dim = SMALL_SIZES['dim']
    state = random_state_dict(timm_layout(**SMALL_SIZES))
    state['gumbel.weight'] = np.arange(dim, dtype=np.float32)[None]  # Linear(D, 1)
    state['gumbel.bias'] = np.ones(1, np.float32)
    target = convert.param_shapes(create_model('vit_test', **SMALL))
    target['token_selector'] = {
        'scorer': {
            'kernel': jax.ShapeDtypeStruct((dim, 1), np.float32),
            'bias': jax.ShapeDtypeStruct((1,), np.float32),
        }
    }
    params = convert.from_timm(state, target=target)
    kernel = params['token_selector']['scorer']['kernel']
    np.testing.assert_array_equal(kernel, np.arange(dim, dtype=np.float32)[:, None])
    np.testing.assert_array_equal(convert.to_timm(params)['gumbel.weight'], state['gumbel.weight'])

    with pytest.raises(ValueError, match=r'gumbel\.weight .*SViTE\+ token selector'):
        convert.from_timm(state)  # the inferred model has none: k is not in the state dict


def test_layerwise_selectors_map_to_every_blocks_token_selector():
    """SViTE's *_data models: blocks.{i}.attn.gumbel <-> blocks_{i}/attn/token_selector/scorer."""
    dim = SMALL_SIZES['dim']
    state = random_state_dict(timm_layout(**SMALL_SIZES))
    state['gumbel.weight'] = np.arange(dim, dtype=np.float32)[None]
    state['gumbel.bias'] = np.ones(1, np.float32)
    for i in range(SMALL_SIZES['depth']):
        state[f'blocks.{i}.attn.gumbel.weight'] = np.full((1, dim), i + 2.0, np.float32)
        state[f'blocks.{i}.attn.gumbel.bias'] = np.full((1,), -i, np.float32)
    model = create_model('vit_test', keep_tokens=9, layerwise_tokens=True, **SMALL)
    params = convert.from_timm(state, model)
    kernel = params['blocks_1']['attn']['token_selector']['scorer']['kernel']
    np.testing.assert_array_equal(kernel, np.full((dim, 1), 3.0, np.float32))
    exported = convert.to_timm(params)
    assert set(exported) == set(state)
    for name, value in state.items():
        np.testing.assert_array_equal(exported[name], value)


# ----------------------------------------------------------------------------- bad inputs


def _broken(change: str) -> tuple[dict, str]:
    state = random_state_dict(timm_layout(**SMALL_SIZES))
    if change == 'missing':
        del state['blocks.1.norm2.bias']
        return state, r'missing \(1\):\n    blocks\.1\.norm2\.bias'
    if change == 'unexpected':
        state['blocks.0.attn.gumbel.weight'] = np.zeros((1, 32), np.float32)
        return state, r'unexpected \(1\):\n    blocks\.0\.attn\.gumbel\.weight  \(layer-wise'
    state['blocks.0.mlp.fc1.bias'] = np.zeros(65, np.float32)
    return state, r'wrong shape.*\n    blocks\.0\.mlp\.fc1\.bias: expected \(64,\), got \(65,\)'


@pytest.mark.parametrize('change', ['missing', 'unexpected', 'wrong_shape'])
def test_each_problem_is_one_clear_error_naming_the_key(change):
    state, message = _broken(change)
    with pytest.raises(ValueError, match=message) as error:
        convert.from_timm(state)
    assert str(error.value).startswith('the state dict does not fit vit_test')
    assert '1 problem(s)' in str(error.value)


def test_all_problems_are_reported_together():
    state = random_state_dict(timm_layout(**SMALL_SIZES))
    del state['head.bias']
    state['dist_token'] = np.zeros((1, 1, 32), np.float32)
    state['blocks.1.attn.qkv.bias'] = np.zeros(3, np.float32)
    state['norm.weight'] = state['norm.weight'].astype(np.int32)
    with pytest.raises(ValueError, match='4 problem') as error:
        convert.from_timm(state)
    for needle in ('head.bias', 'dist_token  (distilled', 'qkv.bias: expected (96,), got (3,)'):
        assert needle in str(error.value)
    assert 'norm.weight: int32' in str(error.value)


def test_a_named_model_that_does_not_fit_is_refused():
    state = random_state_dict(timm_layout(**SMALL_SIZES))
    with pytest.raises(ValueError, match=r'patch_embed\.proj\.weight: expected \(32, 3, 4, 4\)'):
        convert.from_timm(state, create_model('vit_test'))  # 4x4 patches, not 8x8


def test_distilled_pos_embed_cannot_be_inferred():
    state = shapes_only(TINY)
    state['pos_embed'] = np.zeros((1, 198, 192), np.float32)
    with pytest.raises(ValueError, match='distilled DeiT'):
        convert.infer_model(state)


@pytest.mark.skipif(importlib.util.find_spec('torch') is not None, reason='torch is installed')
def test_pth_without_torch_says_what_to_do(tmp_path):
    path = tmp_path / 'deit.pth'
    path.write_bytes(b'not read')
    with pytest.raises(ValueError, match=r'needs PyTorch.*\.safetensors or \.npz'):
        weights.load_weights(str(path))


# ----------------------------------------------------------------------------- the tool


def _run_tool(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
    command = [sys.executable, os.path.join(ROOT, 'tools', 'convert_timm.py'), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize('suffix', ['safetensors', 'npz'])
def test_tool_writes_a_checkpoint_evaluate_can_restore(tmp_path, suffix):
    from safetensors.numpy import save_file

    from sparse_vit_jax.train.checkpoint import Checkpointer
    from sparse_vit_jax.train.restore import restore_model

    state = random_state_dict(timm_layout(**SMALL_SIZES))
    weights = tmp_path / f'deit.{suffix}'
    if suffix == 'npz':
        np.savez(weights, **state)
    else:
        save_file(state, str(weights))
    workdir = tmp_path / 'run'
    result = _run_tool('--weights', str(weights), '--workdir', str(workdir))
    assert result.returncode == 0, result.stderr
    assert 'tools/evaluate.py --workdir' in result.stdout

    checkpointer = Checkpointer(str(workdir), create=False)
    meta = checkpointer.meta()
    assert meta['source'] == str(weights) and meta['step'] == 0 and not meta['has_masks']
    config = meta['config']
    assert config['model']['name'] == 'vit_test' and config['model']['image_size'] == 32
    assert config['data']['name'] == 'imagenet2012'  # the DeiT eval recipe
    restored = restore_model(str(workdir))  # what evaluate.py restores
    params, masks = restored.params, restored.masks
    assert masks is None
    expected = convert.from_timm(state)
    assert jax.tree.structure(params) == jax.tree.structure(expected)
    same = jax.tree.map(lambda got, want: np.array_equal(np.asarray(got), want), params, expected)
    assert jax.tree.all(same)

    again = _run_tool('--weights', str(weights), '--workdir', str(workdir))
    assert again.returncode != 0 and 'already holds checkpoints' in again.stderr


def test_tool_refuses_pickled_npz(tmp_path):
    weights = tmp_path / 'pickled.npz'
    state = random_state_dict(timm_layout(**SMALL_SIZES))
    np.savez(weights, **state, args=np.array([{'lr': 5e-4}], dtype=object))
    result = _run_tool('--weights', str(weights), '--workdir', str(tmp_path / 'run'))
    assert result.returncode != 0
    assert 'needs pickle to load' in result.stderr and 'plain tensors' in result.stderr
    assert not (tmp_path / 'run').exists()


# ----------------------------------------------------------------------------- timm itself


def test_parity_with_timm():
    """timm's own DeiT and ours, on weights exported from timm: same logits."""
    torch = pytest.importorskip('torch')
    stub_torchvision()
    timm = pytest.importorskip('timm')
    torch.manual_seed(0)
    net = timm.models.vision_transformer.VisionTransformer(
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=HEADS,
        mlp_ratio=2.0,
        num_classes=10,
    ).eval()  # vit_test's sizes; timm's defaults are DeiT's (qkv bias, LN eps 1e-6, exact GELU)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.normal_(0.0, 0.1)
        images = torch.randn(2, 3, 32, 32)
        expected = net(images).numpy()
    state = {name: value.numpy() for name, value in net.state_dict().items()}

    params = convert.from_timm(state)
    name, overrides = convert.infer_model(state)
    model = create_model(name, **overrides)
    logits = model.apply({'params': params}, images.numpy().transpose(0, 2, 3, 1))
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert list(convert.to_timm(params)) == list(state)  # timm's names in timm's order


def test_pth_training_checkpoint_loads_and_code_is_refused(tmp_path):
    """.pth as DeiT/SViTE save it (weights under 'model', argparse args beside); never code."""
    torch = pytest.importorskip('torch')
    state = random_state_dict(timm_layout(**SMALL_SIZES))
    tensors = {f'module.{name}': torch.from_numpy(value) for name, value in state.items()}
    tensors['module.head.bias'] = tensors['module.head.bias'].to(torch.bfloat16)
    checkpoint = {'model': tensors, 'epoch': 299, 'args': argparse.Namespace(lr=5e-4)}
    torch.save(checkpoint, tmp_path / 'deit.pth')
    loaded = weights.load_weights(str(tmp_path / 'deit.pth'))
    assert sorted(loaded) == sorted(state) and loaded['head.bias'].dtype == np.float32
    qkv = 'blocks.0.attn.qkv.weight'
    np.testing.assert_array_equal(loaded[qkv], state[qkv])

    torch.save({'model': tensors, 'hook': TorchvisionStub()}, tmp_path / 'code.pth')
    with pytest.raises(ValueError, match='weights_only loading refuses.*plain tensors'):
        weights.load_weights(str(tmp_path / 'code.pth'))
