"""Prepare a TFDS dataset so training can read it offline.

  python tools/prepare_data.py fashion_mnist [--data_dir DIR] [--source auto|tfds|idx] [--idx_dir DIR]
  python tools/prepare_data.py imagenet2012 --manual_dir DIR [--data_dir DIR]
  python tools/prepare_data.py imagenet2012 --fake N_CLASSES --data_dir DIR

fashion_mnist: downloads with TFDS when online; offline, builds the same TFDS dataset from the
IDX files of the Debian package dataset-fashion-mnist (fetched with apt-get download when not
installed) or from --idx_dir.
imagenet2012: the real TFDS builder prepares ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar
from --manual_dir (downloaded by you from image-net.org); the tars are checked first.
imagenet2012 --fake N: a tiny synthetic stand-in for smoke tests (README "Smoke-test the ImageNet
path"): fake tars in the real layout, in a temporary folder, with N classes,
--fake_images_per_class train images each and the validation images labelled with those classes,
prepared by the same TFDS builder. It needs its own --data_dir, so that it can never stand in for
the real dataset by accident.
"""

from absl import app, flags

from sparse_vit_jax import cli  # first: it sets up TensorFlow's environment
from sparse_vit_jax.data import fashion_mnist, imagenet

_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data dir (default: TFDS default).')
_SOURCE = flags.DEFINE_enum('source', 'auto', ['auto', 'tfds', 'idx'], 'fashion_mnist source.')
_IDX_DIR = flags.DEFINE_string('idx_dir', None, 'Folder with the four Fashion-MNIST IDX files.')
_MANUAL_DIR = flags.DEFINE_string('manual_dir', None, 'imagenet2012: folder with the ILSVRC tars.')
_FAKE = flags.DEFINE_integer(
    'fake', None, 'imagenet2012: prepare a synthetic stand-in with this many classes instead.'
)
_FAKE_IMAGES = flags.DEFINE_integer(
    'fake_images_per_class', 10, 'imagenet2012 --fake: train images per class.'
)

DATASETS = ('fashion_mnist', 'imagenet2012')


def log(message: str) -> None:
    print(f'[prepare_data] {message}', flush=True)


def main(argv):
    if len(argv) != 2 or argv[1] not in DATASETS:
        raise app.UsageError(f'name one dataset to prepare: {", ".join(DATASETS)}')
    if argv[1] == 'fashion_mnist':
        fashion_mnist.prepare(
            _DATA_DIR.value, source=_SOURCE.value, idx_dir=_IDX_DIR.value, log=log
        )
    elif _FAKE.value is not None:
        if _MANUAL_DIR.value is not None:
            raise app.UsageError('give imagenet2012 either --manual_dir or --fake, not both')
        if _DATA_DIR.value is None:
            raise app.UsageError(
                'imagenet2012 --fake needs its own --data_dir (e.g. --data_dir runs/fake_tfds), '
                'so that it never takes the place of the real dataset in the default TFDS dir'
            )
        imagenet.prepare_fake_imagenet2012(
            _DATA_DIR.value,
            _FAKE.value,
            images_per_class=_FAKE_IMAGES.value,
            log=log,
        )
    elif _MANUAL_DIR.value is None:
        raise app.UsageError(
            'imagenet2012 needs --manual_dir (the folder with ILSVRC2012_img_train.tar and '
            'ILSVRC2012_img_val.tar), or --fake N_CLASSES for a synthetic stand-in'
        )
    else:
        imagenet.prepare_imagenet2012(_DATA_DIR.value, _MANUAL_DIR.value, log=log)


if __name__ == '__main__':
    cli.run(main)
