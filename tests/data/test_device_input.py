"""uint8 images normalized on device: the same float32 numbers the host made before; random
erasing's boxes filled with N(0, 1) noise in normalized space, nothing else touched."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

from sparse_vit_jax.data import device_input
from sparse_vit_jax.data.device_input import DeviceInput, fill_boxes, model_images

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
FASHION = ((0.2860,), (0.3530,))


def _host_normalize(image, mean, std):
    """What the host pipeline did before images stayed uint8 (ToTensor + Normalize in TF)."""
    image = tf.cast(image, tf.float32) / 255.0
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


# XLA multiplies by the reciprocal of a constant divisor (255, std) where TF divides: the values
# differ in the last bits (measured: at most 7.2e-7, on values up to 2.7 in magnitude).
ROUNDING = 1e-6


@pytest.mark.parametrize('mean,std', [IMAGENET, FASHION])
def test_normalize_on_device_equals_the_host_float32_within_rounding(mean, std):
    channels = len(mean)
    # Every uint8 value in every channel, in an image batch.
    values = np.arange(256, dtype=np.uint8)
    images = np.broadcast_to(values[None, :, None, None], (2, 256, 3, channels)).copy()
    on_device = jax.jit(DeviceInput(mean, std).normalize)(images)
    assert on_device.dtype == jnp.float32
    host = _host_normalize(images, mean, std).numpy()
    np.testing.assert_allclose(on_device, host, rtol=0, atol=ROUNDING)


def test_pipeline_batches_are_uint8_and_normalize_to_the_host_float32(tiny_config):
    from sparse_vit_jax import data as data_lib

    config = tiny_config()
    train, evaluation = data_lib.make_inputs(config)
    batch = next(train.batches())
    assert batch['image'].dtype == np.uint8 and 'erase' not in batch  # no erasing: Fashion
    eval_batch = next(evaluation.batches())
    assert eval_batch['image'].dtype == np.uint8
    inputs = DeviceInput.from_config(config)
    np.testing.assert_allclose(
        jax.jit(inputs.images)(eval_batch),
        _host_normalize(eval_batch['image'], config.data.mean, config.data.std).numpy(),
        rtol=0,
        atol=ROUNDING,
    )


def _erased(boxes, mode='pixel', shape=(4, 24, 32, 3), seed=0):
    images = jnp.full(shape, 5.0)  # far from any N(0, 1) draw
    boxes = jnp.asarray(boxes, jnp.int32)
    return np.asarray(
        jax.jit(fill_boxes, static_argnums=3)(jax.random.key(seed), images, boxes, mode)
    )


def test_pixel_fill_is_exactly_the_boxes_with_standard_normals():
    boxes = [[[2, 3, 10, 7]], [[0, 0, 0, 0]], [[0, 0, 23, 31]], [[20, 1, 4, 30]]]
    out = _erased(boxes)
    for image, ((top, left, h, w),) in zip(out, boxes):
        inside = np.zeros(image.shape[:2], bool)
        inside[top : top + h, left : left + w] = True
        assert (image[~inside] == 5.0).all()  # untouched outside
        assert (image[inside] != 5.0).all()  # every pixel and channel inside drawn
    values = out[out != 5.0]
    assert values.size == 3 * (10 * 7 + 23 * 31 + 4 * 30)
    # Standard normal: Kolmogorov-Smirnov against N(0, 1); a draw per pixel and channel (from
    # 2^23 uniform levels, so a repeat or two among thousands is chance).
    assert scipy.stats.kstest(values, 'norm').pvalue > 1e-3
    assert len(np.unique(values)) > 0.99 * values.size


def test_rand_and_const_fills_and_overlapping_boxes():
    boxes = [[[0, 0, 10, 10], [5, 5, 10, 10]]] * 2  # the second box overlaps the first
    rand = _erased(boxes, 'rand', shape=(2, 24, 32, 3))
    for image in rand:
        first = image[0:5, 0:10].reshape(-1, 3)
        second = image[5:15, 5:15].reshape(-1, 3)
        assert len(np.unique(first, axis=0)) == 1 and len(np.unique(second, axis=0)) == 1
        assert not np.array_equal(first[0], second[0])  # the later box wins where they overlap
    const = _erased(boxes, 'const', shape=(2, 24, 32, 3))
    assert set(np.unique(const)) == {0.0, 5.0} and (const[:, 5:15, 5:15] == 0).all()
    with pytest.raises(ValueError, match='mode'):
        _erased(boxes, 'zeros')


def test_deit_train_examples_carry_boxes_the_device_fills():
    from sparse_vit_jax.data import deit_augment

    encoded = tf.io.encode_jpeg(np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8))
    features = {'image': encoded, 'label': tf.constant(3, tf.int64)}
    seeds = [tf.constant([1, i]) for i in range(40)]
    outs = [
        deit_augment.train_preprocess(features, s, image_size=16, randaugment=None, reprob=0.5)
        for s in seeds
    ]
    batch = {k: np.stack([o[k].numpy() for o in outs]) for k in outs[0]}
    assert batch['image'].dtype == np.uint8 and batch['erase'].shape == (40, 1, 4)
    erased = batch['erase'][:, 0, 2] > 0
    assert 10 <= erased.sum() <= 30  # reprob 0.5
    inputs = DeviceInput(*IMAGENET)
    images = np.asarray(jax.jit(inputs.images)(batch, jax.random.key(0)))
    plain = np.asarray(jax.jit(inputs.normalize)(batch['image']))
    changed = (np.abs(images - plain) > ROUNDING).any(axis=-1)  # fused differently: rounding
    masks = np.asarray(device_input.box_masks(batch['erase'], 16, 16)).any(axis=1)
    np.testing.assert_array_equal(changed, masks)
    assert changed[~erased].sum() == 0


def test_uint8_images_need_a_device_input():
    batch = {'image': jnp.zeros((2, 4, 4, 3), jnp.uint8)}
    with pytest.raises(ValueError, match='DeviceInput'):
        model_images(batch, None)
    floats = {'image': jnp.ones((2, 4, 4, 3))}
    assert model_images(floats, None) is floats['image']
    with pytest.raises(ValueError, match='key'):
        DeviceInput(*IMAGENET).images({**batch, 'erase': jnp.zeros((2, 1, 4), jnp.int32)})


def _covered(boxes, height, width):
    """bool [B, height, width]: the pixels some box of each image covers."""
    covered = np.zeros((len(boxes), height, width), bool)
    for image, image_boxes in zip(covered, boxes):
        for top, left, box_h, box_w in image_boxes:
            image[top : top + box_h, left : left + box_w] = True
    return covered


def test_pixel_fill_draws_the_bound_and_hands_normals_out_in_raster_order():
    # Two overlapping boxes per image (the union is filled once), and an image without boxes.
    boxes = np.array(
        [
            [[2, 3, 6, 7], [4, 8, 5, 9]],
            [[0, 0, 0, 0], [0, 0, 0, 0]],
            [[10, 20, 9, 11], [0, 0, 0, 0]],
        ],
        np.int32,
    )
    images = jnp.full((3, 24, 32, 3), 5.0)
    key = jax.random.key(3)
    fill = jax.jit(fill_boxes, static_argnums=(3, 4))
    out = np.asarray(fill(key, images, jnp.asarray(boxes), 'pixel', device_input.ERASE_MAX_AREA))
    pixels = device_input.erased_pixels_bound(24, 32, 2, device_input.ERASE_MAX_AREA)
    assert pixels == 24 * 32 // 3 + 56  # a third of the image plus the rounding margin
    drawn = np.asarray(jax.random.normal(key, (3, pixels, 3)))
    covered = _covered(boxes, 24, 32)
    for image, inside, normals in zip(out, covered, drawn):
        assert (image[~inside] == 5.0).all()
        # Row-major boolean indexing is raster order: the k-th covered pixel has the k-th draw.
        np.testing.assert_array_equal(image[inside], normals[: inside.sum()])


def test_pixel_fill_bound_covers_every_box_the_recipe_draws():
    from sparse_vit_jax.data import random_erasing

    area = device_input.ERASE_MAX_AREA
    # Every box side timm's rounding makes from the largest target, over the aspect range.
    for height, width, count in [(224, 224, 1), (24, 32, 1), (24, 32, 3), (17, 9, 2)]:
        target = area * height * width / count
        largest = 0
        for aspect in np.exp(np.linspace(np.log(0.3), np.log(1 / 0.3), 20001)):
            h, w = round(np.sqrt(target * aspect)), round(np.sqrt(target / aspect))
            if h < height and w < width:
                largest = max(largest, h * w)
        assert target < largest  # rounding does exceed the target area
        assert count * largest <= device_input.erased_pixels_bound(height, width, count, area)
    # The real draws at the largest target: their union stays inside the bound.
    bound = device_input.erased_pixels_bound(24, 32, 3, area)
    for seed in range(20):
        boxes = random_erasing.erase_boxes(
            tf.constant([seed, 1]), 24, 32, probability=1.0, min_area=area, min_count=3
        ).numpy()
        assert (boxes[:, 2] * boxes[:, 3]).sum() <= bound
    assert device_input.erased_pixels_bound(224, 224, 1, area) / (224 * 224) < 0.34


def test_pixel_fill_of_recipe_boxes_is_independent_standard_normals():
    from sparse_vit_jax.data import random_erasing

    # 64 images, each erased (up to 2 boxes) as the recipe draws them, filled through DeviceInput.
    height = width = 32
    draw = tf.function(
        lambda seed: random_erasing.erase_boxes(seed, height, width, probability=1.0, max_count=2)
    )
    boxes = np.stack([draw(tf.constant([7, i])).numpy() for i in range(64)])
    batch = {'image': jnp.full((64, height, width, 3), 128, jnp.uint8), 'erase': jnp.asarray(boxes)}
    inputs = DeviceInput(*IMAGENET)
    out = np.asarray(jax.jit(inputs.images)(batch, jax.random.key(1)))
    plain = np.asarray(inputs.normalize(batch['image'][:1]))[0]
    covered = _covered(boxes, height, width)
    values = []
    for image, inside in zip(out, covered):
        np.testing.assert_array_equal(image[~inside], np.broadcast_to(plain, image.shape)[~inside])
        erased = image[inside]  # [pixels, 3]
        assert (erased != plain[0, 0]).all()
        # Every erased pixel its own draw (single float32 normals may repeat by chance: 2^23
        # uniform levels; three channels at once do not).
        assert len(np.unique(erased, axis=0)) == len(erased)
        values.append(erased.ravel())
    values = np.concatenate(values)
    assert values.size > 30_000
    assert abs(values.mean()) < 0.02 and abs(values.std() - 1) < 0.02
    assert scipy.stats.kstest(values, 'norm').pvalue > 1e-3
