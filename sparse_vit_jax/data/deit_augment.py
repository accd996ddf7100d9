"""DeiT train/eval preprocessing for one TFDS example (timm 0.3.2 semantics).

The generic pipeline reads TFDS with ``decoders={'image':
tfds.decode.SkipDecoding()}`` and maps ``train_preprocess(features, seed)``
(or ``eval_preprocess(features)``) over the examples. `features['image']` is
the encoded JPEG (or PNG: image folders mix them); `seed` is an int [2] tensor
unique per (run, epoch, example). Every random choice is a stateless function
of `seed`, so a restarted run reproduces its images bit for bit.

Train (timm `transforms_imagenet_train` as DeiT configures it):
  RandomResizedCropAndInterpolation(224, scale, ratio, bicubic)
  -> RandomHorizontalFlip(0.5) -> RandAugment('rand-m9-mstd0.5-inc1')
  -> ToTensor -> Normalize(mean, std) -> RandomErasing(0.25, 'pixel', 1).
Eval (DeiT `build_transform(is_train=False)`):
  Resize(shorter side -> floor(224 / 0.875) = 256, bicubic)
  -> CenterCrop(224) -> ToTensor -> Normalize(mean, std).

Images leave the host as uint8: ToTensor + Normalize run on device inside the
jitted step (`device_input.py`), and so does RandomErasing's fill; the host
draws the erasing boxes ('erase' in a train example).

Both decode with libjpeg's accurate integer DCT, as PIL does, and resize with
antialiased bicubic filtering (PIL's behaviour when shrinking), rounding to
uint8 in between like PIL images.

Undecodable images raise; filter them out first with `jpeg_check`.
"""

import math

import tensorflow as tf

from sparse_vit_jax.data import jpeg_check
from sparse_vit_jax.data import randaugment as randaugment_lib
from sparse_vit_jax.data import random_erasing as erasing

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RandAugment's default fill colour

# Re-exported so the pipeline needs a single import for the DeiT recipe.
is_decodable = jpeg_check.is_decodable

_DCT_METHOD = 'INTEGER_ACCURATE'  # libjpeg's ISLOW, what PIL decodes with.


def sample_crop_window(
    seed, height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), max_attempts=10
):
    """timm `RandomResizedCropAndInterpolation.get_params` as (y, x, h, w).

    Up to 10 attempts: area fraction ~ U(scale), aspect (w / h) ~
    exp(U(log ratio)), w = round(sqrt(area * aspect)), h = round(sqrt(area /
    aspect)); the first attempt with w <= W and h <= H is placed at a uniform
    position. If none fits, fall back to a centre crop of the whole image,
    narrowed to the nearest allowed aspect ratio when the image is outside
    `ratio`. (A window is at least 1 pixel wide, which only matters for images
    a few pixels across.)
    """
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    area_seed, ratio_seed, y_seed, x_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=4)
    )
    h_f, w_f = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    # All attempts drawn at once; the first fit has timm's distribution.
    area = (
        h_f
        * w_f
        * tf.random.stateless_uniform(
            [max_attempts], area_seed, scale[0], scale[1], dtype=tf.float64
        )
    )
    aspect = tf.exp(
        tf.random.stateless_uniform(
            [max_attempts], ratio_seed, math.log(ratio[0]), math.log(ratio[1]), dtype=tf.float64
        )
    )
    # tf.round rounds half to even, like Python 3's round().
    widths = tf.maximum(tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32), 1)
    heights = tf.maximum(tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32), 1)
    fits = (widths <= width) & (heights <= height)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)

    # Fallback: the whole image, trimmed to the closest allowed aspect ratio.
    in_ratio = w_f / h_f
    min_ratio, max_ratio = min(ratio), max(ratio)
    fallback_w = tf.where(in_ratio > max_ratio, tf.cast(tf.round(h_f * max_ratio), tf.int32), width)
    fallback_h = tf.where(
        in_ratio < min_ratio, tf.cast(tf.round(w_f / min_ratio), tf.int32), height
    )

    found = tf.reduce_any(fits)
    crop_h = tf.where(found, heights[first], fallback_h)
    crop_w = tf.where(found, widths[first], fallback_w)
    random_y = tf.random.stateless_uniform(
        [], y_seed, 0, tf.maximum(height - crop_h + 1, 1), dtype=tf.int32
    )
    random_x = tf.random.stateless_uniform(
        [], x_seed, 0, tf.maximum(width - crop_w + 1, 1), dtype=tf.int32
    )
    y = tf.where(found, random_y, (height - crop_h) // 2)
    x = tf.where(found, random_x, (width - crop_w) // 2)
    return y, x, crop_h, crop_w


def resize_bicubic_uint8(image, size):
    """Antialiased bicubic resize to `size` (h, w), rounded to uint8 like PIL."""
    resized = tf.image.resize(image, size, method='bicubic', antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def _label(features):
    return tf.cast(features['label'], tf.int32)


def decode_image(encoded):
    """JPEG (libjpeg's accurate DCT, as PIL) or PNG bytes -> uint8 RGB [H, W, 3]."""
    return tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method=_DCT_METHOD),
        lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False),
    )


def _decode_crop(encoded, seed, scale, ratio):
    """The random-resized-crop window of an encoded image, decoded: for JPEGs only the crop is
    decoded (cheaper); other formats are decoded whole, then cropped."""

    def jpeg():
        shape = tf.io.extract_jpeg_shape(encoded)
        y, x, h, w = sample_crop_window(seed, shape[0], shape[1], scale, ratio)
        return tf.io.decode_and_crop_jpeg(
            encoded, tf.stack([y, x, h, w]), channels=3, dct_method=_DCT_METHOD
        )

    def other():
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        shape = tf.shape(image)
        y, x, h, w = sample_crop_window(seed, shape[0], shape[1], scale, ratio)
        return image[y : y + h, x : x + w]

    return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def _to_channels(image, channels):
    """uint8 RGB -> `channels` (1: luma with ITU-R 601 weights, as PIL's convert('L'))."""
    if channels == 3:
        return image
    if channels == 1:
        return tf.image.rgb_to_grayscale(image)
    raise ValueError(f'the DeiT recipe makes 1- or 3-channel images, not {channels}')


def train_preprocess(
    features,
    seed,
    *,
    image_size=224,
    scale=(0.08, 1.0),
    ratio=(3 / 4, 4 / 3),
    hflip=0.5,
    randaugment='rand-m9-mstd0.5-inc1',
    reprob=0.25,
    recount=1,
    mean=IMAGENET_MEAN,
    geometric_interpolation='bicubic',
    channels=3,
):
    """DeiT training augmentation of one example.

    Args:
      features: dict with 'image' (encoded JPEG or PNG string) and 'label' (int).
      seed: int32/int64 tensor [2]; the output is a pure function of it.
      image_size: output side length.
      scale, ratio: RandomResizedCrop area-fraction and aspect (w/h) ranges.
      hflip: horizontal flip probability.
      randaugment: timm RandAugment spec string, a `RandAugmentConfig`, or
        None to skip RandAugment.
      reprob, recount: RandomErasing probability (0 disables) and maximum
        rectangle count (timm draws 1..recount); the boxes are drawn here, the
        device fills them (its DeviceInput.erase_mode).
      mean: the dataset's mean of [0, 1] pixels; the RandAugment fill colour is
        derived from it as timm does (images are normalized on device).
      geometric_interpolation: 'bicubic' (timm/PIL) or 'bilinear' (faster) for
        RandAugment's rotate/shear/translate.
      channels: 3 (RGB), or 1 (augmented in RGB, then converted to luma).

    Returns:
      {'image': uint8 [image_size, image_size, channels], 'label': int32 []}, and
      'erase': int32 [recount, 4] boxes (top, left, height, width; zero-size
      when not erased) when reprob > 0.
    """
    if isinstance(randaugment, str):
        randaugment = randaugment_lib.parse_randaugment(randaugment)
    crop_seed, flip_seed, augment_seed, erase_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=4)
    )
    image = _decode_crop(features['image'], crop_seed, scale, ratio)
    image = resize_bicubic_uint8(image, (image_size, image_size))
    if hflip > 0:
        flip = tf.random.stateless_uniform([], flip_seed) < hflip
        image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
    if randaugment is not None:
        image = randaugment_lib.rand_augment(
            image,
            augment_seed,
            randaugment,
            # Augmented in RGB: a grayscale run's one mean fills all three channels.
            fill=randaugment_lib.fill_from_mean(tuple(mean) * (3 // len(mean))),
            interpolation=geometric_interpolation,
        )
    image = tf.ensure_shape(_to_channels(image, channels), [image_size, image_size, channels])
    example = {'image': image, 'label': _label(features)}
    if reprob > 0:
        # timm builds RandomErasing(max_count=recount): 1..recount rectangles.
        example['erase'] = erasing.erase_boxes(
            erase_seed, image_size, image_size, probability=reprob, max_count=recount
        )
    return example


def eval_preprocess(features, *, image_size=224, crop_pct=0.875, channels=3):
    """DeiT evaluation preprocessing of one example (deterministic), uint8 out.

    Resizes the shorter side to floor(image_size / crop_pct) with the longer
    side int(size * long / short) (torchvision `Resize(int)`) and centre-crops
    image_size with offsets round((side - image_size) / 2); the device
    normalises.
    """
    if not 0 < crop_pct <= 1:
        raise ValueError(f'crop_pct must be in (0, 1], got {crop_pct}')
    resize_to = int(math.floor(image_size / crop_pct))
    image = decode_image(features['image'])
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
    short = tf.minimum(height, width)
    # torchvision truncates size * long / short with int().
    new_h = tf.cast(tf.floor(resize_to * height / short), tf.int32)
    new_w = tf.cast(tf.floor(resize_to * width / short), tf.int32)
    image = resize_bicubic_uint8(image, tf.stack([new_h, new_w]))
    # torchvision CenterCrop: int(round((side - crop) / 2)), half to even.
    top = tf.cast(tf.round(tf.cast(new_h - image_size, tf.float64) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - image_size, tf.float64) / 2.0), tf.int32)
    image = tf.image.crop_to_bounding_box(image, top, left, image_size, image_size)
    image = tf.ensure_shape(_to_channels(image, channels), [image_size, image_size, channels])
    return {'image': image, 'label': _label(features)}
