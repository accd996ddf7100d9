"""Nothing is lost: kill -9 at random moments (once mid-save), SIGTERM preemption, a NaN loss, and
bad input of every kind — each ends with one clear message, and earlier checkpoints survive."""

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from sparse_vit_jax import data as data_lib
from sparse_vit_jax.errors import CheckpointError, NonFiniteError
from sparse_vit_jax.train import evaluation, loop
from sparse_vit_jax.train.checkpoint import Checkpointer
from sparse_vit_jax.train.record import ConfigChangeError
from sparse_vit_jax.train.restore import restore_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# 27 steps of SViTE with a topology update every 2 steps and a checkpoint after every step.
RUN_ARGS = 'method=svite'
RUN_OVERRIDES = {
    'num_epochs': 3.0,
    'checkpoint_every_steps': 1,
    'log_every_steps': 1,
    'sparsity.update_every': 2,
    'sparsity.update_every_batch': 4,
}


def _command(data_dir, workdir, overrides=RUN_OVERRIDES, args=RUN_ARGS):
    flags = [f'--config.{k}={v}' for k, v in overrides.items()]
    config = f'tests/tiny_config.py:data_dir={data_dir},{args}'
    return [sys.executable, 'tools/train.py', '--config', config, '--workdir', workdir, *flags]


def _start(command):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _snapshot(workdir):
    """Every file under the checkpoints folder with the SHA-256 of its bytes."""
    root = os.path.join(workdir, 'checkpoints')
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, 'rb') as f:
                files[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return files


def _error_line(stderr):
    (line,) = [line for line in stderr.splitlines() if line.startswith('error: ')]
    return line


def _saving(workdir):
    root = os.path.join(workdir, 'checkpoints')
    return os.path.isdir(root) and any('tmp' in name for name in os.listdir(root))


def _wait_for_first_checkpoint(process, workdir, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        root = os.path.join(workdir, 'checkpoints')
        if os.path.isdir(root) and any(name.isdigit() for name in os.listdir(root)):
            return True
        time.sleep(0.01)
    return False


def test_sigkill_at_random_moments_resumes_bit_identically(tiny_config, tiny_data_dir, tmp_path):
    straight = str(tmp_path / 'straight')
    loop.train_and_evaluate(tiny_config(arg=RUN_ARGS, **RUN_OVERRIDES), straight)
    expected = evaluation.evaluate_checkpoint(straight)['params_fingerprint']

    workdir = str(tmp_path / 'killed')
    rng = random.Random(0)
    kills, mid_save_kills = 0, 0
    for attempt in range(8):
        process = _start(_command(tiny_data_dir, workdir))
        if attempt < 4 and _wait_for_first_checkpoint(process, workdir):
            deadline = time.time() + (0.0 if attempt == 0 else rng.uniform(0.2, 2.0))
            # The first kill waits for a save in progress; later ones land at random times.
            while process.poll() is None and (
                time.time() < deadline or (attempt == 0 and not _saving(workdir))
            ):
                time.sleep(0.002)
            if process.poll() is None:
                mid_save_kills += _saving(workdir)
                process.send_signal(signal.SIGKILL)
                kills += 1
        _, stderr = process.communicate(timeout=600)
        if process.returncode == 0:
            break
        assert process.returncode == -signal.SIGKILL, stderr[-3000:]
    assert process.returncode == 0 and kills >= 3 and mid_save_kills >= 1
    assert evaluation.evaluate_checkpoint(workdir)['params_fingerprint'] == expected


def test_sigterm_saves_the_current_step_exits_0_and_the_restart_continues(
    tiny_config, tiny_data_dir, tmp_path
):
    workdir = str(tmp_path / 'preempted')
    process = _start(_command(tiny_data_dir, workdir))
    assert _wait_for_first_checkpoint(process, workdir)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    assert 'preempted: saved step' in stdout
    stopped_at = int(stdout.split('saved step ')[1].split(';')[0])
    assert Checkpointer(workdir).latest_step() == stopped_at < 27
    final = loop.train_and_evaluate(tiny_config(arg=RUN_ARGS, **RUN_OVERRIDES), workdir)
    assert final['step'] == 27


@pytest.mark.parametrize(
    'every, survivor',
    [(1, r'The last good checkpoint is step 1 in '), (100, r'No checkpoint was saved yet \(in ')],
)
def test_nan_loss_stops_with_the_step_and_no_nonfinite_checkpoint(
    tiny_config, tmp_path, every, survivor
):
    """A learning rate of 1e30 makes the loss non-finite at step 2; the message names the last
    good checkpoint, or says there is none yet (never 'step None')."""
    workdir = str(tmp_path / 'nan')
    config = tiny_config(
        **{
            **RUN_OVERRIDES,
            'optimizer.lr': 1e30,
            'optimizer.warmup_epochs': 0.0,
            'checkpoint_every_steps': every,
        }
    )
    with pytest.raises(NonFiniteError, match=r'NaN/Inf at step \d+.*' + survivor) as error:
        loop.train_and_evaluate(config, workdir)
    assert 'None' not in str(error.value)
    if every == 100:
        return
    checkpointer = Checkpointer(workdir)
    assert checkpointer.all_steps(), 'the steps before the NaN were saved'
    for step in checkpointer.all_steps():
        params = restore_model(workdir, step=step).params
        assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(params))


# ---------------------------------------------------------------- bad input, in process


@pytest.mark.parametrize(
    'overrides, message',
    [
        ({'sparsity.density': 0.0}, r'density must be in \(0, 1\]'),
        ({'sparsity.density': 1.5}, r'density must be in \(0, 1\]'),
        ({'sparsity.head_density': 0.2}, r'keeps int\(4·0.2\) = 0 units'),
        ({'sparsity.update_every': 0}, r'update_every \(ΔT\) must be > 0'),
        ({'sparsity.t_end': 0.0}, r't_end must be in \(0, 1\]'),
        ({'sparsity.t_end': 1.5}, r't_end must be in \(0, 1\]'),
        ({'tokens.keep': 18}, r'tokens.keep=18 must be between 1 and the sequence length 17'),
        ({'tokens.keep': -1}, r'tokens.keep=-1 must be between 1'),
        (
            {'tokens.keep': 9, 'tokens.mode': 'mask', 'tokens.layerwise': True},
            r"tokens.mode='mask' does not combine with tokens.layerwise; use 'zero' or 'drop'",
        ),
        ({'model.name': 'deit_large'}, r'not a registered model'),
        ({'mesh.fsdp': 2}, r'mesh data=-1 × fsdp=2 does not match the 1 devices'),
        ({'num_epochs': float('inf')}, r'config.num_epochs=inf is not a finite number'),
        ({'optimizer.lr': float('nan')}, r'config.optimizer.lr=nan is not a finite number'),
        ({'optimizer.b2': 1.0}, r'config.optimizer.b2 must be in \[0, 1\), got 1.0'),
        ({'ema_decay': -0.5}, r'config.ema_decay must be in \[0, 1\)'),
    ],
)
def test_out_of_range_values_are_rejected_before_any_work(
    tiny_config, tmp_path, overrides, message
):
    with pytest.raises(ValueError, match=message):
        loop.train_and_evaluate(tiny_config(**overrides), str(tmp_path))
    assert not os.path.exists(os.path.join(tmp_path, 'checkpoints'))


def test_batch_must_divide_devices_and_processes(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr(jax, 'process_count', lambda: 3)  # the arithmetic of a 3-host job
    train, _ = data_lib.make_inputs(tiny_config(batch_size=8))
    with pytest.raises(ValueError, match='does not divide evenly over 1 devices and 3 processes'):
        train.steps_per_epoch


def test_batch_that_does_not_divide_8_devices(tiny_data_dir, run_with_devices):
    output = run_with_devices(f'''
        import sys; sys.path.insert(0, 'tests')
        import tiny_config
        from sparse_vit_jax.train import loop
        c = tiny_config.get_config('data_dir={tiny_data_dir}')
        c.batch_size = 12
        try:
            loop.train_and_evaluate(c, '/tmp/never_written')
        except ValueError as error:
            print(error)
    ''')
    assert 'config.batch_size=12 does not divide evenly over 8 devices' in output


@pytest.fixture
def trained_workdir(tiny_config, tmp_path):
    workdir = str(tmp_path / 'run')
    loop.train_and_evaluate(tiny_config(num_epochs=6 / 9), workdir)
    return workdir


def test_truncated_checkpoint_is_reported_and_left_alone(tiny_config, trained_workdir):
    checkpointer = Checkpointer(trained_workdir)
    latest = checkpointer.latest_step()
    step_dir = os.path.join(checkpointer.directory, str(latest), 'params')
    victim = max(
        (os.path.join(folder, name) for folder, _, names in os.walk(step_dir) for name in names),
        key=os.path.getsize,
    )
    with open(victim, 'r+b') as f:
        f.truncate(os.path.getsize(victim) // 2)
    before = _snapshot(trained_workdir)
    damaged = rf'checkpoint step {latest} is damaged: params/\S+ in \S+/{latest}/params/? cannot'
    with pytest.raises(CheckpointError, match=damaged + '.*--step 3'):
        loop.train_and_evaluate(tiny_config(num_epochs=6 / 9), trained_workdir)
    # The command line says it in one line, and nothing follows it (no thread tracebacks).
    command = [sys.executable, 'tools/evaluate.py', '--workdir', trained_workdir]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert 'Traceback' not in result.stderr and 'Exception ignored' not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith('error: checkpoint step')
    assert re.search(damaged, result.stderr) and '\n' not in _error_line(result.stderr)
    assert _snapshot(trained_workdir) == before
    assert evaluation.evaluate_checkpoint(trained_workdir, step=3)['step'] == 3  # still there


def test_checkpoint_from_another_model_size_is_refused(tiny_config, trained_workdir):
    before = _snapshot(trained_workdir)
    deeper = tiny_config(num_epochs=6 / 9, **{'model.depth': 3})
    with pytest.raises(ConfigChangeError, match=r'changes the run .*: model.depth: 2 → 3\. '):
        loop.train_and_evaluate(deeper, trained_workdir)
    record = open(os.path.join(trained_workdir, 'config.json')).read()
    # Allowed, the change still cannot restore: named as such (not "damaged"), nothing recorded.
    with pytest.raises(CheckpointError, match=r'holds another model than the one being restored'):
        loop.train_and_evaluate(deeper, trained_workdir, allow_config_change=True)
    assert open(os.path.join(trained_workdir, 'config.json')).read() == record
    assert _snapshot(trained_workdir) == before


def test_unwritable_workdir_is_refused(tiny_config, tmp_path):
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a folder')
    with pytest.raises(PermissionError, match='is not writable.*choose another --workdir'):
        loop.train_and_evaluate(tiny_config(), str(blocker / 'run'))


# ---------------------------------------------------------------- the command line


@pytest.mark.parametrize(
    'extra, message',
    [
        (['--config.sparsity.densty=0.5'], "unknown config field 'densty'.*did you mean 'density'"),
        (['--config.batch_size=abc'], 'invalid literal for int'),
        (['--config.sparsity.density=1.5'], r'density must be in \(0, 1\]'),
        (['--config.num_epochs=inf'], r'config.num_epochs=inf is not a finite number'),
        (
            ['--config.data.data_dir=/nonexistent'],
            "'tiny_images' is not registered and not prepared",
        ),
    ],
)
def test_command_line_errors_are_one_line_with_exit_status_1(
    tiny_data_dir, tmp_path, extra, message
):
    command = _command(tiny_data_dir, str(tmp_path / 'run'), overrides={}) + extra
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert 'Traceback' not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
    assert len(error_lines) == 1 and re.search(message, error_lines[0]), result.stderr


def test_unknown_config_arg_in_the_config_path(tiny_data_dir, tmp_path):
    command = _command(tiny_data_dir, str(tmp_path / 'run'), overrides={}, args='densityy=0.5')
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    assert "unknown config arg 'densityy'; valid args:" in result.stderr


# ---------------------------------------------------------------- a full disk


def _mount_namespace(folder):
    """The `unshare` prefix of a private mount namespace in which this user may mount a small
    tmpfs on `folder` (as root, or in an unprivileged user namespace), or None."""
    for prefix in (['unshare', '-m'], ['unshare', '-rm']):
        probe = prefix + ['mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', str(folder)]
        try:
            if subprocess.run(probe, capture_output=True, timeout=30).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            pass
    return None


def test_disk_full_is_one_line_keeps_earlier_checkpoints_and_the_restart_cleans_up(
    tiny_data_dir, tmp_path
):
    """A real full disk: a 2.8 MB tmpfs, half taken by a filler file, holds two checkpoints of
    the tiny run but not the third. Then the filler goes and the same command finishes."""
    disk = tmp_path / 'disk'
    disk.mkdir()
    prefix = _mount_namespace(disk)
    if prefix is None:
        pytest.skip('cannot mount a small tmpfs here (needs root or user namespaces)')
    workdir = f'{disk}/run'
    train = ' '.join(_command(tiny_data_dir, workdir) + ['--config.keep_checkpoints=2'])
    evaluate = f'{sys.executable} tools/evaluate.py --workdir {workdir} --json'
    script = f'''
        mount -t tmpfs -o size=2800k tmpfs {disk} || exit 99
        head -c 1400k /dev/zero > {disk}/filler
        {train}; echo "first=$?"
        ls {workdir}/checkpoints | sed 's/^/listed=/'
        {evaluate} 2>/dev/null | tail -1 | sed 's/^/evaluated=/'
        rm {disk}/filler
        {train} 2>/dev/null | tail -1 | sed 's/^/second=/'
        ls {workdir}/checkpoints | sed 's/^/relisted=/'
    '''
    result = subprocess.run(
        prefix + ['bash', '-c', script], cwd=REPO, capture_output=True, text=True, timeout=900
    )
    out = result.stdout
    assert 'first=1' in out, result.stderr[-3000:]
    assert len([line for line in result.stderr.splitlines() if 'error: ' in line]) == 1, (
        result.stderr
    )
    error = _error_line(result.stderr)
    assert re.search(r'no space left on the device writing .* \(\d+\.\d MB free', error), error
    assert 'Traceback' not in result.stderr and 'Event loop is closed' not in result.stderr
    listed = re.findall(r'^listed=(\S+)', out, re.M)
    complete = sorted(int(name) for name in listed if name.isdigit())
    assert complete and complete[-1] < 27 and len(listed) > len(complete)  # a partial step
    evaluated = json.loads(re.search(r'evaluated=(.*)', out).group(1))
    assert evaluated['step'] == complete[-1]  # the earlier checkpoints are intact
    assert 'after 27 steps' in re.search(r'second=(.*)', out).group(1)
    assert re.findall(r'^relisted=(\S+)', out, re.M) == ['26', '27']  # partial step removed
