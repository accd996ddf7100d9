"""ImageNet through exactly the production path, offline: the real TFDS imagenet2012 builder on
a hand-made ILSVRC manual_dir, the DeiT augmentation at 224×224, repeated augmentation, Mixup/
CutMix on device, a few train steps of a small model, evaluation, and the prepare tool."""

import os
import subprocess
import sys

import pytest

from sparse_vit_jax import config as config_lib
from sparse_vit_jax.data import imagenet
from sparse_vit_jax.train import evaluation, loop

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope='module')
def imagenet_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp('imagenet')
    manual = root / 'manual'
    imagenet.write_fake_manual_dir(str(manual), images_per_class=4, num_val=6, corrupt=1)
    result = subprocess.run(
        [
            sys.executable,
            'tools/prepare_data.py',
            'imagenet2012',
            '--manual_dir',
            str(manual),
            '--data_dir',
            str(root / 'tfds'),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return str(root / 'tfds'), str(manual)


def test_deit_recipe_trains_and_evaluates_at_224(imagenet_dirs, tmp_path):
    data_dir, _ = imagenet_dirs
    c = config_lib.load('configs/dense.py:model=deit_tiny,epochs=2')
    c.model.update(dict(embed_dim=32, depth=2, num_heads=2, mlp_dim=64, patch_size=32))
    c.data.update(dict(data_dir=data_dir, shuffle_buffer=16, eval_batch_size=4))
    c.batch_size = 6  # two images × 3 repeats; even, as batch Mixup needs
    c.log_every_steps = 1
    train_input, _ = loop.data_lib.make_inputs(c)
    batch = next(train_input.batches())
    assert batch['image'].shape == (6, 224, 224, 3)
    assert list(batch['label'][:3]) == [batch['label'][0]] * 3  # repeated augmentation
    # The corrupt JPEG, skipped and counted: once per epoch, and with 2 batches per epoch the
    # next epoch's pipeline starts at once (next_epoch_lookahead) and may have counted it too.
    assert int(train_input.skipped.numpy()) in (1, 2)
    results = loop.train_and_evaluate(c, str(tmp_path))
    assert results['step'] == 2 * (12 // 6) and results['num_examples'] == 6
    report = evaluation.evaluate_checkpoint(str(tmp_path))
    assert report['top1'] == results['top1'] and report['model'] == 'deit_tiny_patch16_224'


def test_prepare_tool_names_a_malformed_manual_dir(tmp_path):
    (tmp_path / 'ILSVRC2012_img_train.tar').write_bytes(b'not a tar')
    result = subprocess.run(
        [
            sys.executable,
            'tools/prepare_data.py',
            'imagenet2012',
            '--manual_dir',
            str(tmp_path),
            '--data_dir',
            str(tmp_path / 'tfds'),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert 'ILSVRC2012_img' in result.stderr and 'Traceback' not in result.stderr
