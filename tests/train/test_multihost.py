"""Two real processes on localhost (jax.distributed, gloo CPU collectives), as a pod or a
multi-node GPU job runs: SIGTERM to one makes both save the same step and exit 0; the same two
commands then resume and end bit-identical to an uninterrupted two-process run, whose
checkpoint also restores on this single-device process."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

from sparse_vit_jax.train import evaluation
from sparse_vit_jax.train.checkpoint import Checkpointer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 18  # 2 epochs: each process reads 18 or 19 of the 37 examples, 2 per step


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _launch(data_dir, workdir):
    port = _free_port()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', JAX_PLATFORMS='cpu')
    env.pop('XLA_FLAGS', None)  # one CPU device per process
    return [
        subprocess.Popen(
            [
                sys.executable,
                'tools/train.py',
                *('--config', f'tests/tiny_config.py:data_dir={data_dir},method=svite'),
                *('--workdir', workdir, '--config.num_epochs=2'),
                *('--config.checkpoint_every_steps=1', '--config.log_every_steps=1'),
                *('--config.sparsity.update_every=2', '--config.sparsity.update_every_batch=4'),
                '--jax_distributed',
                f'--coordinator_address=127.0.0.1:{port}',
                *('--num_processes=2', f'--process_id={index}'),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(2)
    ]


def _finish(processes):
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-4000:]
    return [stderr for _, stderr in outputs]


def test_two_processes_sigterm_saves_one_step_everywhere_and_resumes_exactly(
    tiny_data_dir, tmp_path
):
    straight = str(tmp_path / 'straight')
    _finish(_launch(tiny_data_dir, straight))
    report = evaluation.evaluate_checkpoint(straight)  # written by 2 processes, read by 1
    assert report['step'] == STEPS

    workdir = str(tmp_path / 'preempted')
    processes = _launch(tiny_data_dir, workdir)
    checkpoints = os.path.join(workdir, 'checkpoints')
    deadline = time.time() + 300
    while not (os.path.isdir(checkpoints) and any(n.isdigit() for n in os.listdir(checkpoints))):
        assert time.time() < deadline and all(p.poll() is None for p in processes)
        time.sleep(0.05)
    processes[1].send_signal(signal.SIGTERM)  # the scheduler takes the second host
    logs = _finish(processes)
    saved = [int(re.search(r'preempted: saved step (\d+)', log).group(1)) for log in logs]
    assert saved[0] == saved[1] < STEPS
    assert Checkpointer(workdir, create=False).latest_step() == saved[0]

    _finish(_launch(tiny_data_dir, workdir))  # the same two commands again
    resumed = evaluation.evaluate_checkpoint(workdir)
    assert resumed['step'] == STEPS
    assert resumed['params_fingerprint'] == report['params_fingerprint']


def test_processes_that_disagree_on_the_length_of_the_run_stop_before_step_1():
    """What `Trainer` checks before step 1, with two real processes whose totals differ."""
    code = '''
import sys
import jax
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.distributed.initialize(f'127.0.0.1:{sys.argv[1]}', num_processes=2, process_id=int(sys.argv[2]))
from sparse_vit_jax.train.loop import check_processes_agree
try:
    check_processes_agree(steps_per_epoch=9, total_steps=18 + jax.process_index())
except ValueError as error:
    print(error)
'''
    port = str(_free_port())
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    env.pop('XLA_FLAGS', None)
    processes = [
        subprocess.Popen(
            [sys.executable, '-c', code, port, str(i)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
        assert (
            'the processes disagree on the length of the run (process 0: steps_per_epoch=9, '
            'total_steps=18; process 1: steps_per_epoch=9, total_steps=19)' in stdout
        )
