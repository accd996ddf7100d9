"""tools/export.py's portable formats: timm (PyTorch) and StableHLO (jax alone).

Checkpoints are written at step 0 with the run's real optimizer state (as training saves them),
so no train step is compiled; the weights are random and far from init, so layouts matter. The
timm export is checked against the NumPy DeiT of tests/timm_reference.py always, and against
timm itself where torch and timm import (how to install them: tests/test_convert.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from safetensors.numpy import load_file

from conftest import FOLDER_CLASSES
from sparse_vit_jax import paths, portable, pretrained
from sparse_vit_jax import predict as predict_lib
from sparse_vit_jax.data.image_folder import ImageFolder
from sparse_vit_jax.benchmark.timm_torch import stub_torchvision
from sparse_vit_jax.export import export_slim
from sparse_vit_jax.models import create_model_from_config
from sparse_vit_jax.train import optimizer as optimizer_lib
from sparse_vit_jax.train.checkpoint import Checkpointer
from sparse_vit_jax.train.restore import restore_model
from sparse_vit_jax.train.state import create_train_state, init_params
from timm_reference import numpy_deit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _checkpoint(config, workdir: str, seed: int = 0) -> str:
    """A step-0 checkpoint of `config`'s run with weights ~ N(0, 0.1) (norm scales 1 + that)."""
    model = create_model_from_config(config.model, config.tokens)
    shapes = jax.eval_shape(lambda: init_params(model, jax.random.key(0), (16, 16, 3)))
    tx, _, _ = optimizer_lib.make_optimizer(config, model, shapes, total_steps=9, steps_per_epoch=9)
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map_with_path(
        lambda path, s: (rng.normal(0, 0.1, s.shape) + ('scale' in str(path[-1]))).astype(
            np.float32
        ),
        shapes,
    )
    state = create_train_state(model, tx, jax.random.key(0), (16, 16, 3), params=params)
    checkpointer = Checkpointer(workdir)
    checkpointer.save(state, {'config': config.to_dict()})
    checkpointer.wait()
    return workdir


def _images(count: int, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(count, 16, 16, channels)).astype(np.float32)


def _relative_error(got, want) -> float:
    return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


def _our_logits(workdir: str, images: np.ndarray) -> np.ndarray:
    restored = restore_model(workdir)
    return np.asarray(
        restored.model.apply(
            {'params': restored.params},
            images,
            masks=restored.forward_masks,
            train=False,
            rngs={'gumbel': jax.random.fold_in(jax.random.key(restored.config.seed), 0)},
        )
    )


def test_timm_export_of_a_sparse_run_computes_our_logits(tiny_config, tmp_path):
    run = _checkpoint(tiny_config('method=svite,density=0.3'), str(tmp_path / 'run'))
    report = portable.export_timm(run, str(tmp_path / 'timm'))
    state = load_file(str(tmp_path / 'timm' / 'model.safetensors'))
    description = json.loads((tmp_path / 'timm' / 'config.json').read_text())
    assert description['architecture'] == 'deit_tiny_patch16_224'
    assert description['model_args'] == dict(
        img_size=16,
        patch_size=4,
        num_classes=10,
        embed_dim=32,
        depth=2,
        num_heads=4,
        mlp_ratio=2.0,
        in_chans=3,
    )
    assert description['label_names'] == [str(i) for i in range(10)]
    assert description['mean'] == [0.3] * 3 and description['source']['method'] == 'svite'

    restored = restore_model(run)
    pruned = sum(int((~np.asarray(m)).sum()) for m in jax.tree.leaves(restored.masks['weights']))
    zeros = sum(int((value == 0).sum()) for value in state.values())
    assert pruned > 0 and zeros == pruned  # every pruned weight is exactly 0, nothing else
    assert report['nonzero_params'] == report['num_params'] - pruned

    images = _images(3)
    expected = numpy_deit(state, images.transpose(0, 3, 1, 2), heads=4)
    assert _relative_error(_our_logits(run, images), expected) < 1e-5


def test_timm_loads_the_export_and_computes_our_logits(tiny_config, tmp_path):
    torch = pytest.importorskip('torch')
    stub_torchvision()
    timm = pytest.importorskip('timm')
    run = _checkpoint(tiny_config('method=svite,density=0.3'), str(tmp_path / 'run'))
    portable.export_timm(run, str(tmp_path / 'timm'))
    description = json.loads((tmp_path / 'timm' / 'config.json').read_text())
    net = timm.create_model(description['architecture'], **description['model_args']).eval()
    state = load_file(str(tmp_path / 'timm' / 'model.safetensors'))
    net.load_state_dict({name: torch.from_numpy(value) for name, value in state.items()})
    images = _images(3)
    with torch.no_grad():
        logits = net(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    assert _relative_error(logits, _our_logits(run, images)) < 1e-5


def test_runs_timm_cannot_express_are_refused_in_one_line(tiny_config, tmp_path):
    for arg, needle in (
        ('method=s2vite', 'export it with --format slim'),
        ('method=sviteplus,keep_tokens=9', 'use --format stablehlo'),
    ):
        run = _checkpoint(tiny_config(arg), str(tmp_path / arg.split(',')[0]))
        with pytest.raises(portable.ExportError, match=needle) as error:
            portable.export_timm(run, str(tmp_path / 'out'))
        assert '\n' not in str(error.value)
    assert not (tmp_path / 'out').exists()


def _run_with_jax_only(folders: list[str], images: np.ndarray) -> list[np.ndarray]:
    """Loads and runs StableHLO exports in a fresh Python that imports only jax and numpy."""
    np.save(os.path.join(folders[0], 'images.npy'), images)
    code = textwrap.dedent(
        f'''
        import sys
        import jax, numpy as np
        images = np.load({os.path.join(folders[0], 'images.npy')!r})
        for folder in {folders!r}:
            with open(folder + '/model.stablehlo', 'rb') as f:
                exported = jax.export.deserialize(bytearray(f.read()))
            np.save(folder + '/logits.npy', np.asarray(exported.call(images)))
        assert not any(m.split('.')[0] in ('sparse_vit_jax', 'tensorflow', 'flax')
                       for m in sys.modules), 'imported more than jax'
        '''
    )
    result = subprocess.run(
        [sys.executable, '-c', code],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, JAX_PLATFORMS='cpu'),
        cwd='/',
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [np.load(os.path.join(folder, 'logits.npy')) for folder in folders]


def test_stablehlo_exports_of_token_dropping_and_slim_models_run_with_jax_alone(
    tiny_config, tmp_path
):
    tokens = _checkpoint(tiny_config('method=sviteplus,keep_tokens=9'), str(tmp_path / 'tokens'))
    s2vite = _checkpoint(tiny_config('method=s2vite,fidelity=improved'), str(tmp_path / 's2vite'))
    slim = str(tmp_path / 'slim')
    export_slim(s2vite, slim)
    images = _images(3)
    runs, outs = (tokens, slim), [str(tmp_path / 'tokens_hlo'), str(tmp_path / 'slim_hlo')]
    for run, out in zip(runs, outs):
        report = portable.export_stablehlo(run, out, platforms=('cpu',))
        assert report['max_relative_error'] < 1e-5
        description = json.loads(open(os.path.join(out, 'config.json')).read())
        assert description['format'] == 'stablehlo' and description['image_size'] == 16
    expected = [_our_logits(run, images) for run in runs]
    for got, want in zip(_run_with_jax_only(outs, images), expected):
        assert _relative_error(got, want) < 1e-5
    forward, _ = portable.load(outs[0])  # any batch size: the same artifact on one image
    assert _relative_error(forward(images[:1]), expected[0][:1]) < 1e-5
    # The slim model computes what the masked S²ViTE model does.
    assert _relative_error(expected[1], _our_logits(s2vite, images)) < 1e-5
    with pytest.raises(portable.ExportError, match='exists already; choose a new --out'):
        portable.export_stablehlo(slim, outs[1])


def test_export_tool_end_to_end(tiny_config, tmp_path):
    run = _checkpoint(tiny_config('method=dense'), str(tmp_path / 'run'))
    out = str(tmp_path / 'timm')
    command = [
        sys.executable,
        os.path.join(ROOT, 'tools', 'export.py'),
        '--workdir',
        run,
        '--format',
        'timm',
        '--out',
        out,
    ]
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "timm.create_model('deit_tiny_patch16_224', **model_args)" in result.stdout
    forward, description = portable.load(out)
    images = _images(2)
    assert _relative_error(forward(images), _our_logits(run, images)) < 1e-5


def test_a_run_in_a_bucket_exports_predicts_and_starts_another(
    gcs_emulator, tiny_config, image_folder, tmp_path, monkeypatch
):
    """Every file of a user's model in a bucket (a real GCS server): the run restored from
    gs://, its timm export written there and read back (the other formats write through the same
    calls), its weights as init_from, images and an image folder read from there; nothing lands
    on the local disk."""
    monkeypatch.chdir(tmp_path)  # a path mistaken for a local one would appear here
    run = _checkpoint(tiny_config('method=svite,density=0.5'), 'gs://bucket/user/run')
    images = _images(2)
    expected = _our_logits(run, images)
    portable.export_timm(run, 'gs://bucket/user/timm')
    assert {'user/timm/model.safetensors', 'user/timm/config.json'} <= set(
        gcs_emulator.objects('bucket', 'user/timm/')
    )
    forward, description = portable.load('gs://bucket/user/timm')
    assert _relative_error(forward(images), expected) < 1e-5

    # The exported timm weights start another run: the same tensors, pruned zeros included.
    source = pretrained.load_source('gs://bucket/user/timm/model.safetensors')
    restored = jax.device_get(restore_model(run).params)
    jax.tree.map(np.testing.assert_array_equal, source.params, restored)

    # An image folder and image files in the bucket.
    for folder, _, names in os.walk(image_folder):
        for name in names:
            relative = os.path.relpath(os.path.join(folder, name), image_folder)
            with open(os.path.join(folder, name), 'rb') as f:
                paths.resolve(f'gs://bucket/user/images/{relative}').write_bytes(f.read())
    builder = ImageFolder('gs://bucket/user/images')
    assert builder.info.features['label'].names == list(FOLDER_CLASSES)
    first = next(
        iter(builder.as_dataset('train[:1]', decoders={'image': tfds.decode.SkipDecoding()}))
    )
    name = first['image/filename'].numpy().decode()
    assert first['image'].numpy() == paths.resolve(name).read_bytes()
    image = 'gs://bucket/user/images/cat/0.png'
    (result,) = predict_lib.predict(predict_lib.from_workdir(run), [image])
    assert result['image'] == image and len(result['top']) == 5
    assert os.listdir(tmp_path) == []
