"""timm RandomErasing's boxes for tf.data, driven by stateless seeds.

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

The host draws the boxes here (every choice above but the fill); images stay
uint8 on the host, and the device fills the boxes after normalising
(`device_input.fill_boxes`).
"""

import math

import tensorflow as tf

from sparse_vit_jax.data.device_input import ERASE_MAX_AREA


def _box(seed, height, width, area, min_area, max_area, log_aspect, max_attempts):
    """One rectangle (top, left, h, w) with timm's attempt loop; zero size when none fits."""
    # Five streams, the fifth once the fill's (now drawn on device): the boxes of a seed are
    # those the host erased before images stayed uint8.
    area_seed, aspect_seed, top_seed, left_seed, _ = tf.unstack(
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
    box_h = tf.where(found, heights[first], 0)
    box_w = tf.where(found, widths[first], 0)
    top = tf.random.stateless_uniform([], top_seed, 0, height - box_h + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], left_seed, 0, width - box_w + 1, dtype=tf.int32)
    return tf.stack([top, left, box_h, box_w])


def erase_boxes(
    seed,
    height,
    width,
    *,
    probability=0.25,
    min_area=0.02,
    max_area=ERASE_MAX_AREA,
    min_aspect=0.3,
    max_aspect=None,
    min_count=1,
    max_count=None,
    max_attempts=10,
):
    """timm RandomErasing's rectangles for one height x width image.

    Args:
      seed: int32/int64 tensor [2]; the output is a pure function of it.
      height, width: the image's size (Python ints or int32 scalars).
      probability: chance that the image is erased at all.
      min_area, max_area: bounds of the erased fraction of the image (split
        evenly between rectangles when count > 1).
      min_aspect, max_aspect: aspect (h / w) range, sampled log-uniformly;
        max_aspect defaults to 1 / min_aspect.
      min_count, max_count: number of rectangles (max_count defaults to
        min_count).
      max_attempts: tries per rectangle before giving up (timm: 10).

    Returns:
      int32 [max_count, 4]: (top, left, height, width) per rectangle, in the
      order timm erases them; rectangles not drawn have zero size.
    """
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
    height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
    area = tf.cast(height * width, tf.float64) / tf.cast(count, tf.float64)
    rect_seeds = tf.random.experimental.stateless_split(rect_seed, num=max_count)
    do_erase = tf.random.stateless_uniform([], gate_seed) < probability
    boxes = []
    for i in range(max_count):
        box = _box(rect_seeds[i], height, width, area, min_area, max_area, log_aspect, max_attempts)
        boxes.append(tf.where(do_erase & (i < count), box, tf.zeros_like(box)))
    return tf.stack(boxes)
