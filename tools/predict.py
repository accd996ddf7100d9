"""Classify images with a trained run (or an exported model): the top classes and probabilities.

  python tools/predict.py --workdir runs/fashion shoe.png shirt.jpg
  python tools/predict.py --exported exports/svite_hlo --json photo.jpg

Each image goes through the run's eval transform; class names are the dataset's TFDS label names.
--json prints one JSON object per image, one per line.
"""

import json

from absl import app, flags

from sparse_vit_jax import cli  # first: it sets up TensorFlow's environment
from sparse_vit_jax import predict as predict_lib

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run (or slim export) with checkpoints/.')
_EXPORTED = flags.DEFINE_string('exported', None, 'Folder written by tools/export.py instead.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: latest).')
_TOP = flags.DEFINE_integer('top', 5, 'How many classes to show per image.', lower_bound=1)
_JSON = flags.DEFINE_bool('json', False, 'One JSON object per image.')


def main(argv):
    if (_WORKDIR.value is None) == (_EXPORTED.value is None):
        raise app.UsageError('give either --workdir or --exported, and the image files')
    if _WORKDIR.value is not None:
        predictor = predict_lib.from_workdir(_WORKDIR.value, step=_STEP.value)
    else:
        predictor = predict_lib.from_export(_EXPORTED.value)
    for result in predict_lib.predict(predictor, argv[1:], top=_TOP.value):
        if _JSON.value:
            print(json.dumps(result))
            continue
        note = (
            f" (resized from {'x'.join(map(str, result['resized_from']))})"
            if 'resized_from' in result
            else ''
        )
        print(f"{result['image']}{note}")
        for entry in result['top']:
            print(f"  {entry['probability']:7.2%}  {entry['label']}")


if __name__ == '__main__':
    cli.run(main)
