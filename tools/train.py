"""Train (and evaluate) a model from a config; restarting with the same workdir resumes.

  python tools/train.py --config configs/fashion_mnist.py:method=svite --workdir runs/svite \
      [--config.num_epochs=5] [--jax_distributed]

SIGTERM (preemption) saves the current step and exits 0; run the same command to continue.
"""

from absl import app, flags
from ml_collections import config_flags

from sparse_vit_jax import cli  # first: it sets up TensorFlow's environment

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file (path[:args]).', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints and metrics go.')
_DISTRIBUTED = flags.DEFINE_bool(
    'jax_distributed',
    False,
    'Call jax.distributed.initialize() first: multi-host TPU pod slices and multi-node GPU jobs.',
)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    import jax

    if _DISTRIBUTED.value:
        jax.distributed.initialize()
    from sparse_vit_jax.train import loop

    results = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
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
