"""timm RandomErasing for tf.data, driven by stateless seeds.

timm 0.3.2 `RandomErasing` (DeiT: probability 0.25, mode 'pixel', count 1),
applied after normalisation:

* with probability `probability` the image is erased, else returned as is;
* the number of rectangles is `min_count` (or uniform in
  [min_count, max_count] when they differ); each gets area
  uniform(min_area, max_area) * H * W / count;
* each rectangle tries up to 10 times: aspect = exp(uniform(log(min_aspect),
  log(max_aspect))) with max_aspect = 1 / min_aspect by default,
  h = round(sqrt(area * aspect)), w = round(sqrt(area / aspect)); the first
  attempt with w < W and h < H is placed at a uniform top-left corner
  (top in [0, H - h], left in [0, W - w]); if no attempt fits, nothing is
  erased;
* the rectangle is filled with per-pixel standard normals ('pixel'), one
  normal per channel ('rand') or zeros ('const'), in normalised space.
"""

import math

import tensorflow as tf

_MODES = ('pixel', 'rand', 'const')


def _erase_once(image, seed, area, min_area, max_area, log_aspect, mode, max_attempts):
    """Draws one rectangle with timm's attempt loop and fills it."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    channels = image.shape[-1]  # static: 3, or 1 for grayscale
    area_seed, aspect_seed, top_seed, left_seed, fill_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=5)
    )
    # All attempts are drawn at once; taking the first that fits is the same
    # distribution as timm's sequential loop.
    target = area * tf.random.stateless_uniform(
        [max_attempts], area_seed, min_area, max_area, dtype=tf.float64
    )
    aspect = tf.exp(
        tf.random.stateless_uniform(
            [max_attempts], aspect_seed, log_aspect[0], log_aspect[1], dtype=tf.float64
        )
    )
    # tf.round rounds half to even, like Python 3's round().
    heights = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
    widths = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
    fits = (heights < height) & (widths < width)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    found = tf.reduce_any(fits)
    # An empty box when no attempt fits: nothing is erased.
    box_h = tf.where(found, heights[first], 0)
    box_w = tf.where(found, widths[first], 0)
    top = tf.random.stateless_uniform([], top_seed, 0, height - box_h + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], left_seed, 0, width - box_w + 1, dtype=tf.int32)
    if mode == 'pixel':
        # Draw noise for the box only (on average ~1/6 of the image).
        patch = tf.random.stateless_normal(
            tf.stack([box_h, box_w, channels]), fill_seed, dtype=image.dtype
        )
    elif mode == 'rand':
        patch = tf.random.stateless_normal(
            [1, 1, channels], fill_seed, dtype=image.dtype
        ) * tf.ones(tf.stack([box_h, box_w, 1]), image.dtype)
    else:
        patch = tf.zeros(tf.stack([box_h, box_w, channels]), image.dtype)
    # Splice the patch in: one copy of the image, no full-size mask.
    band = image[top : top + box_h]
    band = tf.concat([band[:, :left], patch, band[:, left + box_w :]], axis=1)
    return tf.concat([image[:top], band, image[top + box_h :]], axis=0)


def random_erasing(
    image,
    seed,
    *,
    probability=0.25,
    min_area=0.02,
    max_area=1 / 3,
    min_aspect=0.3,
    max_aspect=None,
    mode='pixel',
    min_count=1,
    max_count=None,
    max_attempts=10,
):
    """timm RandomErasing on a normalised float [H, W, C] image.

    Args:
      image: float tensor [H, W, C] (C static), already normalised.
      seed: int32/int64 tensor [2]; the output is a pure function of it.
      probability: chance that the image is erased at all.
      min_area, max_area: bounds of the erased fraction of the image (split
        evenly between rectangles when count > 1).
      min_aspect, max_aspect: aspect (h / w) range, sampled log-uniformly;
        max_aspect defaults to 1 / min_aspect.
      mode: 'pixel', 'rand' or 'const' (see module docstring).
      min_count, max_count: number of rectangles (max_count defaults to
        min_count).
      max_attempts: tries per rectangle before giving up (timm: 10).
    """
    if mode not in _MODES:
        raise ValueError(f'random erasing mode must be one of {_MODES}, got {mode!r}')
    max_count = max_count or min_count
    if not 1 <= min_count <= max_count:
        raise ValueError(f'need 1 <= min_count <= max_count, got {min_count}, {max_count}')
    max_aspect = max_aspect or 1.0 / min_aspect
    log_aspect = (math.log(min_aspect), math.log(max_aspect))
    gate_seed, count_seed, rect_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, num=3)
    )
    if min_count == max_count:
        count = tf.constant(min_count, tf.int32)
    else:
        count = tf.random.stateless_uniform(
            [], count_seed, min_count, max_count + 1, dtype=tf.int32
        )
    shape = tf.cast(tf.shape(image), tf.float64)
    area = shape[0] * shape[1] / tf.cast(count, tf.float64)
    rect_seeds = tf.random.experimental.stateless_split(rect_seed, num=max_count)

    def erase():
        erased = image
        for i in range(max_count):
            candidate = _erase_once(
                erased, rect_seeds[i], area, min_area, max_area, log_aspect, mode, max_attempts
            )
            erased = tf.where(i < count, candidate, erased)
        erased.set_shape(image.shape)
        return erased

    # tf.cond skips the noise generation for the 75% of images left alone.
    do_erase = tf.random.stateless_uniform([], gate_seed) < probability
    return tf.cond(do_erase, erase, lambda: image)
