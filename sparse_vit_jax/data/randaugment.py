"""timm-style RandAugment for tf.data, driven by stateless seeds.

Semantics of timm 0.3.2 `rand_augment_transform` (what DeiT trains with,
``rand-m9-mstd0.5-inc1``):

* each image gets `num_layers` ops (default 2) drawn uniformly *with
  replacement* from the op set: `_RAND_TRANSFORMS`, or with ``inc1`` the
  "increasing" variants whose strength grows with magnitude;
* each chosen op runs with probability 0.5;
* each op that runs draws its own magnitude: ``gauss(m, mstd)`` (uniform on
  [0, m] when mstd is infinite, as later timm does for mstd > 100), clipped to
  [0, mmax] (mmax defaults to 10, the top of timm's level scale);
* magnitudes map to op arguments with timm's level functions below; rotate,
  shear, translate and the increasing enhance ops flip the sign of their
  argument with probability 0.5;
* geometric ops fill uncovered pixels with `fill`, timm's ``img_mean``:
  round(255 * ImageNet mean) = (124, 116, 104) for DeiT.

All randomness comes from the `seed` passed to `rand_augment`, so the result
is a pure function of (image, seed).
"""

import dataclasses
import math
import re

import tensorflow as tf

from sparse_vit_jax.data import randaugment_ops as ops

_LEVEL_DENOM = 10.0  # timm's magnitude scale: M10 is "full strength".
_TRANSLATE_PCT = 0.45  # timm's translate_pct hparam default.

# timm's `_RAND_TRANSFORMS` and `_RAND_INCREASING_TRANSFORMS`, in timm's order.
RAND_OPS = (
    'AutoContrast',
    'Equalize',
    'Invert',
    'Rotate',
    'Posterize',
    'Solarize',
    'SolarizeAdd',
    'Color',
    'Contrast',
    'Brightness',
    'Sharpness',
    'ShearX',
    'ShearY',
    'TranslateXRel',
    'TranslateYRel',
)
RAND_INCREASING_OPS = (
    'AutoContrast',
    'Equalize',
    'Invert',
    'Rotate',
    'PosterizeIncreasing',
    'SolarizeIncreasing',
    'SolarizeAdd',
    'ColorIncreasing',
    'ContrastIncreasing',
    'BrightnessIncreasing',
    'SharpnessIncreasing',
    'ShearX',
    'ShearY',
    'TranslateXRel',
    'TranslateYRel',
)


@dataclasses.dataclass(frozen=True)
class RandAugmentConfig:
    """A parsed timm RandAugment spec (see `parse_randaugment`)."""

    num_layers: int = 2
    magnitude: float = 10.0
    magnitude_std: float = 0.0
    magnitude_max: float = _LEVEL_DENOM
    increasing: bool = False
    prob: float = 0.5

    @property
    def op_names(self):
        return RAND_INCREASING_OPS if self.increasing else RAND_OPS


def parse_randaugment(spec):
    """Parses a timm RandAugment string such as ``'rand-m9-mstd0.5-inc1'``.

    Sections after ``rand`` are ``<key><number>`` in any order: ``m``
    magnitude (default 10), ``n`` ops per image (default 2), ``mstd``
    magnitude noise std (default 0; > 100 means uniform on [0, m]), ``mmax``
    magnitude clip (default 10), ``inc`` 1/0 for the increasing op set.
    timm silently ignores sections without a number and reads ``inc0`` as
    true (it tests ``bool('0')``); here both are errors or mean what they say.
    timm's ``w`` (weighted op choice) is not supported.

    Raises:
      ValueError: naming the part of `spec` that is not understood.
    """
    if not isinstance(spec, str):
        raise ValueError(f'RandAugment spec must be a string, got {spec!r}')
    sections = spec.split('-')
    if sections[0] != 'rand':
        raise ValueError(
            f"RandAugment spec {spec!r} must start with 'rand' (e.g. "
            "'rand-m9-mstd0.5-inc1'); AutoAugment/AugMix specs are not supported"
        )
    values = {}
    for section in sections[1:]:
        match = re.fullmatch(r'([a-z]+)(\d+(?:\.\d*)?)', section)
        if not match:
            raise ValueError(
                f'RandAugment spec {spec!r}: section {section!r} is not '
                '<key><number> (known keys: m, n, mstd, mmax, inc)'
            )
        key, value = match.groups()
        if key in values:
            raise ValueError(f'RandAugment spec {spec!r}: {key!r} given twice')
        values[key] = value
    unknown = set(values) - {'m', 'n', 'mstd', 'mmax', 'inc'}
    if 'w' in unknown:
        raise ValueError(f"RandAugment spec {spec!r}: weighted op choice ('w') is not supported")
    if unknown:
        raise ValueError(
            f'RandAugment spec {spec!r}: unknown key(s) '
            f'{sorted(unknown)} (known: m, n, mstd, mmax, inc)'
        )

    def as_int(key):
        if not re.fullmatch(r'\d+', values[key]):
            raise ValueError(
                f'RandAugment spec {spec!r}: {key!r} needs an integer, got {values[key]!r}'
            )
        return int(values[key])

    config = RandAugmentConfig()
    if 'm' in values:
        config = dataclasses.replace(config, magnitude=float(as_int('m')))
    if 'n' in values:
        config = dataclasses.replace(config, num_layers=as_int('n'))
    if 'mstd' in values:
        std = float(values['mstd'])
        config = dataclasses.replace(config, magnitude_std=math.inf if std > 100 else std)
    if 'mmax' in values:
        config = dataclasses.replace(config, magnitude_max=float(values['mmax']))
    if 'inc' in values:
        if values['inc'] not in ('0', '1'):
            raise ValueError(f"RandAugment spec {spec!r}: 'inc' must be 0 or 1")
        config = dataclasses.replace(config, increasing=values['inc'] == '1')
    return config


def fill_from_mean(mean):
    """timm's geometric fill: round(255 * mean) per channel, capped at 255."""
    return tuple(min(255, round(255 * m)) for m in mean)


# --- timm's magnitude -> argument mappings (level is a float64 in [0, mmax],
# --- sign is +-1.0; Python's int() on a non-negative level is a floor).


def _fraction(level):
    return level / _LEVEL_DENOM


def _posterize_bits(level):
    return tf.floor(_fraction(level) * 4.0)


def _solarize_threshold(level):
    return tf.floor(_fraction(level) * 256.0)


def _enhance_factor(level):
    return _fraction(level) * 1.8 + 0.1


def _enhance_increasing_factor(level, sign):
    # Later timm clamps at 0.1 so mmax > 10 cannot reach negative factors.
    return tf.maximum(1.0 + sign * _fraction(level) * 0.9, 0.1)


def _op_table(image, level, sign, fill, interpolation):
    """name -> thunk applying that op with timm's argument for `level`."""
    geometric = dict(fill=fill, interpolation=interpolation)
    shape = tf.cast(tf.shape(image), tf.float64)
    shear = sign * _fraction(level) * 0.3
    translate = sign * _fraction(level) * _TRANSLATE_PCT
    return {
        'AutoContrast': lambda: ops.auto_contrast(image),
        'Equalize': lambda: ops.equalize(image),
        'Invert': lambda: ops.invert(image),
        'Rotate': lambda: ops.rotate(image, sign * _fraction(level) * 30.0, **geometric),
        'Posterize': lambda: ops.posterize(image, _posterize_bits(level)),
        'PosterizeIncreasing': lambda: ops.posterize(image, 4.0 - _posterize_bits(level)),
        'Solarize': lambda: ops.solarize(image, _solarize_threshold(level)),
        'SolarizeIncreasing': lambda: ops.solarize(image, 256.0 - _solarize_threshold(level)),
        'SolarizeAdd': lambda: ops.solarize_add(image, tf.floor(_fraction(level) * 110.0)),
        'Color': lambda: ops.color(image, _enhance_factor(level)),
        'Contrast': lambda: ops.contrast(image, _enhance_factor(level)),
        'Brightness': lambda: ops.brightness(image, _enhance_factor(level)),
        'Sharpness': lambda: ops.sharpness(image, _enhance_factor(level)),
        'ColorIncreasing': lambda: ops.color(image, _enhance_increasing_factor(level, sign)),
        'ContrastIncreasing': lambda: ops.contrast(image, _enhance_increasing_factor(level, sign)),
        'BrightnessIncreasing': lambda: ops.brightness(
            image, _enhance_increasing_factor(level, sign)
        ),
        'SharpnessIncreasing': lambda: ops.sharpness(
            image, _enhance_increasing_factor(level, sign)
        ),
        'ShearX': lambda: ops.shear_x(image, shear, **geometric),
        'ShearY': lambda: ops.shear_y(image, shear, **geometric),
        'TranslateXRel': lambda: ops.translate_x(image, translate * shape[1], **geometric),
        'TranslateYRel': lambda: ops.translate_y(image, translate * shape[0], **geometric),
    }


def apply_op(image, name, level, sign=1.0, *, fill=(128, 128, 128), interpolation='bicubic'):
    """Applies the RandAugment op `name` at magnitude `level` (no randomness).

    Useful for tests and visualisation; `rand_augment` draws these arguments.
    """
    level = tf.cast(level, tf.float64)
    sign = tf.cast(sign, tf.float64)
    return _op_table(image, level, sign, fill, interpolation)[name]()


def _draw_magnitude(config, seed):
    if config.magnitude_std == math.inf:
        level = tf.random.stateless_uniform([], seed, 0.0, config.magnitude, dtype=tf.float64)
    elif config.magnitude_std > 0:
        level = config.magnitude + config.magnitude_std * (
            tf.random.stateless_normal([], seed, dtype=tf.float64)
        )
    else:
        level = tf.constant(config.magnitude, tf.float64)
    return tf.clip_by_value(level, 0.0, config.magnitude_max)


def rand_augment(image, seed, config, *, fill=(128, 128, 128), interpolation='bicubic'):
    """Applies timm RandAugment to a uint8 [H, W, 3] image.

    Args:
      image: uint8 tensor [H, W, 3].
      seed: int32/int64 tensor [2]; the output is a pure function of it.
      config: a `RandAugmentConfig` (or a spec string for `parse_randaugment`).
      fill: RGB fill for geometric ops (timm: `fill_from_mean(mean)`).
      interpolation: 'bicubic' (timm/PIL, default) or 'bilinear' (faster).
    """
    if isinstance(config, str):
        config = parse_randaugment(config)
    names = config.op_names
    image = tf.convert_to_tensor(image, tf.uint8)
    static_shape = image.shape
    layer_seeds = tf.random.experimental.stateless_split(seed, num=max(config.num_layers, 1))
    for layer in range(config.num_layers):
        choice_seed, gate_seed, level_seed, sign_seed = tf.unstack(
            tf.random.experimental.stateless_split(layer_seeds[layer], num=4)
        )
        choice = tf.random.stateless_uniform([], choice_seed, 0, len(names), dtype=tf.int32)
        applied = tf.random.stateless_uniform([], gate_seed) < config.prob
        level = _draw_magnitude(config, level_seed)
        sign = tf.where(
            tf.random.stateless_uniform([], sign_seed) < 0.5, tf.constant(-1.0, tf.float64), 1.0
        )
        table = _op_table(image, level, sign, fill, interpolation)
        # Branch len(names) is "skip": one switch also implements the 0.5 gate,
        # and only the selected op's kernels run.
        branches = [table[name] for name in names] + [lambda im=image: im]
        image = tf.switch_case(tf.where(applied, choice, len(names)), branches)
        image.set_shape(static_shape)
    return image
