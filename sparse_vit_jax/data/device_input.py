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
every image the same values whatever the mesh. It is a normal per pixel of the batch, of which
about 1 in 20 is kept: milliseconds on an accelerator, ~15% of a DeiT-Tiny train step on a CPU
(docs/benchmarks.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

ERASE_MODES = ('pixel', 'rand', 'const')


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


def fill_boxes(key: jax.Array, images: jax.Array, boxes: jax.Array, mode: str = 'pixel'):
    """Normalized images [B, H, W, C] with each image's boxes ([B, K, 4], empty ones have zero
    size) filled as timm's RandomErasing `mode` fills them; a later box overwrites an earlier
    one where they overlap, as timm erases them in turn."""
    if mode not in ERASE_MODES:
        raise ValueError(f'random erasing mode must be one of {ERASE_MODES}, got {mode!r}')
    batch, height, width, channels = images.shape
    inside = box_masks(boxes, height, width)[..., None]  # [B, K, H, W, 1]
    if mode == 'pixel':
        # One normal per pixel: where boxes overlap, the last box's draw is as fresh as any.
        noise = jax.random.normal(key, images.shape, images.dtype)
        return jnp.where(inside.any(axis=1), noise, images)
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
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    erase_mode: str = 'pixel'

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
            images = fill_boxes(key, images, batch['erase'], self.erase_mode)
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
