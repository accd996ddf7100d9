"""A workdir has one writer (the lease) and one honest record (config.json); a dataset that does
not fit the model is refused before any work."""

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from sparse_vit_jax import data as data_lib
from sparse_vit_jax.train import lease as lease_lib
from sparse_vit_jax.train import loop
from sparse_vit_jax.train import record as record_lib
from sparse_vit_jax.train.record import ConfigChangeError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN = 'method=svite'


@pytest.fixture(scope='module')
def trained(tmp_path_factory, tiny_data_dir):
    """A finished 6-step SViTE run (density 0.5) and the config it ran with."""
    sys.path.insert(0, os.path.join(REPO, 'tests'))
    import tiny_config

    workdir = str(tmp_path_factory.mktemp('record') / 'run')
    config = tiny_config.get_config(f'data_dir={tiny_data_dir},{RUN}')
    config.num_epochs = 6 / 9
    loop.train_and_evaluate(config, workdir)
    return workdir, config


def _files(workdir):
    return sorted(os.listdir(os.path.join(workdir, 'checkpoints')))


# ---------------------------------------------------------------- the run record


def test_the_record_holds_the_config_command_and_versions(trained):
    workdir, config = trained
    record = json.loads(open(os.path.join(workdir, 'config.json')).read())
    assert record['config'] == json.loads(json.dumps(config.to_dict()))
    assert record['started']['command'].startswith(sys.executable)
    versions = record['started']['versions']
    assert versions['jax'] and versions['orbax-checkpoint'] and 'devices' in versions
    assert not os.path.exists(os.path.join(workdir, 'lease.json'))  # released


def test_a_changed_config_is_refused_in_one_line_listing_old_and_new(trained):
    workdir, config = trained
    before = _files(workdir)
    changed = config.copy_and_resolve_references()
    changed.sparsity.density, changed.optimizer.lr = 0.3, 1e-3
    with pytest.raises(ConfigChangeError) as error:
        loop.train_and_evaluate(changed, workdir)
    message = str(error.value)
    assert '\n' not in message
    assert 'optimizer.lr: 0.002 → 0.001, sparsity.density: 0.5 → 0.3.' in message
    assert '--allow_config_change' in message
    assert _files(workdir) == before
    # Only what differs is named (a dtype change alone used to print two equal descriptions).
    changed = config.copy_and_resolve_references()
    changed.model.dtype = 'bfloat16'
    with pytest.raises(ConfigChangeError, match=r"\): model.dtype: 'float32' → 'bfloat16'\. "):
        loop.train_and_evaluate(changed, workdir)


def test_bookkeeping_changes_pass_and_allowed_changes_are_recorded(trained, tmp_path):
    workdir, config = trained
    free = config.copy_and_resolve_references()
    free.log_every_steps, free.keep_checkpoints, free.mesh.fsdp_min_size = 1, 5, 1024
    assert loop.train_and_evaluate(free, workdir)['step'] == 6  # finished: evaluates again
    longer = config.copy_and_resolve_references()
    longer.num_epochs = 1.0
    longer.log_every_steps = 1
    assert loop.train_and_evaluate(longer, workdir, allow_config_change=True)['step'] == 9
    history = record_lib.read(workdir)['history']
    assert history[0]['changes'] == {
        'keep_checkpoints': [3, 5],
        'log_every_steps': [3, 1],
        'mesh.fsdp_min_size': [2**18, 1024],
    }
    assert history[1]['resumed_at_step'] == 6
    assert history[1]['changes'] == {
        'keep_checkpoints': [5, 3],
        'mesh.fsdp_min_size': [1024, 2**18],
        'num_epochs': [6 / 9, 1.0],
    }
    assert record_lib.read(workdir)['config']['num_epochs'] == 1.0


# ---------------------------------------------------------------- one writer


def test_a_second_training_is_refused_in_one_line_naming_the_holder(tiny_data_dir, tmp_path):
    workdir = str(tmp_path / 'held')
    holder = lease_lib.Lease(workdir)
    holder.acquire()  # this test process holds it, as a running training would
    try:
        command = [
            sys.executable,
            'tools/train.py',
            *('--config', f'tests/tiny_config.py:data_dir={tiny_data_dir}', '--workdir', workdir),
        ]
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    finally:
        holder.release()
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1, result.stderr
    assert (
        f'is in use by another training: pid {os.getpid()} on {socket.gethostname()}' in errors[0]
    )
    assert not os.path.exists(os.path.join(workdir, 'checkpoints'))


def _write_lease(workdir, **fields):
    os.makedirs(workdir, exist_ok=True)
    holder = {
        'token': 'other',
        'host': 'elsewhere',
        'pid': 1,
        'started': time.time() - 600,
        'heartbeat': time.time(),
        **fields,
    }
    with open(os.path.join(workdir, 'lease.json'), 'w') as f:
        json.dump(holder, f)


def test_a_lease_whose_holder_is_gone_is_taken_over_with_a_log_line(tmp_path, caplog):
    workdir = str(tmp_path / 'run')
    _write_lease(workdir)  # another machine, heartbeat fresh: still held
    with pytest.raises(lease_lib.LeaseError, match='pid 1 on elsewhere'):
        lease_lib.Lease(workdir).acquire()
    _write_lease(workdir, heartbeat=time.time() - lease_lib.STALE_SECONDS - 1)
    lease = lease_lib.Lease(workdir)
    with caplog.at_level(logging.WARNING, logger='sparse_vit_jax'):
        lease.acquire()
    assert 'taking over the lease' in caplog.text and 'no heartbeat for more than' in caplog.text
    lease.release()
    # This machine, a process that no longer exists (a kill -9): taken over at once.
    _write_lease(workdir, host=socket.gethostname(), boot=lease_lib._boot_id(), pid=2**22 + 7)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='sparse_vit_jax'):
        lease = lease_lib.Lease(workdir)
        lease.acquire()
    assert f'its process {2**22 + 7} no longer exists' in caplog.text
    lease.release()
    assert not os.path.exists(os.path.join(workdir, 'lease.json'))


def test_a_run_whose_lease_was_taken_stops(tmp_path):
    workdir = str(tmp_path / 'run')
    lease = lease_lib.Lease(workdir, heartbeat_seconds=0.05)
    lease.acquire()
    first = json.load(open(os.path.join(workdir, 'lease.json')))['heartbeat']
    time.sleep(0.3)
    assert json.load(open(os.path.join(workdir, 'lease.json')))['heartbeat'] > first
    lease.check()  # still ours
    _write_lease(workdir)  # someone else took it
    time.sleep(0.3)
    with pytest.raises(lease_lib.LeaseError, match='now held by pid 1 on elsewhere.*stops'):
        lease.check()
    lease.release()
    assert os.path.exists(os.path.join(workdir, 'lease.json'))  # theirs: left alone


# ---------------------------------------------------------------- the dataset fits the model


@pytest.mark.parametrize(
    'overrides, message',
    [
        ({'model.num_classes': 5}, 'has 10 classes but the model has 5; set config.model.num'),
        ({'data.mean': (0.3,), 'data.std': (0.3,)}, 'has 3-channel images but config.data.mean'),
        ({'model.image_size': 28}, 'has 16x16 images but the model takes 28x28; set config'),
    ],
)
def test_a_dataset_that_does_not_fit_the_model_is_refused(tiny_config, overrides, message):
    with pytest.raises(
        ValueError, match=rf"dataset 'tiny_images' {message}"
    ):
        data_lib.make_inputs(tiny_config(**overrides))
