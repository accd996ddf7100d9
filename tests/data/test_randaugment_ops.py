"""Each RandAugment op against hand-computed values or a NumPy statement."""

import numpy as np
import pytest
import tensorflow as tf

from sparse_vit_jax.data import randaugment
from sparse_vit_jax.data import randaugment_ops as ops

FILL = (124, 116, 104)


def _np(x):
    return np.asarray(x).astype(np.int64)


def _random_image(seed, shape=(9, 11, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


def _one_channel(values):
    """An RGB image whose three channels all hold `values` ([H, W])."""
    return np.repeat(np.asarray(values, np.uint8)[..., None], 3, axis=-1)


def test_invert():
    image = _random_image(0)
    np.testing.assert_array_equal(ops.invert(image), 255 - image)


@pytest.mark.parametrize('bits,mask', [(0, 0x00), (1, 0x80), (4, 0xF0), (8, 0xFF)])
def test_posterize_keeps_top_bits(bits, mask):
    image = _random_image(1)
    np.testing.assert_array_equal(ops.posterize(image, bits), image & mask)


def test_solarize_inverts_at_and_above_threshold():
    image = _one_channel([[0, 100, 127, 128, 200, 255]])
    expected = _one_channel([[0, 100, 127, 127, 55, 0]])
    np.testing.assert_array_equal(ops.solarize(image, 128), expected)
    np.testing.assert_array_equal(ops.solarize(image, 256), image)
    np.testing.assert_array_equal(ops.solarize(image, 0), 255 - image)


def test_solarize_add_brightens_below_threshold_with_saturation():
    image = _one_channel([[0, 100, 127, 128, 200, 255]])
    expected = _one_channel([[100, 200, 227, 128, 200, 255]])
    np.testing.assert_array_equal(ops.solarize_add(image, 100), expected)
    np.testing.assert_array_equal(ops.solarize_add(image, 200)[0, 2], [255] * 3)


def test_auto_contrast_stretches_each_channel():
    image = np.zeros((1, 3, 3), np.uint8)
    image[0, :, 0] = [50, 100, 150]  # scale 2.55, offset -127.5
    image[0, :, 1] = [7, 7, 7]  # constant: left alone
    image[0, :, 2] = [0, 128, 255]  # already full range
    out = _np(ops.auto_contrast(image))
    np.testing.assert_array_equal(out[0, :, 0], [0, 127, 255])  # int(127.5)
    np.testing.assert_array_equal(out[0, :, 1], [7, 7, 7])
    np.testing.assert_array_equal(out[0, :, 2], [0, 128, 255])


def test_equalize_hand_computed():
    # 1020 pixels: 510 at 10, 255 at 20, 255 at 30. PIL: step = (1020 - 255)
    # // 255 = 3, start n = 1; lut[10] = 1 // 3 = 0, lut[20] = 511 // 3 =
    # 170, lut[30] = 766 // 3 = 255.
    values = np.array([10] * 510 + [20] * 255 + [30] * 255).reshape(30, 34)
    out = _np(ops.equalize(_one_channel(values)))[..., 0]
    expected = np.select([values == 10, values == 20], [0, 170], 255)
    np.testing.assert_array_equal(out, expected)


def test_equalize_clips_levels_past_255():
    # 700 at 0, 64 at 100, 1 at 200: step = (765 - 1) // 255 = 2, so level
    # 100 maps to (1 + 700) // 2 = 350 and level 200 to 382; PIL's point()
    # clips both to 255.
    values = np.array([0] * 700 + [100] * 64 + [200]).reshape(45, 17)
    out = _np(ops.equalize(_one_channel(values)))[..., 0]
    np.testing.assert_array_equal(out, np.where(values == 0, 0, 255))


def _equalize_reference(channel):
    """PIL's equalize written out in NumPy (one channel)."""
    hist = np.bincount(channel.ravel(), minlength=256)
    nonzero = hist[hist > 0]
    if len(nonzero) <= 1:
        return channel
    step = (nonzero.sum() - nonzero[-1]) // 255
    if step == 0:
        return channel
    lut = np.minimum((step // 2 + np.cumsum(hist) - hist) // step, 255)
    return lut[channel]


def test_equalize_matches_numpy_statement_on_random_images():
    for seed in range(3):
        image = _random_image(seed, (40, 30, 3)) // (seed + 1)  # uneven ranges
        expected = np.stack([_equalize_reference(image[..., c]) for c in range(3)], axis=-1)
        np.testing.assert_array_equal(_np(ops.equalize(image)), expected)


def test_equalize_leaves_single_level_channels_alone():
    image = np.full((5, 5, 3), 42, np.uint8)
    np.testing.assert_array_equal(ops.equalize(image), image)


def test_grayscale_uses_pil_integer_weights():
    image = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], np.uint8)
    # (19595 R + 38470 G + 7471 B + 32768) >> 16
    np.testing.assert_array_equal(ops.grayscale(image), [[76, 150, 29, 18]])


def test_brightness_truncates_and_clips():
    image = _one_channel([[201, 200, 0]])
    np.testing.assert_array_equal(ops.brightness(image, 0.5)[0, :, 0], [100, 100, 0])
    np.testing.assert_array_equal(ops.brightness(image, 1.9)[0, :, 0], [255, 255, 0])
    np.testing.assert_array_equal(ops.brightness(image, 1.0), image)


def test_color_blends_with_grayscale():
    red = np.array([[[255, 0, 0]]], np.uint8)  # gray level 76
    np.testing.assert_array_equal(ops.color(red, 0.0), [[[76, 76, 76]]])
    # 76 + 1.5 * (255 - 76) = 344.5 -> 255; 76 + 1.5 * (0 - 76) = -38 -> 0.
    np.testing.assert_array_equal(ops.color(red, 1.5), [[[255, 0, 0]]])
    # 76 + 0.5 * (255 - 76) = 165.5 -> 165; 76 - 38 = 38.
    np.testing.assert_array_equal(ops.color(red, 0.5), [[[165, 38, 38]]])


def test_contrast_blends_with_rounded_mean_gray():
    image = _one_channel([[0, 10, 20, 31]])  # mean 15.25 -> 15
    out = _np(ops.contrast(image, 0.0))
    np.testing.assert_array_equal(out, np.full_like(out, 15))
    # 15 + 2 * (x - 15), clipped at 0: [0, 5, 25, 47]
    np.testing.assert_array_equal(_np(ops.contrast(image, 2.0))[0, :, 0], [0, 5, 25, 47])


def test_sharpness_degenerate_is_smooth_filter_with_copied_border():
    values = np.zeros((3, 3), np.uint8)
    values[1, 1] = 130
    image = _one_channel(values)
    # The SMOOTH kernel puts 5/13 on the centre: 130 * 5 / 13 = 50.
    expected = _one_channel(np.where(values > 0, 50, 0))
    np.testing.assert_array_equal(ops.sharpness(image, 0.0), expected)
    np.testing.assert_array_equal(ops.sharpness(image, 1.0), image)
    # Factor 2 extrapolates away from the blur: 50 + 2 * 80 = 210.
    assert int(ops.sharpness(image, 2.0)[1, 1, 0]) == 210


@pytest.mark.parametrize('interpolation', ['bicubic', 'bilinear'])
def test_rotate_90_on_square_image_is_rot90(interpolation):
    image = _random_image(3, (6, 6, 3))
    np.testing.assert_array_equal(
        ops.rotate(image, 90.0, FILL, interpolation), np.rot90(image, k=1)
    )


@pytest.mark.parametrize('interpolation', ['bicubic', 'bilinear'])
def test_rotate_90_on_wide_image_fills_uncovered_columns(interpolation):
    # H=4, W=6, centre (3, 2): output (x, y) samples input (x_in, y_in) =
    # (4 - y, x - 1); output columns 0 and 5 fall outside and take the fill.
    image = _random_image(4, (4, 6, 3))
    out = _np(ops.rotate(image, 90.0, FILL, interpolation))
    for y in range(4):
        for x in range(6):
            if 1 <= x <= 4:
                np.testing.assert_array_equal(out[y, x], image[x - 1, 4 - y])
            else:
                np.testing.assert_array_equal(out[y, x], FILL)


@pytest.mark.parametrize('interpolation', ['bicubic', 'bilinear'])
def test_translate_by_whole_pixels_shifts_and_fills(interpolation):
    image = _random_image(5, (5, 7, 3))
    out = _np(ops.translate_x(image, 2.0, FILL, interpolation))
    np.testing.assert_array_equal(out[:, :5], image[:, 2:])
    np.testing.assert_array_equal(out[:, 5:], np.broadcast_to(FILL, (5, 2, 3)))
    out = _np(ops.translate_y(image, -1.0, FILL, interpolation))
    np.testing.assert_array_equal(out[1:], image[:-1])
    np.testing.assert_array_equal(out[0], np.broadcast_to(FILL, (7, 3)))


@pytest.mark.parametrize('interpolation', ['bicubic', 'bilinear'])
def test_shear_x_by_two_is_an_integer_row_shift(interpolation):
    # PIL maps (x + .5, y + .5) -> (x + .5 + 2 (y + .5), y + .5), i.e. input
    # column x + 2y + 1, pixel-exact; columns past the edge take the fill.
    image = _random_image(6, (3, 8, 3))
    out = _np(ops.shear_x(image, 2.0, FILL, interpolation))
    for y in range(3):
        for x in range(8):
            source = x + 2 * y + 1
            expected = image[y, source] if source < 8 else FILL
            np.testing.assert_array_equal(out[y, x], expected)
    np.testing.assert_array_equal(ops.shear_y(image, 0.0, FILL, interpolation), image)


def test_affine_rejects_unknown_interpolation():
    with pytest.raises(ValueError, match='bicubic'):
        ops.affine(_random_image(0), (1, 0, 0, 0, 1, 0), FILL, 'nearest')


# --- timm's magnitude -> argument mappings, through `apply_op`.


def test_increasing_level_mappings():
    image = _random_image(7, (8, 8, 3))
    # level 9: bits = 4 - int(3.6) = 1; threshold = 256 - int(230.4) = 26.
    np.testing.assert_array_equal(
        randaugment.apply_op(image, 'PosterizeIncreasing', 9.0), image & 0x80
    )
    np.testing.assert_array_equal(
        randaugment.apply_op(image, 'SolarizeIncreasing', 9.0), ops.solarize(image, 26)
    )
    # level 9: add = int(99.0) = 99.
    np.testing.assert_array_equal(
        randaugment.apply_op(image, 'SolarizeAdd', 9.0), ops.solarize_add(image, 99)
    )
    # level 5, negative sign: factor 1 - 0.45 = 0.55.
    np.testing.assert_array_equal(
        randaugment.apply_op(image, 'BrightnessIncreasing', 5.0, -1.0), ops.brightness(image, 0.55)
    )
    # level 10 reaches the 0.1 floor for the negative direction.
    np.testing.assert_array_equal(
        randaugment.apply_op(image, 'ContrastIncreasing', 10.0, -1.0), ops.contrast(image, 0.1)
    )


def test_original_level_mappings():
    image = _random_image(8, (8, 8, 3))
    # Posterize level 5: int(2.0) = 2 bits; Solarize level 5: threshold 128.
    np.testing.assert_array_equal(randaugment.apply_op(image, 'Posterize', 5.0), image & 0xC0)
    np.testing.assert_array_equal(
        randaugment.apply_op(image, 'Solarize', 5.0), ops.solarize(image, 128)
    )
    # Enhance level 5: 0.5 * 1.8 + 0.1 = 1.0, the identity.
    np.testing.assert_array_equal(randaugment.apply_op(image, 'Sharpness', 5.0), image)


def test_geometric_level_mappings():
    image = _random_image(9, (10, 20, 3))
    # TranslateXRel level 10: 0.45 * width = 9 pixels.
    np.testing.assert_array_equal(
        randaugment.apply_op(image, 'TranslateXRel', 10.0, fill=FILL),
        ops.translate_x(image, 9.0, FILL),
    )
    np.testing.assert_array_equal(
        randaugment.apply_op(image, 'TranslateYRel', 10.0, -1.0, fill=FILL),
        ops.translate_y(image, -4.5, FILL),
    )
    # Rotate level 10 with a negative sign: -30 degrees; Shear: 0.3.
    np.testing.assert_array_equal(
        randaugment.apply_op(image, 'Rotate', 10.0, -1.0, fill=FILL), ops.rotate(image, -30.0, FILL)
    )
    np.testing.assert_array_equal(
        randaugment.apply_op(image, 'ShearY', 10.0, fill=FILL), ops.shear_y(image, 0.3, FILL)
    )


def test_ops_keep_shape_and_dtype_under_tf_function():
    image = tf.constant(_random_image(10, (12, 16, 3)))
    for name in set(randaugment.RAND_OPS) | set(randaugment.RAND_INCREASING_OPS):
        out = tf.function(lambda x, name=name: randaugment.apply_op(x, name, 7.0, -1.0, fill=FILL))(
            image
        )
        assert out.dtype == tf.uint8 and out.shape == (12, 16, 3), name
