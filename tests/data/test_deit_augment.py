"""DeiT train/eval preprocessing: shapes, ranges, determinism, crops, JPEGs."""

import io

import numpy as np
import pytest
import tensorflow as tf

from sparse_vit_jax.data import deit_augment as da
from sparse_vit_jax.data import pipeline

SIZE = 32  # small output side keeps the tests fast


def _jpeg(image, quality=95):
    return tf.io.encode_jpeg(image, quality=quality).numpy()


def _textured(height, width, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 / width, yy * 255 / height, 128 + 60 * np.sin(xx / 5.0)], axis=-1)
    return np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope='module')
def features():
    return {'image': tf.constant(_jpeg(_textured(60, 80))), 'label': tf.constant(7, tf.int64)}


@pytest.fixture(scope='module')
def train_fn():
    return tf.function(lambda f, seed, **kw: da.train_preprocess(f, seed, image_size=SIZE, **kw))


# --- random-resized-crop window -------------------------------------------


def test_crop_window_falls_back_to_timm_centre_crop():
    # scale > 1 never fits: timm falls back to a centre crop. A 100 x 500
    # image (ratio 5 > 4/3) keeps its height and gets w = round(100 * 4/3).
    y, x, h, w = da.sample_crop_window(tf.constant([0, 1]), 100, 500, scale=(2.0, 3.0))
    assert (int(y), int(x), int(h), int(w)) == (0, 183, 100, 133)
    # Portrait 500 x 100 (ratio 0.2 < 3/4): keep width, h = round(100 / .75).
    y, x, h, w = da.sample_crop_window(tf.constant([0, 1]), 500, 100, scale=(2.0, 3.0))
    assert (int(y), int(x), int(h), int(w)) == (183, 0, 133, 100)
    # Within the ratio range the fallback is the whole image.
    assert [
        int(v) for v in da.sample_crop_window(tf.constant([0, 1]), 375, 500, scale=(2.0, 3.0))
    ] == [0, 0, 375, 500]


def test_crop_windows_stay_inside_with_timm_area_and_ratio():
    seeds = np.stack([np.zeros(300), np.arange(300)], axis=1).astype(np.int64)
    windows = tf.data.Dataset.from_tensor_slices(seeds).map(
        lambda s: tf.stack(da.sample_crop_window(s, 375, 500))
    )
    windows = np.stack(list(windows.as_numpy_iterator()))
    y, x, h, w = windows.T
    assert (y >= 0).all() and (x >= 0).all()
    assert (y + h <= 375).all() and (x + w <= 500).all()
    area = h * w / (375 * 500)
    assert area.min() > 0.07 and area.max() <= 1.0
    assert 0.3 < np.median(area) < 0.7  # U(0.08, 1), minus non-fitting draws
    ratio = w / h
    assert ratio.min() > 0.74 and ratio.max() < 1.34


# --- train preprocessing --------------------------------------------------


def test_train_output_shape_dtype_label_and_range(features, train_fn):
    out = train_fn(features, tf.constant([1, 2], tf.int64), reprob=0.0)
    assert out['image'].shape == (SIZE, SIZE, 3)
    assert out['image'].dtype == tf.uint8  # normalized on device
    assert out['label'].dtype == tf.int32 and int(out['label']) == 7
    assert 'erase' not in out  # reprob 0: no boxes


def test_train_is_deterministic_per_seed(features, train_fn):
    a = train_fn(features, tf.constant([5, 9], tf.int64))['image']
    b = train_fn(features, tf.constant([5, 9], tf.int64))['image']
    np.testing.assert_array_equal(a, b)
    others = [train_fn(features, tf.constant([5, i], tf.int64))['image'] for i in range(10, 14)]
    assert all(not np.array_equal(a, o) for o in others)


def test_train_without_randaugment_or_erasing_is_crop_flip_only(features):
    plain = da.train_preprocess(
        features,
        tf.constant([0, 0]),
        image_size=SIZE,
        randaugment=None,
        reprob=0.0,
        hflip=0.0,
        scale=(2.0, 3.0),
    )  # forces the centre fallback
    # Fallback on a 60 x 80 image (ratio 4/3): the whole image, resized.
    decoded = tf.io.decode_jpeg(features['image'], dct_method='INTEGER_ACCURATE')
    expected = da.resize_bicubic_uint8(decoded, (SIZE, SIZE))
    np.testing.assert_array_equal(plain['image'], expected)
    flipped = da.train_preprocess(
        features,
        tf.constant([0, 0]),
        image_size=SIZE,
        randaugment=None,
        reprob=0.0,
        hflip=1.0,
        scale=(2.0, 3.0),
    )
    np.testing.assert_array_equal(flipped['image'], expected[:, ::-1])


def test_train_bilinear_geometry_option_runs(features):
    out = da.train_preprocess(
        features, tf.constant([3, 4]), image_size=SIZE, geometric_interpolation='bilinear'
    )
    assert out['image'].shape == (SIZE, SIZE, 3)


# --- eval preprocessing ---------------------------------------------------


def _ramps(height, width):
    """R encodes the column, G the row, as smooth 0..255 ramps."""
    yy, xx = np.mgrid[0:height, 0:width]
    return (
        np.stack(
            [xx * 255 / (width - 1), yy * 255 / (height - 1), np.full_like(xx, 128.0)], axis=-1
        )
        .round()
        .astype(np.uint8)
    )


@pytest.mark.parametrize('height,width', [(375, 500), (500, 375)])
def test_eval_resizes_short_side_and_keeps_the_centre(height, width):
    features = {
        'image': tf.constant(_jpeg(_ramps(height, width), 100)),
        'label': tf.constant(1, tf.int64),
    }
    out = da.eval_preprocess(features, image_size=224, crop_pct=0.875)
    assert out['image'].shape == (224, 224, 3)
    pixels = out['image'].numpy().astype(np.float64)
    # Short side -> 256, long side int(256 * 500 / 375) = 341; centre crop
    # offsets round(117 / 2) = 58 (half to even) and (256 - 224) / 2 = 16.
    scale = max(height, width) / 341
    long_offset, short_offset = 58, 16
    col_offset, row_offset = (
        (long_offset, short_offset) if width > height else (short_offset, long_offset)
    )
    col_scale = scale if width > height else 375 / 256
    row_scale = 375 / 256 if width > height else scale
    for j in (0, 111, 223):
        source_col = (col_offset + j + 0.5) * col_scale - 0.5
        assert abs(pixels[112, j, 0] - source_col * 255 / (width - 1)) < 3
    for i in (0, 111, 223):
        source_row = (row_offset + i + 0.5) * row_scale - 0.5
        assert abs(pixels[i, 112, 1] - source_row * 255 / (height - 1)) < 3
    # The output centre is the input centre.
    centre = pixels[111:113, 111:113].mean(axis=(0, 1))
    assert abs(centre[0] - 127.5) < 3 and abs(centre[1] - 127.5) < 3


def test_eval_is_deterministic_and_rejects_bad_crop_pct():
    features = {'image': tf.constant(_jpeg(_textured(40, 50))), 'label': tf.constant(0, tf.int64)}
    a = da.eval_preprocess(features, image_size=SIZE)['image']
    b = da.eval_preprocess(features, image_size=SIZE)['image']
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match='crop_pct'):
        da.eval_preprocess(features, crop_pct=1.2)


# --- undecodable JPEGs ----------------------------------------------------


def _bad_and_good_bytes():
    good = _jpeg(_textured(20, 30))
    rng = np.random.default_rng(0)
    try:
        from PIL import Image  # pylint: disable=g-import-not-at-top

        buffer = io.BytesIO()
        Image.fromarray(_textured(20, 30)).save(buffer, format='JPEG', progressive=True)
        progressive = buffer.getvalue()
    except ImportError:
        progressive = good
    return {
        'good': (good, True),
        'trailing bytes': (good + b'\x00' * 7, True),
        'progressive': (progressive, True),
        'grayscale': (tf.io.encode_jpeg(_textured(20, 30)[..., :1]).numpy(), True),
        'truncated by 2': (good[:-2], False),
        'truncated half': (good[: len(good) // 2], False),
        'header only': (good[:100], False),
        'empty': (b'', False),
        'garbage': (rng.bytes(len(good)), False),
        'soi then garbage': (b'\xff\xd8' + rng.bytes(len(good)), False),
        'png': (tf.io.encode_png(_textured(20, 30)).numpy(), False),
    }


def test_is_decodable_accepts_valid_and_rejects_corrupt_bytes():
    predicate = tf.function(lambda b: da.is_decodable({'image': b}))
    for name, (data, expected) in _bad_and_good_bytes().items():
        assert bool(predicate(tf.constant(data))) == expected, name
        if expected:  # accepted bytes really decode
            tf.io.decode_jpeg(data, channels=3)


def test_drop_invalid_drops_and_counts_in_a_dataset():
    cases = _bad_and_good_bytes()
    data = [d for d, _ in cases.values()]
    n_bad = sum(not ok for _, ok in cases.values())
    counter = tf.Variable(0, dtype=tf.int64)
    ds = pipeline.drop_invalid(
        tf.data.Dataset.from_tensor_slices({'image': data}), da.is_decodable, counter
    )
    assert len(list(ds.as_numpy_iterator())) == len(data) - n_bad
    assert int(counter.numpy()) == n_bad
