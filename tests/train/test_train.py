"""Training: it learns, resuming equals never stopping, configs reach the model, CLI end to end."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest

from sparse_vit_jax.models import create_model
from sparse_vit_jax.train import evaluation, loop
from sparse_vit_jax.train.checkpoint import Checkpointer
from sparse_vit_jax.train.state import create_train_state
from sparse_vit_jax.train.steps import TrainStep

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_tiny_model_overfits_a_tiny_batch():
    model = create_model('vit_test')
    tx = optax.adamw(2e-3, weight_decay=0.0)
    state = create_train_state(model, tx, jax.random.key(0), (16, 16, 3))
    step = jax.jit(TrainStep(model, tx, seed=0, num_classes=10, label_smoothing=0.0))
    batch = {
        'image': jax.random.normal(jax.random.key(1), (16, 16, 16, 3)),
        'label': jnp.arange(16) % 10,
    }
    for _ in range(150):
        state, metrics = step(state, batch)
    assert float(metrics['loss']) < 0.05 and float(metrics['accuracy']) == 1.0
    assert int(state.step) == 150 and int(state.nonfinite_step) == -1


@pytest.mark.parametrize('method', ['dense', 'svite', 's2vite'])
def test_resumed_run_equals_uninterrupted_run(tiny_config, tmp_path, method):
    """Stop after step 3 (checkpoint), restart with the same workdir: bit-identical end state,
    masks and sparse schedule position included."""
    config = tiny_config(
        arg=f'method={method},head_density=0.5,neuron_density=0.5',
        **{'num_epochs': 8 / 9, 'sparsity.update_every': 2, 'sparsity.update_every_batch': 4},
    )
    straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
    loop.train_and_evaluate(config, straight)
    shutil.copytree(straight, resumed)
    checkpoints = Checkpointer(resumed)
    assert checkpoints.all_steps() == [3, 6, 8]
    for step in (6, 8):  # as if killed right after the step-3 checkpoint
        shutil.rmtree(os.path.join(checkpoints.directory, str(step)))
    final = loop.train_and_evaluate(config, resumed)
    reports = [evaluation.evaluate_checkpoint(d) for d in (straight, resumed)]
    assert reports[0]['params_fingerprint'] == reports[1]['params_fingerprint']
    assert final['step'] == 8 and reports[1]['top1'] == reports[0]['top1']
    if method != 'dense':
        # The masks moved at update steps 2, 4, 6, 8, including after the restart.
        sparsity = [r for r in _records(resumed) if r['kind'] == 'sparsity']
        assert sparsity and sparsity[-1]['last_update_step'] in (6, 8)


def _records(workdir):
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f]


def test_unknown_config_arg_is_rejected(tiny_config):
    with pytest.raises(ValueError, match="unknown config arg 'densityy'"):
        tiny_config(arg='densityy=0.5')


def test_command_line_trains_evaluates_and_overrides_reach_the_model(fashion_data_dir, tmp_path):
    """tools/train.py on the real Fashion-MNIST with --config overrides, then tools/evaluate.py."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
    if fashion_data_dir:
        env['TFDS_DATA_DIR'] = fashion_data_dir
    workdir = str(tmp_path / 'run')
    train = subprocess.run(
        [
            sys.executable,
            'tools/train.py',
            '--config',
            'configs/fashion_mnist.py:method=svite',
            '--workdir',
            workdir,
            '--config.model.depth=1',
            '--config.model.embed_dim=32',
            '--config.num_epochs=0.05',
            '--config.data.shuffle_buffer=1000',
            '--config.optimizer.warmup_epochs=0.01',
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert 'final top-1' in train.stdout
    evaluate = subprocess.run(
        [sys.executable, 'tools/evaluate.py', '--workdir', workdir, '--json'],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    report = json.loads(evaluate.stdout.strip().splitlines()[-1])
    assert report['num_examples'] == 10_000 and report['top1'] > 0.25  # chance is 0.1
    assert set(report['layer_density']) == {
        'patch_embed/kernel',
        'blocks_0/attn/qkv/kernel',
        'blocks_0/attn/proj/kernel',
        'blocks_0/mlp/fc1/kernel',
        'blocks_0/mlp/fc2/kernel',
        'head/kernel',
    }  # depth=1 reached the model
    assert abs(report['density'] - 0.5) < 0.02
    eval_records = [r for r in _records(workdir) if r['kind'] == 'eval']
    assert eval_records[-1]['top1'] == report['top1']
