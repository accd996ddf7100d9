"""Import timm / DeiT / SViTE weights as a model-only checkpoint that tools/evaluate.py reads.

  python tools/convert_timm.py --weights deit_small_patch16_224.safetensors --workdir runs/deit_s
  python tools/evaluate.py --workdir runs/deit_s --data_dir ~/tensorflow_datasets

--weights: .safetensors or .npz (no torch needed), or .pth/.pt/.bin when torch is installed
(read with weights_only=True; training checkpoints are unwrapped to their 'model' entry).
The model is read from the tensor shapes unless --model names it; the run config is the DeiT
ImageNet recipe (sparse_vit_jax.config.base_config) for that model, so evaluate.py knows the
eval pipeline.
"""

import os

import jax
from absl import app, flags

from sparse_vit_jax import config as config_lib
from sparse_vit_jax import cli, convert
from sparse_vit_jax.models import create_model_from_config
from sparse_vit_jax.train.checkpoint import Checkpointer

_WEIGHTS = flags.DEFINE_string('weights', None, 'timm state dict file.', required=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints/ is written.', required=True)
_MODEL = flags.DEFINE_string('model', None, 'Registered model (default: read from the shapes).')
_NUM_CLASSES = flags.DEFINE_integer(
    'num_classes', None, 'Head size to expect (default: the rows of head.weight).'
)


def _model_section(state: dict) -> tuple[str, dict]:
    """The model name and constructor overrides: from the flags, else from the shapes."""
    name, overrides = (_MODEL.value, {}) if _MODEL.value else convert.infer_model(state)
    if _NUM_CLASSES.value is not None:
        overrides['num_classes'] = _NUM_CLASSES.value
    return name, overrides


def _what_the_shapes_say(state: dict) -> str:
    """A hint for when the model does not fit: the model the weights themselves describe."""
    try:
        name, overrides = convert.infer_model(state)
    except ValueError as error:
        return f'(the shapes fit no registered model: {error})'
    described = f'{name} {overrides}' if overrides else name
    return f'(the shapes describe {described}; without --model/--num_classes that is imported)'


def _convert(path: str, workdir: str) -> str:
    """Writes the checkpoint; returns what to tell the user."""
    state = convert.load_weights(path)
    name, overrides = _model_section(state)
    config = config_lib.base_config()
    config.model = config_lib.model_config(name, **overrides)
    config_lib.validate(config)
    channels = convert.input_channels(state)
    if channels != len(config.data.mean):
        raise ValueError(
            f'the patch embedding takes {channels} channels but the eval data '
            f'({config.data.name}) has {len(config.data.mean)}'
        )
    try:
        params = convert.from_timm(state, create_model_from_config(config.model))
    except ValueError as error:
        if _MODEL.value is None and _NUM_CLASSES.value is None:
            raise
        raise ValueError(f'{error}\n{_what_the_shapes_say(state)}') from None
    checkpointer = Checkpointer(workdir)
    if checkpointer.latest_step() is not None:
        raise ValueError(f'{checkpointer.directory} already holds checkpoints; use a new workdir')
    source = os.path.abspath(path)
    checkpointer.save_model(
        step=0, params=params, masks=None, meta={'config': config.to_dict(), 'source': source}
    )
    count = sum(leaf.size for leaf in jax.tree.leaves(params))
    described = f'{name} {overrides}' if overrides else name
    return (
        f'wrote {checkpointer.directory}/0: {described}, {count:,} params from {source}\n'
        f'evaluate with: python tools/evaluate.py --workdir {workdir} [--data_dir DIR]'
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    print(_convert(_WEIGHTS.value, _WORKDIR.value))


if __name__ == '__main__':
    cli.run(main)
