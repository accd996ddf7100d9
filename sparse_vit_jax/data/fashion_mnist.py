"""Fashion-MNIST as the real TFDS ``fashion_mnist`` dataset, online or offline.

Online, TFDS downloads and prepares it. Offline, the same TFDS builder code (features, example
keys, shuffling, version) runs on local IDX files — from the Debian package
``dataset-fashion-mnist`` (fetched with ``apt-get download`` if needed) or from any folder holding
the four IDX files — so the prepared dataset and the training code are identical in both cases.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
from typing import Callable

import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import mnist

from sparse_vit_jax import paths

# The four files of the dataset, keyed like TFDS's MNIST builder keys them.
IDX_FILES = {
    'train_data': 'train-images-idx3-ubyte',
    'train_labels': 'train-labels-idx1-ubyte',
    'test_data': 't10k-images-idx3-ubyte',
    'test_labels': 't10k-labels-idx1-ubyte',
}
SPLIT_SIZES = {'train': 60_000, 'test': 10_000}
DEBIAN_PACKAGE = 'dataset-fashion-mnist'
DEBIAN_IDX_DIR = 'usr/share/datasets/fashion-mnist'

Log = Callable[[str], None]


def find_idx_files(folder: str) -> dict[str, str] | None:
    """Paths of the four IDX files in `folder` (gzipped or not), or None if any is missing."""
    found = {}
    for key, stem in IDX_FILES.items():
        candidates = [os.path.join(folder, stem + suffix) for suffix in ('.gz', '')]
        existing = [c for c in candidates if os.path.isfile(c)]
        if not existing:
            return None
        found[key] = existing[0]
    return found


class _FashionMNISTFromIDX(mnist.FashionMNIST, skip_registration=True):
    """TFDS's own FashionMNIST builder with the download replaced by local files."""

    name = 'fashion_mnist'

    def __init__(self, idx_files: dict[str, str], **kwargs):
        self._idx_files = idx_files
        super().__init__(**kwargs)

    def _split_generators(self, dl_manager):
        gz = {k: v for k, v in self._idx_files.items() if v.endswith('.gz')}
        files = {**self._idx_files, **dl_manager.extract(gz)}
        return [
            tfds.core.SplitGenerator(
                name=split,
                gen_kwargs=dict(
                    num_examples=SPLIT_SIZES[split],
                    data_path=files[f'{split}_data'],
                    label_path=files[f'{split}_labels'],
                ),
            )
            for split in ('train', 'test')
        ]


def is_prepared(data_dir: str | None) -> bool:
    builder = tfds.builder('fashion_mnist', data_dir=data_dir)
    return paths.resolve(paths.join(builder.data_dir, 'dataset_info.json')).exists()


def tfds_source_reachable(timeout: float = 3.0) -> bool:
    """Whether the host TFDS downloads Fashion-MNIST from answers (a cheap offline test)."""
    host = urllib.parse.urlparse(mnist.FashionMNIST.URL).hostname
    try:
        socket.create_connection((host, 80), timeout=timeout).close()
        return True
    except OSError:
        return False


def fetch_debian_idx(cache_dir: str, log: Log) -> str:
    """Downloads the Debian package into `cache_dir` (no root needed) and unpacks it.

    Returns the folder holding the IDX files.
    """
    target = os.path.join(cache_dir, 'fashion-mnist-deb')
    folder = os.path.join(target, DEBIAN_IDX_DIR)
    if find_idx_files(folder):
        return folder
    for tool in ('apt-get', 'dpkg-deb'):
        if shutil.which(tool) is None:
            raise FileNotFoundError(
                f'Fashion-MNIST is not reachable online and `{tool}` is missing, so the Debian package '
                f'{DEBIAN_PACKAGE} cannot be fetched. Put the four IDX files (train-images-idx3-ubyte.gz, '
                '...) in a folder and pass --idx_dir FOLDER.'
            )
    os.makedirs(cache_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        log(f'fetching the Debian package {DEBIAN_PACKAGE} (31 MB) with apt-get download')
        subprocess.run(['apt-get', 'download', '-q', DEBIAN_PACKAGE], cwd=tmp, check=True)
        (deb,) = [f for f in os.listdir(tmp) if f.endswith('.deb')]
        subprocess.run(['dpkg-deb', '-x', os.path.join(tmp, deb), target], check=True)
    if not find_idx_files(folder):
        raise FileNotFoundError(
            f'{DEBIAN_PACKAGE} unpacked to {target} but holds no IDX files in '
            f'{DEBIAN_IDX_DIR}; pass --idx_dir FOLDER with the four IDX files.'
        )
    return folder


def locate_idx_files(idx_dir: str | None, cache_dir: str, log: Log) -> dict[str, str]:
    """IDX files from `idx_dir`, an installed Debian package, or a freshly fetched one."""
    if idx_dir is not None:
        files = find_idx_files(idx_dir)
        if files is None:
            raise FileNotFoundError(
                f'{idx_dir} does not hold the four Fashion-MNIST IDX files '
                f'({", ".join(IDX_FILES.values())}, optionally .gz).'
            )
        return files
    for folder in (
        '/' + DEBIAN_IDX_DIR,
        os.path.join(cache_dir, 'fashion-mnist-deb', DEBIAN_IDX_DIR),
    ):
        files = find_idx_files(folder)
        if files:
            return files
    return find_idx_files(fetch_debian_idx(cache_dir, log))


def default_cache_dir(data_dir: str | None) -> str:
    """TFDS's downloads folder of `data_dir`, where a fetched Debian package is kept (the
    system temp dir when the data goes to a bucket: the package is unpacked locally)."""
    builder = tfds.builder('fashion_mnist', data_dir=data_dir)
    if paths.is_remote(builder.data_dir):
        return os.path.join(tempfile.gettempdir(), 'fashion_mnist_downloads')
    return os.path.join(os.path.dirname(os.path.dirname(builder.data_dir)), 'downloads')


def prepare(
    data_dir: str | None = None,
    *,
    source: str = 'auto',
    idx_dir: str | None = None,
    cache_dir: str | None = None,
    log: Log = lambda message: None,
) -> str:
    """Prepares TFDS ``fashion_mnist`` in `data_dir` (TFDS's default when None); idempotent.

    Args:
      source: 'tfds' downloads with TFDS; 'idx' builds from local IDX files; 'auto' uses local IDX
        files when given or installed, else TFDS when its host answers, else the Debian package.
      idx_dir: a folder with the four IDX files (implies source 'idx').
      cache_dir: where a fetched Debian package is kept (default: <data_dir>/downloads).

    Returns the prepared dataset's folder.
    """
    if source not in ('auto', 'tfds', 'idx'):
        raise ValueError(f"source must be 'auto', 'tfds' or 'idx', got {source!r}")
    builder = tfds.builder('fashion_mnist', data_dir=data_dir)
    if is_prepared(data_dir):
        log(f'fashion_mnist is already prepared in {builder.data_dir}')
        return builder.data_dir
    cache_dir = cache_dir or default_cache_dir(data_dir)
    installed = find_idx_files('/' + DEBIAN_IDX_DIR)
    if source == 'tfds' or (
        source == 'auto' and idx_dir is None and not installed and tfds_source_reachable()
    ):
        log('downloading fashion_mnist with TFDS')
        builder.download_and_prepare()
        return builder.data_dir
    files = locate_idx_files(idx_dir, cache_dir, log)
    log(f'building TFDS fashion_mnist from IDX files in {os.path.dirname(files["train_data"])}')
    local = _FashionMNISTFromIDX(files, data_dir=data_dir)
    local.download_and_prepare(download_dir=os.path.join(cache_dir, 'extracted'))
    log(f'fashion_mnist prepared in {local.data_dir}')
    return local.data_dir
