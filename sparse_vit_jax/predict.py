"""Classify image files with a run's checkpoint or an exported model (tools/predict.py).

Each image goes through the run's eval transform (data/inputs.py `make_recipe`): for the DeiT
recipe, resize and center crop of any JPEG/PNG; for the small-image recipe the image is decoded
to the model's channels and, when its size differs from the model's, resized to it first (that
recipe's data already has the model's size). Class names are the dataset's TFDS label names.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import tensorflow as tf

from sparse_vit_jax import config as config_lib
from sparse_vit_jax import data as data_lib
from sparse_vit_jax import paths, portable
from sparse_vit_jax.data.device_input import DeviceInput
from sparse_vit_jax.train.restore import restore_model

# TensorFlow only decodes images here; the accelerators belong to JAX.
tf.config.set_visible_devices([], 'GPU')


@dataclasses.dataclass(frozen=True)
class Predictor:
    """A model as a function of image files."""

    forward: Callable[[np.ndarray], np.ndarray]  # [B, H, W, C] model inputs -> [B, classes] logits
    config: ml_collections.ConfigDict  # what the eval transform reads: data and model sections
    label_names: list[str] | None


def from_workdir(workdir: str, step: int | None = None) -> Predictor:
    """The latest (or `step`) checkpoint of a run or a slim export, as evaluation computes it."""
    restored = restore_model(workdir, step=step)
    forward = jax.jit(portable.eval_forward(restored))
    names = restored.meta.get('label_names') or data_lib.label_names(restored.config.data)
    return Predictor(lambda images: np.asarray(forward(images)), restored.config, names)


def from_export(folder: str) -> Predictor:
    """A model written by tools/export.py (--format timm or stablehlo)."""
    forward, description = portable.load(folder)
    config = config_lib.base_config()
    config.model.image_size = description['image_size']
    config.data.recipe = description['recipe']
    config.data.mean = tuple(description['mean'])
    config.data.std = tuple(description['std'])
    config.data.augment.crop_pct = description['crop_pct']
    return Predictor(forward, config, description.get('label_names'))


def read_image(path: str, channels: int) -> tuple[bytes, np.ndarray]:
    """The file at `path` and its decoded image (uint8 [H, W, channels]); ValueError (one line)
    when it is not an image."""
    file = paths.resolve(path)
    if not file.exists():
        raise FileNotFoundError(f'image {path} does not exist')
    encoded = file.read_bytes()
    try:
        image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
        raise ValueError(
            f'{path} is not an image TensorFlow can decode (JPEG, PNG, GIF or BMP)'
        ) from None
    return encoded, image.numpy()


def model_input(predictor: Predictor, path: str) -> tuple[np.ndarray, list[int] | None]:
    """An image file through the eval transform; and its size when it had to be resized."""
    config = predictor.config
    channels, size = len(config.data.mean), config.model.image_size
    encoded, image = read_image(path, channels)
    recipe = data_lib.make_recipe(config)
    resized = None
    if config.data.recipe == 'deit':  # decodes JPEG/PNG bytes and resizes itself
        if not (tf.io.is_jpeg(encoded) or encoded.startswith(b'\x89PNG')):
            encoded = tf.io.encode_png(read_image(path, 3)[1])  # GIF, BMP
        features = {'image': tf.constant(encoded), 'label': tf.constant(0)}
    else:
        if image.shape[:2] != (size, size):
            resized = list(image.shape[:2])
            image = tf.image.resize(image, (size, size), antialias=True)
            image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        features = {'image': tf.constant(image), 'label': tf.constant(0)}
    # The recipe hands uint8 pixels; the model (and an export) takes them normalized, as the
    # eval step normalizes them on device.
    pixels = recipe.eval(features)['image'].numpy()
    return np.asarray(DeviceInput.from_config(config).normalize(pixels)), resized


def predict(predictor: Predictor, paths: list[str], top: int = 5) -> list[dict[str, Any]]:
    """Per image: the `top` classes by probability (names, indices, probabilities)."""
    if not paths:
        raise ValueError('give one or more image files to classify')
    inputs = [model_input(predictor, path) for path in paths]
    logits = predictor.forward(np.stack([image for image, _ in inputs]))
    probabilities = np.asarray(jax.nn.softmax(logits.astype(np.float64), axis=-1))
    names = predictor.label_names
    results = []
    for path, (_, resized), row in zip(paths, inputs, probabilities):
        best = np.argsort(-row, kind='stable')[: min(top, row.size)]
        entry = {
            'image': path,
            'top': [
                {
                    'label': names[i] if names else str(i),
                    'class': int(i),
                    'probability': float(row[i]),
                }
                for i in best
            ],
        }
        if resized:
            entry['resized_from'] = resized
        results.append(entry)
    return results
