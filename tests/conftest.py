"""Shared fixtures: real TFDS datasets (a tiny hand-made one, and Fashion-MNIST), tiny configs,
a runner for code that needs several simulated CPU devices (set before JAX starts), and a real
local GCS server for gs:// paths."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Helper modules beside the tests (tiny_config, timm_reference) import by name.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
TINY_SIZES = {'train': 37, 'test': 23}  # odd sizes: padding and remainders get exercised


def write_tiny_dataset(data_dir: str, name: str = 'tiny_images', sizes=TINY_SIZES) -> None:
    """A real TFDS dataset of 16×16 RGB images whose label is recoverable from the pixels."""
    features = tfds.features.FeaturesDict(
        {
            'image': tfds.features.Image(shape=(16, 16, 3)),
            'label': tfds.features.ClassLabel(num_classes=10),
        }
    )
    rng = np.random.default_rng(0)
    splits = {}
    for split, size in sizes.items():
        labels = np.arange(size) % 10
        images = rng.integers(0, 64, (size, 16, 16, 3), dtype=np.uint8)
        images[np.arange(size), labels, :, :] = 255  # a bright row at the label's index
        splits[split] = tf.data.Dataset.from_tensor_slices({'image': images, 'label': labels})
    tfds.dataset_builders.TfDataBuilder(
        name=name, version='1.0.0', data_dir=data_dir, split_datasets=splits, features=features
    ).download_and_prepare()


FOLDER_CLASSES = ('cat', 'dog', 'fox')


def write_image_folder(root: str, classes=FOLDER_CLASSES, per_class: int = 6) -> str:
    """root/<class>/*.jpg|png: odd images JPEG, even ones PNG, of assorted sizes, each class a
    colour (so the label is recoverable); also a truncated PNG and a text file named .jpg."""
    rng = np.random.default_rng(0)
    for index, name in enumerate(classes):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            height, width = 12 + 4 * (i % 3), 20 - 2 * (i % 4)
            image = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
            image[..., index % 3] += 150
            encode = tf.io.encode_png if i % 2 == 0 else tf.io.encode_jpeg
            with open(os.path.join(root, name, f'{i}.{"png" if i % 2 == 0 else "jpg"}'), 'wb') as f:
                f.write(encode(image).numpy())
    png = open(os.path.join(root, classes[0], '0.png'), 'rb').read()
    with open(os.path.join(root, classes[0], 'truncated.png'), 'wb') as f:
        f.write(png[: len(png) // 2])
    with open(os.path.join(root, classes[1], 'notes.jpg'), 'w') as f:
        f.write('not an image')
    return root


@pytest.fixture(scope='session')
def image_folder(tmp_path_factory) -> str:
    return write_image_folder(str(tmp_path_factory.mktemp('images')))


@pytest.fixture(scope='session')
def tiny_data_dir(tmp_path_factory) -> str:
    data_dir = str(tmp_path_factory.mktemp('tfds'))
    write_tiny_dataset(data_dir)
    return data_dir


def _tiny_config(data_dir: str, arg: str | None = None, **overrides):
    """tests/tiny_config.py for the tiny dataset in `data_dir`, with dotted-key overrides."""
    import tiny_config

    c = tiny_config.get_config(','.join(filter(None, [f'data_dir={data_dir}', arg])))
    for key, value in overrides.items():
        target = c
        *parents, leaf = key.split('.')
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return c


@pytest.fixture(scope='session')
def fashion_data_dir() -> str | None:
    """The TFDS dir where Fashion-MNIST is prepared (prepared offline here if needed)."""
    from sparse_vit_jax.data import fashion_mnist

    data_dir = os.environ.get('TFDS_DATA_DIR')
    fashion_mnist.prepare(data_dir)
    return data_dir


def _run_with_devices(code: str, devices: int = 8, timeout: int = 600, xla_flags: str = '') -> str:
    """Runs `code` in a fresh Python with `devices` simulated CPU devices (and any further
    `xla_flags`); returns its stdout."""
    flags = f'--xla_force_host_platform_device_count={devices} {xla_flags}'.strip()
    env = dict(os.environ, XLA_FLAGS=flags)
    result = subprocess.run(
        [sys.executable, '-c', textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    if result.returncode != 0:
        raise AssertionError(f'subprocess failed:\n{result.stdout}\n{result.stderr[-5000:]}')
    return result.stdout


@pytest.fixture
def tiny_config(tiny_data_dir):
    """tiny_config(arg=None, **{'dotted.key': value}) -> a run config on the tiny dataset."""
    return functools.partial(_tiny_config, tiny_data_dir)


@pytest.fixture(scope='session')
def gcs_emulator():
    """A local GCS server (fake-gcs-server, in memory, a free port on 127.0.0.1) holding an
    empty bucket 'bucket', reached through STORAGE_EMULATOR_HOST by this process and its
    children; stopped at the end of the session."""
    from sparse_vit_jax import gcs_emulator

    previous = os.environ.get('STORAGE_EMULATOR_HOST')
    with gcs_emulator.Emulator(buckets=('bucket',)) as server:
        os.environ['STORAGE_EMULATOR_HOST'] = server.url
        try:
            yield server
        finally:
            if previous is None:
                os.environ.pop('STORAGE_EMULATOR_HOST', None)
            else:
                os.environ['STORAGE_EMULATOR_HOST'] = previous


@pytest.fixture(scope='session')
def run_with_devices():
    """run_with_devices(code, devices=8, xla_flags='') -> stdout of `code` run with simulated
    devices."""
    return _run_with_devices
