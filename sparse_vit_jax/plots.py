"""Figures of trained runs: small functions from arrays to arrays or matplotlib Figures.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot), so nothing here touches
global backend state and saving to PNG needs no display.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.figure import Figure


def unnormalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalized (B, H, W, C) images back to [0, 1] for display."""
    images = np.asarray(images, np.float32) * np.asarray(std) + np.asarray(mean)
    return np.clip(images, 0.0, 1.0)


def patch_grid(kept: np.ndarray, image_size: int, patch_size: int) -> np.ndarray:
    """Per-pixel (H, W) bool of a (num_patches,) raster-order patch selection."""
    side = image_size // patch_size
    grid = np.asarray(kept, bool).reshape(side, side)
    return np.kron(grid, np.ones((patch_size, patch_size), bool)).astype(bool)


def dim_dropped_patches(
    image: np.ndarray, kept: np.ndarray, patch_size: int, dim: float = 0.25
) -> np.ndarray:
    """The (H, W, C) image in [0, 1] with the patches not in `kept` scaled by `dim`."""
    pixels = patch_grid(kept, image.shape[0], patch_size)
    return np.where(pixels[..., None], image, image * dim)


def _show(axis, image: np.ndarray) -> None:
    if image.shape[-1] == 1:
        axis.imshow(image[..., 0], cmap='gray', vmin=0.0, vmax=1.0)
    else:
        axis.imshow(image)
    axis.set_xticks([])
    axis.set_yticks([])


def token_selection_figure(
    images: np.ndarray, kept: np.ndarray, patch_size: int, *, title: str = ''
) -> Figure:
    """Top row: the images (B, H, W, C) in [0, 1]; bottom row: the same with the patches the
    selector dropped dimmed. kept: (B, num_patches) bool."""
    count = len(images)
    figure = Figure(figsize=(1.6 * count, 3.4))
    axes = figure.subplots(2, count, squeeze=False)
    for i in range(count):
        _show(axes[0, i], images[i])
        _show(axes[1, i], dim_dropped_patches(images[i], kept[i], patch_size))
        axes[1, i].set_xlabel(f'{int(np.sum(kept[i]))} patches kept', fontsize=8)
    axes[0, 0].set_ylabel('image', fontsize=8)
    axes[1, 0].set_ylabel('selected', fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure
