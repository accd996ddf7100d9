"""Plots of trained runs (PNG files; the paths written are printed).

  python tools/visualize.py density --workdir runs/svite [--out DIR]
  python tools/visualize.py heads --workdir runs/s2vite [--out DIR]
  python tools/visualize.py tokens --workdir runs/sviteplus [--out DIR] [--num_images 8]
  python tools/visualize.py accuracy --results results.json [--out DIR]
  python tools/visualize.py all --workdir runs/s2vite [--results results.json] [--out DIR]

density: the latest per-layer densities, and over training the overall density (and the
"fired" fraction ever active) and the weights regrown at each topology update.
heads (S²ViTE): the head mask (blocks × heads) after every update as one image, and each block's
MLP neuron density over training.
tokens (SViTE+): for the first eval images, which patches the token selector keeps at evaluation
(the model's own eval mode), from the checkpoint.
accuracy: top-1 against GMACs per image (paper convention), one point per run, one series per
method. FILE.json is a JSON list of runs, each
  {"name": "S2ViTE-S 0.7/0.6", "method": "s2vite", "top1": 0.795, "gmacs": 3.1,
   "dense_gmacs": 4.6, ...}
with top1 a fraction (as tools/evaluate.py reports it), gmacs and dense_gmacs as tools/flops.py
--json reports them; other keys are ignored (see plots.accuracy_vs_flops_figure).
all: every plot that applies to the run (density for sparse runs, heads for structured ones,
tokens with a token selector, accuracy if --results is given).

Density and head plots read WORKDIR/metrics.jsonl (its 'sparsity' records); --out defaults to
WORKDIR/plots (for accuracy alone: plots/ beside the results file). The drawing lives in
sparse_vit_jax/visualize.py and sparse_vit_jax/plots.py.
"""

from absl import app, flags

from sparse_vit_jax import cli  # first: it sets up TensorFlow's environment
from sparse_vit_jax.visualize import (
    render_accuracy,
    render_all,
    render_density,
    render_heads,
    render_tokens,
)

COMMANDS = ('tokens', 'density', 'heads', 'accuracy', 'all')

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run workdir (metrics.jsonl, checkpoints/).')
_RESULTS = flags.DEFINE_string('results', None, 'accuracy: JSON list of runs (see above).')
_OUT = flags.DEFINE_string('out', None, 'Where the PNGs go (default: WORKDIR/plots).')
_NUM_IMAGES = flags.DEFINE_integer('num_images', 8, 'How many eval images to show.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: latest).')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Override the TFDS data dir.')


def render(command: str) -> list[str]:
    if command == 'accuracy':
        if not _RESULTS.value:
            raise app.UsageError('accuracy needs --results FILE.json')
        return render_accuracy(_RESULTS.value, _OUT.value)
    if not _WORKDIR.value:
        raise app.UsageError(f'{command} needs --workdir')
    token_args = dict(num_images=_NUM_IMAGES.value, step=_STEP.value, data_dir=_DATA_DIR.value)
    if command == 'tokens':
        return render_tokens(_WORKDIR.value, _OUT.value, **token_args)
    if command == 'density':
        return render_density(_WORKDIR.value, _OUT.value)
    if command == 'heads':
        return render_heads(_WORKDIR.value, _OUT.value)
    return render_all(_WORKDIR.value, _OUT.value, _RESULTS.value, **token_args)


def main(argv):
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f'usage: visualize.py {"|".join(COMMANDS)} [--workdir DIR] [flags]')
    for path in render(argv[1]):
        print(f'wrote {path}')


if __name__ == '__main__':
    cli.run(main)
