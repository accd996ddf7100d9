"""Offline Fashion-MNIST: the real TFDS builder code on local IDX files gives the real dataset."""

import gzip
import hashlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from sparse_vit_jax.data import fashion_mnist


def _read_idx(path, header):
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
        return np.frombuffer(f.read()[header:], np.uint8)


def test_prepared_from_idx_files_matches_the_idx_files(fashion_data_dir, tmp_path):
    # The IDX files come from wherever the session's Fashion-MNIST came from (no second download).
    cache = fashion_mnist.default_cache_dir(fashion_data_dir)
    files = fashion_mnist.locate_idx_files(None, cache, print)
    fashion_mnist.prepare(str(tmp_path), source='idx', cache_dir=cache)
    builder = tfds.builder('fashion_mnist', data_dir=str(tmp_path))
    assert type(builder).__name__ == 'FashionMNIST'  # the registered TFDS builder reads it
    assert builder.info.splits['train'].num_examples == 60_000
    assert builder.info.splits['test'].num_examples == 10_000
    images = _read_idx(files['test_data'], 16).reshape(-1, 28 * 28)
    labels = _read_idx(files['test_labels'], 8)
    by_image = {}
    for image, label in zip(images, labels):
        by_image.setdefault(hashlib.sha1(image.tobytes()).hexdigest(), set()).add(int(label))
    seen = np.zeros(10, int)
    for example in tfds.as_numpy(builder.as_dataset(split='test')):
        key = hashlib.sha1(example['image'].reshape(-1).tobytes()).hexdigest()
        assert int(example['label']) in by_image[key]
        seen[example['label']] += 1
    assert seen.tolist() == [1000] * 10
    train_labels = _read_idx(files['train_labels'], 8)
    assert np.bincount(train_labels).tolist() == [6000] * 10
    # Preparing again is a no-op.
    assert fashion_mnist.prepare(str(tmp_path), source='idx') == builder.data_dir


def test_missing_idx_files_give_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='train-images-idx3-ubyte'):
        fashion_mnist.locate_idx_files(str(tmp_path), str(tmp_path), print)
