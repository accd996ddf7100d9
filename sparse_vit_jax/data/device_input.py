"""The last steps of the input pipeline, on device: uint8 pixels -> normalized float32 model
inputs, and the fill of the random-erasing boxes the host drew.

Images cross from host to device as uint8 (a quarter of float32's bytes: 77 MB instead of 308 MB
per 512-image 224² batch); the jitted train and eval steps call `DeviceInput.images` first.
Normalization is torchvision's ToTensor + Normalize, (x / 255 - mean) / std in float32, the
same operations in the same order as the host did them before: the model sees the same numbers
up to the last bits (XLA multiplies by the reciprocal of a constant divisor; at most 7.2e-7).

Random erasing is split in two. The host draws each image's boxes (timm's probability and
attempt loop, `random_erasing.erase_boxes`): 16 bytes per box, a pure function of the example's
seed like every other augmentation, so a resumed run redraws the same boxes, and they are the
boxes the host erased before images stayed uint8. (Drawing them on device instead would need a
second implementation of timm's attempt loop and tie an image's box to its step and position in
the batch rather than to the example.) The device fills them in normalized space, where timm
fills ('pixel': a standard normal per pixel and channel; 'rand': one per channel; 'const':
zeros), which uint8 cannot carry. The fill's noise comes from
the step's key (its 'erasing' stream), drawn for the whole batch: partitionable Threefry gives
every image the same values whatever the mesh. The random bits are the fill's cost (on a CPU),
so 'pixel' draws per image only as many normals as its boxes can cover at most (a third of the
image in the DeiT recipe, `erased_pixels_bound`) and hands them out to the erased pixels in
raster order (docs/benchmarks.md).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp

ERASE_MODES = ('pixel', 'rand', 'const')
# timm RandomErasing's largest erased fraction of an image (`max_area`), which the DeiT recipe
# keeps; `random_erasing.erase_boxes` draws at most this (split between its boxes).
ERASE_MAX_AREA = 1 / 3


def normalize(images: jax.Array, mean, std) -> jax.Array:
    """uint8 [..., C] -> float32 (x / 255 - mean) / std."""
    images = images.astype(jnp.float32) / 255.0
    return (images - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def box_masks(boxes: jax.Array, height: int, width: int) -> jax.Array:
    """[B, K, 4] int (top, left, height, width) -> bool [B, K, height, width] (inside a box)."""
    top, left, box_h, box_w = (boxes[..., i, None, None] for i in range(4))
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    return (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)


def erased_pixels_bound(height: int, width: int, count: int, max_area: float) -> int:
    """The most pixels `count` boxes of `random_erasing.erase_boxes` can cover in a height x
    width image when together they erase at most `max_area` of it: each box's target area t is
    at most max_area·H·W / count, and its sides are rounded from t and its aspect a:
    h = round(√(t·a)) < H and w = round(√(t/a)) < W, so
    h·w ≤ (√(t·a) + ½)(√(t/a) + ½) = t + (√(t·a) + √(t/a)) / 2 + ¼ < t + (H + W) / 2."""
    bound = max_area * height * width + count * (height + width) / 2
    return min(height * width, math.floor(bound))


def _pixel_noise(key, covered, channels: int, count: int, max_area: float, dtype):
    """[B, H, W, C] standard normals for the pixels `covered` ([B, H, W] bool) marks: each
    image draws `erased_pixels_bound` normals per channel (not H·W) and its k-th covered pixel
    in raster order takes the k-th. Values elsewhere are arbitrary (the caller keeps its own)."""
    batch, height, width = covered.shape
    pixels = erased_pixels_bound(height, width, count, max_area)
    noise = jax.random.normal(key, (batch, pixels, channels), dtype)
    rank = jnp.cumsum(covered.reshape(batch, height * width, 1), axis=1, dtype=jnp.int32) - 1
    # Boxes larger than the bound (erase_boxes never draws them) reuse draws rather than fail.
    rank = jnp.remainder(rank, pixels)
    values = jnp.take_along_axis(noise, rank, axis=1, mode='clip')  # [B, H·W, C]
    return values.reshape(batch, height, width, channels)


def fill_boxes(
    key: jax.Array,
    images: jax.Array,
    boxes: jax.Array,
    mode: str = 'pixel',
    max_area: float = 1.0,
):
    """Normalized images [B, H, W, C] with each image's boxes ([B, K, 4], empty ones have zero
    size) filled as timm's RandomErasing `mode` fills them; a later box overwrites an earlier
    one where they overlap, as timm erases them in turn. 'pixel' draws a normal per covered
    pixel and channel, independent of every other; `max_area` is the largest fraction of an
    image the boxes may erase together (`ERASE_MAX_AREA` for boxes of `erase_boxes`): the
    fewer normals it draws, the cheaper the fill."""
    if mode not in ERASE_MODES:
        raise ValueError(f'random erasing mode must be one of {ERASE_MODES}, got {mode!r}')
    batch, height, width, channels = images.shape
    inside = box_masks(boxes, height, width)[..., None]  # [B, K, H, W, 1]
    if mode == 'pixel':
        # One normal per covered pixel: where boxes overlap, the last box's draw is as fresh as
        # any, so the union of the boxes is filled at once.
        covered = inside.any(axis=1)  # [B, H, W, 1]
        noise = _pixel_noise(key, covered[..., 0], channels, boxes.shape[1], max_area, images.dtype)
        return jnp.where(covered, noise, images)
    if mode == 'rand':
        values = jax.random.normal(key, (batch, boxes.shape[1], 1, 1, channels), images.dtype)
    else:
        values = jnp.zeros((batch, boxes.shape[1], 1, 1, channels), images.dtype)
    for k in range(boxes.shape[1]):
        images = jnp.where(inside[:, k], values[:, k], images)
    return images


@dataclasses.dataclass(frozen=True)
class DeviceInput:
    """How a batch's uint8 images become model inputs inside a jitted step.

    Attributes:
      mean, std: the dataset's per-channel statistics of [0, 1] pixels (config.data).
      erase_mode: how random-erasing boxes are filled (see `fill_boxes`).
      erase_max_area: the largest fraction of an image its boxes erase together (the recipe's
        `random_erasing.erase_boxes` draws at most timm's `ERASE_MAX_AREA`).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    erase_mode: str = 'pixel'
    erase_max_area: float = ERASE_MAX_AREA

    @classmethod
    def from_config(cls, config: Any) -> 'DeviceInput':
        return cls(tuple(config.data.mean), tuple(config.data.std))

    def normalize(self, images: jax.Array) -> jax.Array:
        return normalize(images, self.mean, self.std)

    def images(self, batch: Mapping[str, jax.Array], key: jax.Array | None = None) -> jax.Array:
        """The model inputs of `batch`: its uint8 'image' normalized, and its 'erase' boxes
        (training batches with random erasing on) filled with noise from `key`."""
        images = self.normalize(batch['image'])
        if 'erase' in batch:
            if key is None:
                raise ValueError('a batch with random-erasing boxes needs a key to fill them')
            images = fill_boxes(key, images, batch['erase'], self.erase_mode, self.erase_max_area)
        return images


def model_images(batch: Mapping[str, jax.Array], inputs: DeviceInput | None, key=None):
    """`inputs.images(batch, key)`, or without a DeviceInput the batch's float images as they
    are (tests and benchmarks that make normalized images themselves). uint8 images without one
    are refused: the model would silently see unnormalized pixels."""
    if inputs is not None:
        return inputs.images(batch, key)
    if batch['image'].dtype == jnp.uint8 or 'erase' in batch:
        raise ValueError(
            'this batch holds uint8 images (and maybe erasing boxes): build the step with a '
            'DeviceInput (DeviceInput.from_config(config)) to normalize them on device'
        )
    return batch['image']
