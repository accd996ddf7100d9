"""A run in a bucket, end to end, on a real GCS server (fake-gcs-server on localhost): train
into gs://bucket/run, kill -9, resume, evaluate, export the slim model, plot — every file on
the bucket, nothing on the local disk outside the system temp dir."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from sparse_vit_jax import paths
from sparse_vit_jax.export import export_slim
from sparse_vit_jax.train import evaluation, lease
from sparse_vit_jax.train.metrics import read_metrics
from sparse_vit_jax.visualize import render_all

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 9  # 1 epoch of the tiny dataset, a topology update every 3 steps


def _local_files(root):
    """Every file under `root` (the repository: its environment and caches aside)."""
    skip = {'.venv', '.git', '__pycache__', '.pytest_cache', '.hypothesis'}
    found = set()
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skip]
        found.update(os.path.join(folder, n) for n in names)
    return found


def _committed_steps(emulator, prefix):
    objects = emulator.objects('bucket', prefix)
    return sorted(
        int(name.split('/')[-2])
        for name in objects
        if name.endswith('/commit_success.txt') and name.count('/') == prefix.count('/') + 1
    )


def test_a_run_in_a_bucket_end_to_end(gcs_emulator, tiny_data_dir, tmp_path, monkeypatch):
    workdir = 'gs://bucket/run'
    system_tmp, cwd, home = (tmp_path / name for name in ('tmp', 'cwd', 'home'))
    for folder in (system_tmp, cwd, home):
        folder.mkdir()
    repo_before = _local_files(REPO)
    env = dict(os.environ, TMPDIR=str(system_tmp), HOME=str(home), TF_CPP_MIN_LOG_LEVEL='2')
    config = f'{REPO}/tests/tiny_config.py:data_dir={tiny_data_dir},method=s2viteplus,keep_tokens=9'
    command = [
        sys.executable,
        f'{REPO}/tools/train.py',
        *('--config', config, '--workdir', workdir),
        *('--config.num_epochs=1', '--config.checkpoint_every_steps=1'),
        *('--config.log_every_steps=1', '--config.sparsity.update_every=3'),
        '--config.sparsity.update_every_batch=4',
    ]

    first = subprocess.Popen(command, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while len(_committed_steps(gcs_emulator, 'run/checkpoints/')) < 2 and first.poll() is None:
        assert time.time() < deadline
        time.sleep(0.1)
    # One writer per workdir, in a bucket too: a second training is refused, naming the holder.
    with pytest.raises(lease.LeaseError, match=rf'in use by another training: pid {first.pid} '):
        lease.Lease(workdir).acquire()
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    killed_at = _committed_steps(gcs_emulator, 'run/checkpoints/')[-1]
    assert killed_at < STEPS

    resumed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'taking over the lease' in resumed.stderr and 'no longer exists' in resumed.stderr
    assert f'resumed from {workdir}/checkpoints at step {killed_at}' in resumed.stderr
    assert _committed_steps(gcs_emulator, 'run/checkpoints/')[-1] == STEPS
    objects = gcs_emulator.objects('bucket', 'run/')
    assert 'run/lease.json' not in objects  # released at the end
    assert any(name.startswith('run/tensorboard/events.out.tfevents') for name in objects)
    record = json.loads(paths.resolve(f'{workdir}/config.json').read_text())
    assert record['config']['tokens']['keep'] == 9 and len(record['history']) == 1
    train = read_metrics(workdir, 'train')
    assert [r['step'] for r in train] == list(range(1, STEPS + 1))  # each step logged once

    # Evaluate, export and plot from the bucket, in this process (its temp dir redirected too).
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(tempfile, 'tempdir', str(system_tmp))
    report = evaluation.evaluate_checkpoint(workdir)
    assert report['step'] == STEPS
    exported = export_slim(workdir, 'gs://bucket/slim')
    assert exported['out'] == 'gs://bucket/slim/checkpoints'
    slim = evaluation.evaluate_checkpoint('gs://bucket/slim')
    assert slim['top1'] == report['top1'] and slim['num_params'] < report['num_params']
    written = render_all(workdir)
    assert sorted(os.path.basename(p).split('_step')[0] for p in written) == [
        'density',
        'heads',
        'tokens',
    ]
    assert all(p.startswith(f'{workdir}/plots/') for p in written)
    assert all(p.replace('gs://bucket/', '') in gcs_emulator.objects('bucket') for p in written)

    assert not os.listdir(cwd) and _local_files(REPO) == repo_before
    # In HOME only what importing TensorFlow writes for any program (Keras' settings file,
    # matplotlib's font cache): nothing of the run.
    library_caches = ('.keras/keras.json', '.cache/matplotlib/fontlist')
    home_files = {os.path.relpath(p, home) for p in _local_files(str(home))}
    assert all(f.startswith(library_caches) for f in home_files), home_files
