"""Preprocessing for small decoded images (Fashion-MNIST): light augmentation, normalization.

Randomness is stateless, derived from the per-example seed the pipeline passes in.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)


def normalize(image: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
    image = tf.cast(image, tf.float32) / 255.0
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def train_preprocess(
    features,
    seed,
    *,
    crop_padding: int = 2,
    flip: bool = True,
    mean=FASHION_MNIST_MEAN,
    std=FASHION_MNIST_STD,
):
    """Random crop after zero padding, random horizontal flip, normalize."""
    image = features['image']
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if crop_padding:
        height, width, channels = image.shape
        padded = tf.pad(image, [[crop_padding] * 2, [crop_padding] * 2, [0, 0]])
        image = tf.image.stateless_random_crop(padded, (height, width, channels), crop_seed)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return {'image': normalize(image, mean, std), 'label': features['label']}


def eval_preprocess(features, *, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD):
    return {'image': normalize(features['image'], mean, std), 'label': features['label']}
