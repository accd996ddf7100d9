"""The timm RandAugment spec parser and the seeded policy."""

import math

import numpy as np
import pytest
import tensorflow as tf

from sparse_vit_jax.data import randaugment
from sparse_vit_jax.data.randaugment import RandAugmentConfig


def test_parses_the_deit_spec():
    config = randaugment.parse_randaugment('rand-m9-mstd0.5-inc1')
    assert config == RandAugmentConfig(
        num_layers=2,
        magnitude=9.0,
        magnitude_std=0.5,
        magnitude_max=10.0,
        increasing=True,
        prob=0.5,
    )
    assert config.op_names == randaugment.RAND_INCREASING_OPS
    assert len(config.op_names) == 15


def test_parses_n_mmax_inc0_and_defaults():
    assert randaugment.parse_randaugment('rand') == RandAugmentConfig()
    config = randaugment.parse_randaugment('rand-n3-m12-mmax15-inc0')
    assert (config.num_layers, config.magnitude, config.magnitude_max, config.increasing) == (
        3,
        12.0,
        15.0,
        False,
    )
    assert config.op_names == randaugment.RAND_OPS
    # Like later timm: mstd > 100 means uniform magnitude sampling.
    assert randaugment.parse_randaugment('rand-mstd101').magnitude_std == (math.inf)


@pytest.mark.parametrize(
    'spec,message',
    [
        ('augmix-m5', "start with 'rand'"),
        ('rand-x9', 'unknown key'),
        ('rand-m9-w0', 'weighted'),
        ('rand-m', 'not <key><number>'),
        ('rand-m9-m7', 'given twice'),
        ('rand-m9.5', 'integer'),
        ('rand-inc2', "'inc' must be 0 or 1"),
        ('rand--m9', 'not <key><number>'),
    ],
)
def test_rejects_unknown_parts_with_clear_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        randaugment.parse_randaugment(spec)


def test_fill_from_deit_mean_is_timm_gray():
    assert randaugment.fill_from_mean((0.485, 0.456, 0.406)) == (124, 116, 104)


def _augment_many(image, seeds, config):
    ds = tf.data.Dataset.from_tensor_slices(seeds).map(
        lambda seed: randaugment.rand_augment(image, seed, config, fill=(124, 116, 104))
    )
    return np.stack(list(ds.as_numpy_iterator()))


def test_same_seed_same_output_different_seeds_differ():
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), np.uint8)
    seeds = np.array([[3, i] for i in range(12)] + [[3, 0]], np.int64)
    out = _augment_many(image, seeds, 'rand-m9-mstd0.5-inc1')
    np.testing.assert_array_equal(out[0], out[-1])
    # ~1/4 of seeds apply no op, and AutoContrast is a no-op on a full-range
    # image, so a few repeats of the input are expected.
    distinct = {o.tobytes() for o in out[:-1]}
    assert len(distinct) >= 6


def test_untouched_fraction_matches_two_half_probability_gates():
    # With prob 0.5 per layer, about 1/4 of images get no op at all. At M9
    # every op in the increasing set changes a random image (a sign flip can
    # bring an enhance factor to 1.0 only at level 0), so unchanged ~= 0.25.
    image = np.random.default_rng(1).integers(0, 256, (8, 8, 3), np.uint8)
    seeds = np.stack([np.full(400, 7), np.arange(400)], axis=1)
    out = _augment_many(image, seeds, 'rand-m9-inc1')
    unchanged = np.mean([np.array_equal(o, image) for o in out])
    assert 0.17 < unchanged < 0.33


def test_prob_zero_is_the_identity():
    image = np.random.default_rng(2).integers(0, 256, (8, 8, 3), np.uint8)
    config = RandAugmentConfig(magnitude=9.0, increasing=True, prob=0.0)
    seeds = np.stack([np.zeros(20), np.arange(20)], axis=1).astype(np.int64)
    out = _augment_many(image, seeds, config)
    assert all(np.array_equal(o, image) for o in out)
