"""timm RandomErasing: a rectangle within the area/aspect bounds, at rate p."""

import numpy as np
import pytest
import tensorflow as tf

from sparse_vit_jax.data import random_erasing as erasing

H, W = 24, 32


def _erase_many(n, **kwargs):
    image = tf.fill([H, W, 3], 5.0)  # far from any N(0, 1) draw
    seeds = np.stack([np.full(n, 11), np.arange(n)], axis=1)
    ds = tf.data.Dataset.from_tensor_slices(seeds).map(
        lambda seed: erasing.random_erasing(image, seed, **kwargs)
    )
    return np.stack(list(ds.as_numpy_iterator()))


def _box(changed):
    rows = np.flatnonzero(changed.any(axis=1))
    cols = np.flatnonzero(changed.any(axis=0))
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def test_erases_one_full_rectangle_within_area_and_aspect_bounds():
    out = _erase_many(60, probability=1.0)
    erased = 0
    for image in out:
        changed = (image != 5.0).all(axis=-1)
        if not changed.any():
            continue  # all 10 attempts failed to fit: timm erases nothing
        erased += 1
        top, bottom, left, right = _box(changed)
        h, w = bottom - top, right - left
        assert changed[top:bottom, left:right].all()  # a solid rectangle
        assert changed.sum() == h * w
        assert h < H and w < W  # timm's strict fit test
        # Rounding h and w moves the area by < (h + w + 1) / 2 pixels.
        slack = (h + w + 1) / 2
        assert 0.02 * H * W - slack <= h * w <= H * W / 3 + slack
        # Before rounding, h / w and w / h are >= 0.3; rounding moves h and w
        # by at most 0.5 each.
        assert h >= 0.3 * (w - 0.5) - 0.5
        assert w >= 0.3 * (h - 0.5) - 0.5
    assert erased >= 55


def test_pixel_mode_fills_with_standard_normals():
    out = _erase_many(20, probability=1.0)
    values = out[out != 5.0]
    assert values.size > 1000
    assert abs(values.mean()) < 0.1 and 0.9 < values.std() < 1.1


def test_erasing_probability_over_many_seeds():
    out = _erase_many(400, probability=0.25)
    rate = np.mean([(image != 5.0).any() for image in out])
    assert 0.19 < rate < 0.31


def test_const_and_rand_modes():
    const = _erase_many(5, probability=1.0, mode='const')
    assert set(np.unique(const)) <= {0.0, 5.0}
    rand = _erase_many(5, probability=1.0, mode='rand')
    for image in rand:
        changed = (image != 5.0).all(axis=-1)
        # one value per channel inside the rectangle
        assert len(np.unique(image[changed], axis=0)) == 1


def test_deterministic_per_seed():
    image = tf.random.stateless_normal([H, W, 3], [0, 0])
    a = erasing.random_erasing(image, tf.constant([1, 2]), probability=1.0)
    b = erasing.random_erasing(image, tf.constant([1, 2]), probability=1.0)
    c = erasing.random_erasing(image, tf.constant([1, 3]), probability=1.0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_rejects_unknown_mode():
    with pytest.raises(ValueError, match='mode'):
        erasing.random_erasing(tf.zeros([4, 4, 3]), tf.constant([0, 0]), mode='zeros')
