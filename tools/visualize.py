"""Plots of a trained run.

  python tools/visualize.py tokens --workdir runs/sviteplus [--out DIR] [--num_images 8]

tokens: for the first eval images, which patches the SViTE+ token selector keeps at evaluation
(the model's own eval mode); writes DIR/tokens_step{N}.png (DIR defaults to WORKDIR/plots).
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from sparse_vit_jax import data as data_lib  # noqa: E402
from sparse_vit_jax import cli, plots  # noqa: E402
from sparse_vit_jax.models import token_selector  # noqa: E402
from sparse_vit_jax.train import evaluation  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir with checkpoints/.', required=True)
_OUT = flags.DEFINE_string('out', None, 'Where the PNGs go (default: WORKDIR/plots).')
_NUM_IMAGES = flags.DEFINE_integer('num_images', 8, 'How many eval images to show.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: latest).')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Override the TFDS data dir.')


def eval_images(config, count: int) -> np.ndarray:
    """The first `count` (real, unpadded) eval images, normalized as the model sees them."""
    _, eval_input = data_lib.make_inputs(config)
    chunks, total = [], 0
    for batch in eval_input.batches():
        images = batch['image'][batch['mask'].astype(bool)]
        chunks.append(images)
        total += len(images)
        if total >= count:
            break
    return np.concatenate(chunks)[:count]


def render_tokens(
    workdir: str, out_dir: str | None = None, num_images: int = 8, *, step=None, data_dir=None
) -> list[str]:
    """Writes the token-selection figure of a run's checkpoint; returns the paths written."""
    restored = evaluation.restore_model(workdir, step=step, data_dir=data_dir)
    config = restored.config
    images = eval_images(config, num_images)
    kept = token_selector.kept_patches(
        restored.model, restored.params, images, masks=restored.forward_masks
    )
    figure = plots.token_selection_figure(
        plots.unnormalize(images, config.data.mean, config.data.std),
        np.asarray(kept),
        config.model.patch_size,
        title=f'{config.sparsity.method}: {config.tokens.keep} of '
        f'{kept.shape[1] + 1} tokens kept ({config.tokens.eval_mode} eval), step {restored.step}',
    )
    out_dir = out_dir or os.path.join(workdir, 'plots')
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f'tokens_step{restored.step}.png')
    figure.savefig(path, dpi=120)
    return [path]


def main(argv):
    if len(argv) != 2 or argv[1] != 'tokens':
        raise app.UsageError('usage: visualize.py tokens --workdir DIR [--out DIR]')
    for path in render_tokens(
        _WORKDIR.value, _OUT.value, _NUM_IMAGES.value, step=_STEP.value, data_dir=_DATA_DIR.value
    ):
        print(f'wrote {path}')


if __name__ == '__main__':
    cli.run(main)
