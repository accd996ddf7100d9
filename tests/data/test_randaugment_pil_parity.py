"""The TF ops against the PIL calls timm makes (skipped without Pillow).

timm's RandAugment is PIL; this checks that our TF port gives the same
pixels. Point and enhance ops must match exactly; geometric ops may differ by
1 grey level on a few pixels (float32 vs PIL's float64 interpolation).
"""

import numpy as np
import pytest

from sparse_vit_jax.data import randaugment_ops as ops

Image = pytest.importorskip('PIL.Image')
ImageEnhance = pytest.importorskip('PIL.ImageEnhance')
ImageOps = pytest.importorskip('PIL.ImageOps')

FILL = (124, 116, 104)


@pytest.fixture(scope='module')
def images():
    rng = np.random.default_rng(0)
    return [
        rng.integers(lo, hi, (13, 17, 3)).astype(np.uint8)
        for lo, hi in [(0, 256), (40, 200), (90, 120)]
    ]


def _assert_same(ours, reference):
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(reference))


def test_point_ops_match_pil(images):
    for image in images:
        pil = Image.fromarray(image)
        _assert_same(ops.invert(image), ImageOps.invert(pil))
        _assert_same(ops.auto_contrast(image), ImageOps.autocontrast(pil))
        _assert_same(ops.equalize(image), ImageOps.equalize(pil))
        for bits in (1, 3, 7):
            _assert_same(ops.posterize(image, bits), ImageOps.posterize(pil, bits))
        for threshold in (26, 128, 200):
            _assert_same(ops.solarize(image, threshold), ImageOps.solarize(pil, threshold))


def test_enhance_ops_match_pil(images):
    enhancers = {
        ops.brightness: ImageEnhance.Brightness,
        ops.color: ImageEnhance.Color,
        ops.contrast: ImageEnhance.Contrast,
        ops.sharpness: ImageEnhance.Sharpness,
    }
    for image in images:
        pil = Image.fromarray(image)
        for ours, theirs in enhancers.items():
            for factor in (0.1, 0.55, 1.37, 1.9):
                _assert_same(ours(image, factor), theirs(pil).enhance(factor))


@pytest.mark.parametrize(
    'interpolation,resample', [('bicubic', 'BICUBIC'), ('bilinear', 'BILINEAR')]
)
def test_geometric_ops_match_pil_within_one_level(images, interpolation, resample):
    resample = getattr(Image, resample)
    for image in images:
        pil = Image.fromarray(image)
        width, height = pil.size
        cases = [
            (
                ops.rotate(image, 23.7, FILL, interpolation),
                pil.rotate(23.7, resample=resample, fillcolor=FILL),
            ),
            (
                ops.shear_x(image, -0.27, FILL, interpolation),
                pil.transform(
                    pil.size,
                    Image.AFFINE,
                    (1, -0.27, 0, 0, 1, 0),
                    resample=resample,
                    fillcolor=FILL,
                ),
            ),
            (
                ops.shear_y(image, 0.3, FILL, interpolation),
                pil.transform(
                    pil.size, Image.AFFINE, (1, 0, 0, 0.3, 1, 0), resample=resample, fillcolor=FILL
                ),
            ),
            (
                ops.translate_x(image, 0.405 * width, FILL, interpolation),
                pil.transform(
                    pil.size,
                    Image.AFFINE,
                    (1, 0, 0.405 * width, 0, 1, 0),
                    resample=resample,
                    fillcolor=FILL,
                ),
            ),
            (
                ops.translate_y(image, -0.2 * height, FILL, interpolation),
                pil.transform(
                    pil.size,
                    Image.AFFINE,
                    (1, 0, 0, 0, 1, -0.2 * height),
                    resample=resample,
                    fillcolor=FILL,
                ),
            ),
        ]
        for ours, reference in cases:
            diff = np.abs(np.asarray(ours, np.int64) - np.asarray(reference))
            assert diff.max() <= 1
            assert np.mean(diff > 0) < 0.1
