"""Prepare a TFDS dataset so training can read it offline.

  python tools/prepare_data.py fashion_mnist [--data_dir DIR] [--source auto|tfds|idx] [--idx_dir DIR]

fashion_mnist: downloads with TFDS when online; offline, builds the same TFDS dataset from the
IDX files of the Debian package dataset-fashion-mnist (fetched with apt-get download when not
installed) or from --idx_dir.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags  # noqa: E402

from sparse_vit_jax.data import fashion_mnist  # noqa: E402

_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data dir (default: TFDS default).')
_SOURCE = flags.DEFINE_enum('source', 'auto', ['auto', 'tfds', 'idx'], 'Where the data comes from.')
_IDX_DIR = flags.DEFINE_string('idx_dir', None, 'Folder with the four Fashion-MNIST IDX files.')

DATASETS = ('fashion_mnist',)


def main(argv):
    if len(argv) != 2 or argv[1] not in DATASETS:
        raise app.UsageError(f'name one dataset to prepare: {", ".join(DATASETS)}')
    log = lambda message: print(f'[prepare_data] {message}', flush=True)
    fashion_mnist.prepare(_DATA_DIR.value, source=_SOURCE.value, idx_dir=_IDX_DIR.value, log=log)


if __name__ == '__main__':
    app.run(main)
