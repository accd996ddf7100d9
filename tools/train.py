"""Train (and evaluate) a model from a config; restarting with the same workdir resumes.

  python tools/train.py --config configs/fashion_mnist.py:method=svite --workdir runs/svite \
      [--config.num_epochs=5] [--allow_config_change]
  python tools/train.py ... --workdir gs://bucket/runs/svite --jax_distributed      # TPU pod, SLURM
  python tools/train.py ... --jax_distributed --coordinator_address=HOST:PORT \
      --num_processes=N --process_id=I                                             # manual launch

SIGTERM (preemption) saves the current step and exits 0 (with several processes, all of them
at the same step); run the same command to continue. The workdir records the run's config
(config.json): resuming with a config that changes the run is refused unless
--allow_config_change, and two trainings cannot share a workdir (lease.json).
"""

from absl import app, flags
from ml_collections import config_flags

from sparse_vit_jax import cli  # first: it sets up TensorFlow's environment

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file (path[:args]).', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints and metrics go (or gs://...).')
_ALLOW_CHANGE = flags.DEFINE_bool(
    'allow_config_change',
    False,
    'Resume even though the config changes what the run computes (recorded in config.json).',
)
_DISTRIBUTED = flags.DEFINE_bool(
    'jax_distributed',
    False,
    'One process per host: call jax.distributed.initialize() first. TPU pod slices and SLURM '
    'jobs are detected; elsewhere give --coordinator_address, --num_processes, --process_id.',
)
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'With --jax_distributed: HOST:PORT of process 0 (manual launch).'
)
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'With --jax_distributed: how many processes (manual launch).'
)
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'With --jax_distributed: this process, 0..num_processes-1 (manual launch).'
)
flags.mark_flags_as_required(['config', 'workdir'])


def initialize_distributed() -> None:
    """jax.distributed.initialize with the manual-launch flags (None: auto-detect)."""
    import jax

    manual = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if any(v is not None for v in manual) and not _DISTRIBUTED.value:
        raise app.UsageError(
            '--coordinator_address/--num_processes/--process_id need --jax_distributed'
        )
    if any(v is not None for v in manual) and None in manual:
        raise app.UsageError(
            'a manual launch needs all of --coordinator_address, --num_processes, --process_id'
        )
    if not _DISTRIBUTED.value:
        return
    # CPU processes exchange collectives over gloo (ignored by TPU and GPU backends).
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(
        coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value,
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    import jax

    initialize_distributed()
    from sparse_vit_jax.train import loop

    results = loop.train_and_evaluate(
        _CONFIG.value, _WORKDIR.value, allow_config_change=_ALLOW_CHANGE.value
    )
    if jax.process_index() != 0:
        return
    if results.get('preempted'):
        print(f"preempted: saved step {results['step']}; run the same command to continue")
        return
    print(
        f"final top-1 {results['top1']:.2%} (top-5 {results['top5']:.2%}, loss "
        f"{results['loss']:.4f}) on {results['num_examples']} examples after {results['step']} "
        f"steps, {results['train_seconds']:.0f} s; checkpoints in {_WORKDIR.value}/checkpoints"
    )


if __name__ == '__main__':
    cli.run(main)
