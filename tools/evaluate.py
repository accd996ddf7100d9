"""Evaluate the latest (or a given) checkpoint of a workdir on its eval split.

  python tools/evaluate.py --workdir runs/fashion [--step N] [--json]
  python tools/evaluate.py --workdir runs/tokens --token_selection [--json]

Prints top-1/top-5/loss, the parameter count, the density of every masked layer and a
fingerprint of the weights; --json prints one JSON object instead. --token_selection instead
evaluates a token run's latest checkpoint with its learned token selection, random tokens and
the tokens it ranks lowest (how much the selector learned).
"""

import json

from absl import app, flags

from sparse_vit_jax import cli  # first: it sets up TensorFlow's environment
from sparse_vit_jax.train import evaluation

_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir with checkpoints/.', required=True)
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: latest).')
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON object.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Override the TFDS data dir.')
_SPLIT = flags.DEFINE_string('split', None, 'Override the eval split.')
_SELECTION = flags.DEFINE_bool(
    'token_selection', False, 'Top-1 with the learned, random and lowest-ranked tokens.'
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    if _SELECTION.value:
        from sparse_vit_jax.token_quality import selection_quality

        quality = selection_quality(_WORKDIR.value, data_dir=_DATA_DIR.value)
        print(json.dumps(quality) if _JSON.value else quality)
        return
    report = evaluation.evaluate_checkpoint(
        _WORKDIR.value, step=_STEP.value, data_dir=_DATA_DIR.value, split=_SPLIT.value
    )
    if _JSON.value:
        print(json.dumps(report))
        return
    print(f"{report['model']} ({report['method']}) at step {report['step']}:")
    print(
        f"  top-1 {report['top1']:.2%}  top-5 {report['top5']:.2%}  loss {report['loss']:.4f}"
        f"  on {report['num_examples']} examples"
    )
    print(f"  params {report['num_params']:,} (nonzero {report['nonzero_params']:,})")
    if 'density' in report:
        print(f"  density {report['density']:.4f} over the prunable weights; per layer:")
        for layer, density in report['layer_density'].items():
            print(f'    {layer:40s} {density:.4f}')
    for unit in ('heads', 'neurons'):
        if f'active_{unit}' in report:
            print(f"  active {unit} per block: {report[f'active_{unit}']}")
    print(f"  params_fingerprint {report['params_fingerprint']}")


if __name__ == '__main__':
    cli.run(main)
