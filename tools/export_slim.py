"""Export an S²ViTE run as its slim model: a dense, physically smaller model-only checkpoint.

  python tools/export_slim.py --workdir runs/s2vite --out runs/s2vite_slim [--step N] [--json]
  python tools/evaluate.py --workdir runs/s2vite_slim

The slim model keeps only the active heads and neurons of every block and computes the same
logits as the masked run in its fidelity (sparse_vit_jax/models/slim.py). Runs without
head/neuron masks (dense, SViTE) are refused with a non-zero exit.
"""

import json

from absl import app, flags

from sparse_vit_jax import cli  # first: it sets up TensorFlow's environment
from sparse_vit_jax.export import export_slim

_WORKDIR = flags.DEFINE_string('workdir', None, 'S²ViTE run with checkpoints/.', required=True)
_OUT = flags.DEFINE_string('out', None, 'New workdir for the slim checkpoint.', required=True)
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: latest).')
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON object.')


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    report = export_slim(_WORKDIR.value, _OUT.value, step=_STEP.value)
    if _JSON.value:
        print(json.dumps(report))
        return
    print(
        f"wrote {report['out']}/{report['step']}: slim model of {report['workdir']} "
        f"({report['method']}, {report['fidelity']} fidelity), "
        f"{report['num_params']:,} params (from {report['source_num_params']:,})"
    )
    print(f"  heads per block:   {report['kept_heads']}")
    print(f"  neurons per block: {report['kept_neurons']}")
    print(f'evaluate with: python tools/evaluate.py --workdir {_OUT.value}')


if __name__ == '__main__':
    cli.run(main)
