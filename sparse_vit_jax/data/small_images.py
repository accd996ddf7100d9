"""Preprocessing for small decoded images (Fashion-MNIST): light augmentation, uint8 out (the
device normalizes, `device_input.py`).

Randomness is stateless, derived from the per-example seed the pipeline passes in.
"""

from __future__ import annotations

import tensorflow as tf


def train_preprocess(
    features,
    seed,
    *,
    crop_padding: int = 2,
    flip: bool = True,
):
    """Random crop after zero padding, random horizontal flip."""
    image = features['image']
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if crop_padding:
        height, width, channels = image.shape
        padded = tf.pad(image, [[crop_padding] * 2, [crop_padding] * 2, [0, 0]])
        image = tf.image.stateless_random_crop(padded, (height, width, channels), crop_seed)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return {'image': image, 'label': features['label']}


def eval_preprocess(features):
    return {'image': features['image'], 'label': features['label']}
