"""RandAugment image operations in TensorFlow, with the pixel semantics of PIL.

timm 0.3.2 applies RandAugment to PIL images, so each op here reproduces what
the corresponding PIL call does to a uint8 RGB image:

* point ops (invert, posterize, solarize, solarize_add, auto_contrast,
  equalize) use PIL's integer or float64 arithmetic, so they agree with PIL
  bit for bit;
* the `ImageEnhance` ops (brightness, color, contrast, sharpness) are
  `Image.blend(degenerate, image, factor)`: float32 arithmetic truncated to
  uint8, clipped when the factor extrapolates (factor > 1);
* geometric ops (rotate, shear, translate) are PIL affine transforms: each
  output pixel centre is mapped to the input, pixels whose source lies outside
  the image get the fill colour, and sources inside are interpolated with
  clamped neighbours. timm with DeiT's ``interpolation='bicubic'`` uses PIL's
  bicubic sampling, which we reproduce with gathers; 'bilinear' (TF's fused
  projective-transform kernel) is offered as a faster approximation.

Every function takes and returns a uint8 tensor of shape [H, W, 3]; scalar
parameters may be Python numbers or scalar tensors.
"""

import math

import tensorflow as tf

# PIL's ImageFilter.SMOOTH kernel (normalised by 13), used by Sharpness.
_SMOOTH_KERNEL = ((1.0, 1.0, 1.0), (1.0, 5.0, 1.0), (1.0, 1.0, 1.0))
_SMOOTH_SCALE = 13.0


def _apply_channel_luts(image, luts):
    """Maps channel c of every pixel through luts[c] ([3, 256] table)."""
    # Offset each channel into its own table so one gather serves all three.
    index = tf.cast(image, tf.int32) + tf.range(3, dtype=tf.int32) * 256
    return tf.gather(tf.cast(tf.reshape(luts, [-1]), tf.uint8), index)


def invert(image):
    """PIL ImageOps.invert: 255 - x."""
    return 255 - image


def posterize(image, bits):
    """PIL ImageOps.posterize: keep the `bits` most significant bits (0..8)."""
    bits = tf.clip_by_value(tf.cast(bits, tf.int32), 0, 8)
    mask = 255 - (tf.bitwise.left_shift(1, 8 - bits) - 1)
    return tf.bitwise.bitwise_and(image, tf.cast(mask, tf.uint8))


def solarize(image, threshold):
    """PIL ImageOps.solarize: invert pixels >= threshold, keep the others."""
    pixels = tf.cast(image, tf.int32)
    return tf.cast(tf.where(pixels < tf.cast(threshold, tf.int32), pixels, 255 - pixels), tf.uint8)


def solarize_add(image, addition, threshold=128):
    """timm solarize_add: pixels < threshold get min(255, x + addition)."""
    pixels = tf.cast(image, tf.int32)
    added = tf.minimum(pixels + tf.cast(addition, tf.int32), 255)
    return tf.cast(tf.where(pixels < tf.cast(threshold, tf.int32), added, pixels), tf.uint8)


def _channel_histograms(image):
    """[3, 256] int32 pixel counts per channel."""
    index = tf.cast(image, tf.int32) + tf.range(3, dtype=tf.int32) * 256
    counts = tf.math.bincount(tf.reshape(index, [-1]), minlength=768, maxlength=768)
    return tf.reshape(counts, [3, 256])


def auto_contrast(image):
    """PIL ImageOps.autocontrast (cutoff 0): stretch each channel to 0..255.

    PIL maps x -> int(x * scale + offset) in float64 with scale = 255/(hi-lo),
    offset = -lo*scale, clipped; channels with hi <= lo are left unchanged.
    """
    pixels = tf.cast(image, tf.float64)
    lo = tf.reduce_min(pixels, axis=[0, 1])
    hi = tf.reduce_max(pixels, axis=[0, 1])
    scale = 255.0 / tf.maximum(hi - lo, 1.0)
    stretched = tf.clip_by_value(tf.floor(pixels * scale + -lo * scale), 0.0, 255.0)
    return tf.cast(tf.where(hi > lo, stretched, pixels), tf.uint8)


def equalize(image):
    """PIL ImageOps.equalize, per channel.

    step = (pixel count - count of the highest occupied level) // 255; if there
    is at most one occupied level or step is 0 the channel is unchanged;
    otherwise level i maps to (step // 2 + #pixels below i) // step, clipped
    to 255 as PIL's point() does.
    """
    hist = _channel_histograms(image)
    occupied = hist > 0
    levels = tf.range(256, dtype=tf.int32)
    top_level = tf.reduce_max(tf.where(occupied, levels, -1), axis=1)
    top_count = tf.gather(hist, top_level, batch_dims=1)
    step = (tf.reduce_sum(hist, axis=1) - top_count) // 255
    n_occupied = tf.reduce_sum(tf.cast(occupied, tf.int32), axis=1)
    below = tf.cumsum(hist, axis=1, exclusive=True)
    safe_step = tf.maximum(step, 1)[:, None]
    mapped = tf.minimum((safe_step // 2 + below) // safe_step, 255)
    unchanged = ((n_occupied <= 1) | (step == 0))[:, None]
    lut = tf.where(unchanged, levels[None, :], mapped)
    return _apply_channel_luts(image, lut)


def blend(degenerate, image, factor):
    """PIL Image.blend(degenerate, image, factor) on uint8 images.

    PIL computes d + factor * (x - d) in float32 and truncates; when factor is
    outside [0, 1] the result is clipped to 0..255 first.
    """
    factor = tf.cast(factor, tf.float32)
    degenerate = tf.cast(degenerate, tf.float32)
    mixed = degenerate + factor * (tf.cast(image, tf.float32) - degenerate)
    return tf.cast(tf.floor(tf.clip_by_value(mixed, 0.0, 255.0)), tf.uint8)


def grayscale(image):
    """PIL convert('L'): (19595 R + 38470 G + 7471 B + 2^15) >> 16, [H, W]."""
    rgb = tf.cast(image, tf.int32)
    weighted = rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471
    return tf.bitwise.right_shift(weighted + 32768, 16)


def brightness(image, factor):
    """PIL ImageEnhance.Brightness: blend with black."""
    return blend(tf.zeros_like(image), image, factor)


def color(image, factor):
    """PIL ImageEnhance.Color: blend with the image's grayscale version."""
    gray = tf.repeat(grayscale(image)[..., None], 3, axis=-1)
    return blend(gray, image, factor)


def contrast(image, factor):
    """PIL ImageEnhance.Contrast: blend with the mean gray level.

    The mean is taken over the grayscale image and rounded as int(mean + 0.5).
    """
    mean = tf.reduce_mean(tf.cast(grayscale(image), tf.float64))
    mean = tf.floor(mean + 0.5)
    return blend(tf.fill(tf.shape(image), tf.cast(mean, tf.float32)), image, factor)


def smooth(image):
    """PIL ImageFilter.SMOOTH: 3x3 kernel/13 inside, border pixels copied.

    PIL accumulates in float32 and rounds the result to the nearest integer.
    """
    x = tf.cast(image, tf.float32)
    kernel = tf.constant(_SMOOTH_KERNEL, tf.float32) / _SMOOTH_SCALE
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    inner = tf.nn.depthwise_conv2d(x[None], kernel, strides=[1, 1, 1, 1], padding='VALID')[0]
    inner = tf.clip_by_value(tf.round(inner), 0.0, 255.0)
    # Put the filtered interior back into the original frame.
    height, width = tf.shape(x)[0], tf.shape(x)[1]
    padded = tf.pad(inner, [[1, 1], [1, 1], [0, 0]])
    rows = tf.range(height)[:, None, None]
    cols = tf.range(width)[None, :, None]
    interior = (rows > 0) & (rows < height - 1) & (cols > 0) & (cols < width - 1)
    return tf.cast(tf.where(interior, padded, x), tf.uint8)


def sharpness(image, factor):
    """PIL ImageEnhance.Sharpness: blend with the SMOOTH-filtered image."""
    return blend(smooth(image), image, factor)


def _cubic_weights(t):
    """PIL's transform-bicubic taps at offsets -1, 0, 1, 2 (Keys cubic, a = -1).

    PIL evaluates v2 + t(v3 - v1) + t^2(2v1 - 2v2 + v3 - v4)
    + t^3(v2 - v1 + v4 - v3); these are the same weights per tap.
    """
    t2 = t * t
    t3 = t2 * t
    return tf.stack([-t + 2.0 * t2 - t3, 1.0 - 2.0 * t2 + t3, t + t2 - t3, t3 - t2])


def _sample_bicubic(image, src_x, src_y):
    """Bicubic samples at continuous input points, neighbours clamped."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    x = src_x - 0.5  # to integer pixel-centre coordinates
    y = src_y - 0.5
    x_floor, y_floor = tf.floor(x), tf.floor(y)
    weights_x = _cubic_weights(tf.cast(x - x_floor, tf.float32))  # [4, H, W]
    weights_y = _cubic_weights(tf.cast(y - y_floor, tf.float32))
    taps = tf.range(-1, 3)[:, None, None]
    cols = tf.clip_by_value(tf.cast(x_floor, tf.int32)[None] + taps, 0, width - 1)
    rows = tf.clip_by_value(tf.cast(y_floor, tf.int32)[None] + taps, 0, height - 1)
    flat_index = rows[:, None] * width + cols[None, :]  # [4 rows, 4 cols, H, W]
    neighbours = tf.cast(tf.gather(tf.reshape(image, [-1, 3]), flat_index), tf.float32)
    # PIL interpolates along x within each row first, then along y.
    along_x = tf.reduce_sum(neighbours * weights_x[None, ..., None], axis=1)
    return tf.reduce_sum(along_x * weights_y[..., None], axis=0)


def _sample_bilinear(image, matrix):
    """Bilinear samples via TF's fused kernel, neighbours clamped."""
    a, b, c, d, e, f = [tf.cast(v, tf.float32) for v in matrix]
    # TF samples at integer pixel centres: shift PIL's half-pixel convention.
    tf_matrix = tf.stack([a, b, c + 0.5 * (a + b) - 0.5, d, e, f + 0.5 * (d + e) - 0.5, 0.0, 0.0])
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(image, tf.float32)[None],
        transforms=tf_matrix[None],
        output_shape=tf.shape(image)[:2],
        fill_value=0.0,
        interpolation='BILINEAR',
        fill_mode='NEAREST',
    )[0]


def affine(image, matrix, fill, interpolation='bicubic'):
    """PIL Image.transform(size, AFFINE, matrix, resample, fillcolor=fill).

    `matrix` = (a, b, c, d, e, f) maps an output pixel centre (X, Y) =
    (x + .5, y + .5) to the input point (a X + b Y + c, d X + e Y + f) in PIL's
    continuous coordinates (pixel i covers [i, i + 1)). Output pixels whose
    input point falls outside [0, W) x [0, H) take `fill` (an RGB triple); the
    others are interpolated ('bicubic': PIL's a = -1 cubic, what timm uses
    for DeiT; 'bilinear': TF's fused kernel, about 3x faster) with neighbours
    clamped at the border, then truncated to uint8 as PIL does.
    """
    a, b, c, d, e, f = [tf.cast(v, tf.float64) for v in matrix]
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    out_y = tf.cast(tf.range(height), tf.float64)[:, None] + 0.5
    out_x = tf.cast(tf.range(width), tf.float64)[None, :] + 0.5
    src_x = a * out_x + b * out_y + c
    src_y = d * out_x + e * out_y + f
    if interpolation == 'bicubic':
        sampled = _sample_bicubic(image, src_x, src_y)
    elif interpolation == 'bilinear':
        sampled = _sample_bilinear(image, matrix)
    else:
        raise ValueError(f"interpolation must be 'bicubic' or 'bilinear', got {interpolation!r}")
    inside = (
        (src_x >= 0.0)
        & (src_x < tf.cast(width, tf.float64))
        & (src_y >= 0.0)
        & (src_y < tf.cast(height, tf.float64))
    )
    # PIL truncates; the small epsilon absorbs float32 error on results that
    # are exact integers in PIL's double arithmetic (e.g. 90 degree turns).
    sampled = tf.floor(tf.clip_by_value(sampled, 0.0, 255.0) + 1e-3)
    fill = tf.reshape(tf.constant(fill, tf.float32), [1, 1, 3])
    return tf.cast(tf.where(inside[..., None], tf.minimum(sampled, 255.0), fill), tf.uint8)


def rotate(image, degrees, fill, interpolation='bicubic'):
    """PIL Image.rotate(degrees): counter-clockwise about the image centre."""
    shape = tf.cast(tf.shape(image), tf.float64)
    center_x, center_y = shape[1] / 2.0, shape[0] / 2.0
    angle = -tf.cast(degrees, tf.float64) * (math.pi / 180.0)
    # PIL rounds cos/sin to 15 decimals, which makes right angles exact.
    cos = tf.round(tf.cos(angle) * 1e15) / 1e15
    sin = tf.round(tf.sin(angle) * 1e15) / 1e15
    # Output->input map: rotation about the centre (PIL's rotate matrix).
    c = center_x - cos * center_x - sin * center_y
    f = center_y + sin * center_x - cos * center_y
    return affine(image, (cos, sin, c, -sin, cos, f), fill, interpolation)


def _shift_rows(image, shifts, fill):
    """PIL bicubic affine for maps (X, Y) -> (X + shifts[y], Y), exactly.

    Shears and translations along x map each output row onto the same input
    row, so PIL's vertical taps get weights (0, 1, 0, 0) and only the 4
    horizontal taps matter; the fractional offset is constant along a row.
    Sampling 4 taps instead of 16 makes these ops about 4x cheaper.
    """
    width = tf.shape(image)[1]
    shifts = tf.cast(shifts, tf.float64)  # [H], in pixels
    whole = tf.floor(shifts)
    weights = _cubic_weights(tf.cast(shifts - whole, tf.float32))  # [4, H]
    taps = tf.range(-1, 3)[None, :, None]
    cols = (
        tf.range(width)[None, None, :] + taps + tf.cast(whole, tf.int32)[:, None, None]
    )  # [H, 4, W]
    neighbours = tf.gather(
        image, tf.clip_by_value(cols, 0, width - 1), axis=1, batch_dims=1
    )  # [H, 4, W, 3]
    sampled = tf.reduce_sum(
        tf.cast(neighbours, tf.float32) * tf.transpose(weights)[:, :, None, None], axis=1
    )
    src_x = tf.cast(tf.range(width), tf.float64)[None, :] + 0.5 + shifts[:, None]
    inside = (src_x >= 0.0) & (src_x < tf.cast(width, tf.float64))
    sampled = tf.floor(tf.clip_by_value(sampled, 0.0, 255.0) + 1e-3)
    fill = tf.reshape(tf.constant(fill, tf.float32), [1, 1, 3])
    return tf.cast(tf.where(inside[..., None], tf.minimum(sampled, 255.0), fill), tf.uint8)


def _transpose(image):
    return tf.transpose(image, [1, 0, 2])


def shear_x(image, factor, fill, interpolation='bicubic'):
    """timm shear_x: PIL affine (1, factor, 0, 0, 1, 0), origin top-left."""
    if interpolation == 'bicubic':
        rows = tf.cast(tf.range(tf.shape(image)[0]), tf.float64) + 0.5
        return _shift_rows(image, tf.cast(factor, tf.float64) * rows, fill)
    return affine(image, (1.0, factor, 0.0, 0.0, 1.0, 0.0), fill, interpolation)


def shear_y(image, factor, fill, interpolation='bicubic'):
    """timm shear_y: PIL affine (1, 0, 0, factor, 1, 0), origin top-left."""
    if interpolation == 'bicubic':
        return _transpose(shear_x(_transpose(image), factor, fill))
    return affine(image, (1.0, 0.0, 0.0, factor, 1.0, 0.0), fill, interpolation)


def translate_x(image, pixels, fill, interpolation='bicubic'):
    """timm translate_x_*: output(x, y) = input(x + pixels, y)."""
    if interpolation == 'bicubic':
        shifts = tf.fill([tf.shape(image)[0]], tf.cast(pixels, tf.float64))
        return _shift_rows(image, shifts, fill)
    return affine(image, (1.0, 0.0, pixels, 0.0, 1.0, 0.0), fill, interpolation)


def translate_y(image, pixels, fill, interpolation='bicubic'):
    """timm translate_y_*: output(x, y) = input(x, y + pixels)."""
    if interpolation == 'bicubic':
        return _transpose(translate_x(_transpose(image), pixels, fill))
    return affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, pixels), fill, interpolation)
