"""Import timm / DeiT / SViTE weights as a model-only checkpoint that tools/evaluate.py reads.

  python tools/convert_timm.py --weights deit_small_patch16_224.safetensors --workdir runs/deit_s
  python tools/evaluate.py --workdir runs/deit_s --data_dir ~/tensorflow_datasets

--weights: .safetensors or .npz (no torch needed), or .pth/.pt/.bin when torch is installed
(read with weights_only=True; training checkpoints are unwrapped to their 'model' entry).
The model is read from the tensor shapes unless --model names it; the run config is the DeiT
ImageNet recipe (sparse_vit_jax.config.base_config) for that model, so evaluate.py knows the
eval pipeline.
"""

from absl import app, flags

from sparse_vit_jax import cli  # first: it sets up TensorFlow's environment
from sparse_vit_jax import pretrained

_WEIGHTS = flags.DEFINE_string('weights', None, 'timm state dict file.', required=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints/ is written.', required=True)
_MODEL = flags.DEFINE_string('model', None, 'Registered model (default: read from the shapes).')
_NUM_CLASSES = flags.DEFINE_integer(
    'num_classes', None, 'Head size to expect (default: the rows of head.weight).'
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    report = pretrained.import_weights(
        _WEIGHTS.value, _WORKDIR.value, model=_MODEL.value, num_classes=_NUM_CLASSES.value
    )
    described = (
        f"{report['model']} {report['overrides']}" if report['overrides'] else report['model']
    )
    print(
        f"wrote {report['directory']}/0: {described}, {report['num_params']:,} params from "
        f"{report['source']}\n"
        f'evaluate with: python tools/evaluate.py --workdir {_WORKDIR.value} [--data_dir DIR]'
    )


if __name__ == '__main__':
    cli.run(main)
