"""Figures of trained runs: small functions from arrays to arrays or matplotlib Figures.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot), so nothing here touches
global backend state and saving to PNG needs no display.
"""

from __future__ import annotations

import collections
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from sparse_vit_jax.layer_order import layer_sort_key


def patch_grid(kept: np.ndarray, image_size: int, patch_size: int) -> np.ndarray:
    """Per-pixel (H, W) bool of a (num_patches,) raster-order patch selection."""
    side = image_size // patch_size
    grid = np.asarray(kept, bool).reshape(side, side)
    return np.kron(grid, np.ones((patch_size, patch_size), bool)).astype(bool)


# The outline of a dropped patch: a colour that no grayscale or natural image is made of, so it
# shows on black as on white (dimming a dropped patch hid it on black backgrounds).
DROPPED_COLOUR = (1.0, 0.1, 0.6)


def outline_dropped_patches(image: np.ndarray, kept: np.ndarray, patch_size: int) -> np.ndarray:
    """The (H, W, C) image in [0, 1] as RGB, each patch not in `kept` outlined in DROPPED_COLOUR
    (its border pixels; the pixels inside stay as they were)."""
    image = np.asarray(image, np.float32)
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3].copy()
    dropped = ~patch_grid(kept, image.shape[0], patch_size)
    rows, cols = np.indices(dropped.shape)
    border = (rows % patch_size == 0) | (rows % patch_size == patch_size - 1)
    border |= (cols % patch_size == 0) | (cols % patch_size == patch_size - 1)
    rgb[dropped & border] = DROPPED_COLOUR
    return rgb


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
    selector dropped outlined. kept: (B, num_patches) bool."""
    count = len(images)
    figure = Figure(figsize=(1.6 * count, 3.4))
    axes = figure.subplots(2, count, squeeze=False)
    for i in range(count):
        _show(axes[0, i], images[i])
        _show(axes[1, i], outline_dropped_patches(images[i], kept[i], patch_size))
        axes[1, i].set_xlabel(f'{int(np.sum(kept[i]))} patches kept', fontsize=8)
    axes[0, 0].set_ylabel('image', fontsize=8)
    axes[1, 0].set_ylabel('dropped: outlined', fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


# ----------------------------------------------------------------------------- sparsity


def layer_label(name: str) -> str:
    return name.removesuffix('/kernel').replace('blocks_', 'block ')


def sparsity_history(records: Sequence[Mapping]) -> dict[str, np.ndarray]:
    """Arrays over training from a run's 'sparsity' records (train/metrics.py), one entry per
    topology update, in update order.

    Returns 'steps' (the update steps), 'density', 'fired_density', 'moved' [T]; and where every
    record has them, 'active_heads', 'active_neurons', 'moved_heads', 'moved_neurons'
    [T, depth] and 'head_mask' [T, depth, heads].
    """
    if not records:
        raise ValueError('no sparsity records: the run is dense or has not updated yet')
    records = sorted(records, key=lambda r: r['last_update_step'])
    history = {
        'steps': np.array([r['last_update_step'] for r in records]),
        'density': np.array([r['density'] for r in records], np.float64),
        'fired_density': np.array([r['fired_density'] for r in records], np.float64),
        'moved': np.array([r['moved'] for r in records]),
    }
    for key in ('active_heads', 'active_neurons', 'moved_heads', 'moved_neurons', 'head_mask'):
        if all(key in r for r in records):
            history[key] = np.array([r[key] for r in records])
    if 'head_mask' in history:
        history['head_mask'] = history['head_mask'].astype(bool)
    return history


def plot_layer_density(axis, layer_density: Mapping[str, float]) -> None:
    """Horizontal bars, one per prunable layer, in model order (top to bottom)."""
    names = sorted(layer_density, key=layer_sort_key)
    positions = np.arange(len(names))
    axis.barh(positions, [layer_density[n] for n in names], color='tab:blue')
    axis.set_yticks(positions, [layer_label(n) for n in names], fontsize=6)
    axis.invert_yaxis()
    axis.set_xlim(0, 1)
    axis.set_xlabel('density (kept fraction)', fontsize=8)


def plot_density_history(axis, steps, density, fired_density=None) -> None:
    axis.plot(steps, density, marker='.', label='density')
    if fired_density is not None:
        axis.plot(steps, fired_density, marker='.', label='ever active ("fired")')
    axis.set_ylim(0, 1.02)
    axis.set_ylabel('fraction of prunable weights', fontsize=8)
    axis.legend(fontsize=7)


def plot_moved(axis, steps, moved) -> None:
    axis.plot(steps, moved, marker='.', color='tab:red')
    axis.set_ylabel('weights moved (regrown)', fontsize=8)
    axis.set_xlabel('update step', fontsize=8)


# What the history panels say for a run whose masks never changed (one record: the initial masks).
NO_UPDATES = 'no topology update in this run:\nthe masks are the initial ones'


def updated(steps: np.ndarray) -> bool:
    """Whether the records of `steps` hold a topology update besides the initial masks (step 0)."""
    return bool(np.any(np.asarray(steps) > 0))


def plot_note(axis, note: str) -> None:
    """`note` in the middle of an empty panel, where a curve would have one point."""
    axis.text(0.5, 0.5, note, ha='center', va='center', fontsize=9, transform=axis.transAxes)
    axis.set_xticks([])
    axis.set_yticks([])


def density_figure(
    layer_density: Mapping[str, float],
    steps: np.ndarray,
    density: np.ndarray,
    moved: np.ndarray,
    fired_density: np.ndarray | None = None,
    *,
    title: str = '',
    no_updates: str = NO_UPDATES,
) -> Figure:
    """Left: the latest per-layer densities; right: overall density and weights moved per
    topology update over training, or the `no_updates` note when there was none."""
    figure = Figure(figsize=(10, max(4.0, 0.13 * len(layer_density) + 1.5)))
    grid = figure.add_gridspec(2, 2, width_ratios=(1.0, 1.3))
    plot_layer_density(figure.add_subplot(grid[:, 0]), layer_density)
    if updated(steps):
        plot_density_history(figure.add_subplot(grid[0, 1]), steps, density, fired_density)
        plot_moved(figure.add_subplot(grid[1, 1]), steps, moved)
    else:
        plot_note(figure.add_subplot(grid[:, 1]), no_updates)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def head_mask_image(masks: np.ndarray) -> np.ndarray:
    """bool [T, depth, heads] -> bool [depth·heads, T]: row i·heads + h is head h of block i,
    column t the mask after update t."""
    masks = np.asarray(masks, bool)
    steps, depth, heads = masks.shape
    return masks.reshape(steps, depth * heads).T


def plot_head_masks(axis, steps: np.ndarray, masks: np.ndarray) -> None:
    """Active heads (dark) per block over the updates, blocks separated by lines; blocks named
    on the left, a tick per head on the right (numbered while there is room)."""
    image = head_mask_image(masks)
    heads = masks.shape[2]
    axis.imshow(image, aspect='auto', cmap='Greys', vmin=0, vmax=1, interpolation='nearest')
    for boundary in range(heads, image.shape[0], heads):
        axis.axhline(boundary - 0.5, color='tab:orange', linewidth=0.6)
    axis.set_yticks(np.arange(masks.shape[1]) * heads + (heads - 1) / 2)
    axis.set_yticklabels([f'block {i}' for i in range(masks.shape[1])], fontsize=6)
    rows = np.arange(image.shape[0])
    labels = [f'h{row % heads}' for row in rows] if len(rows) <= 48 else []
    axis.set_yticks(rows, labels, minor=True, fontsize=5)
    axis.tick_params(
        axis='y', which='minor', left=False, labelleft=False, right=True, labelright=True
    )
    ticks = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), 8)).round().astype(int))
    axis.set_xticks(ticks, [str(steps[t]) for t in ticks], fontsize=7)
    axis.set_xlabel('update step', fontsize=8)
    axis.set_title('head mask (dark: active)', fontsize=8)


BLOCK_MARKERS = ('o', 's', '^', 'D', 'v', 'P', 'X', '*')
BLOCK_DASHES = ('-', '--', ':', '-.')


def plot_unit_density(
    axis, steps: np.ndarray, values: np.ndarray, label: str, fraction: bool = False
) -> None:
    """One line per block of `values` [T, depth]: a kept fraction (fraction=True) or a count.
    Blocks differ in colour, marker and dash (lines on top of each other stay apart)."""
    for block in range(values.shape[1]):
        axis.plot(
            steps,
            values[:, block],
            marker=BLOCK_MARKERS[block % len(BLOCK_MARKERS)],
            linestyle=BLOCK_DASHES[block // len(BLOCK_MARKERS) % len(BLOCK_DASHES)],
            markersize=4,
            linewidth=0.8,
            label=f'block {block}',
        )
    if fraction:
        axis.set_ylim(0, 1.02)
    axis.set_ylabel(label, fontsize=8)
    axis.set_xlabel('update step', fontsize=8)
    if values.shape[1] <= 12:
        axis.legend(fontsize=6, ncol=2)


def heads_figure(
    steps: np.ndarray,
    head_masks: np.ndarray | None,
    active_heads: np.ndarray,
    neurons: np.ndarray,
    *,
    neuron_fraction: bool = True,
    title: str = '',
    no_updates: str = NO_UPDATES,
) -> Figure:
    """S²ViTE units over training: the head mask [T, depth, heads] as an image (or, for runs
    logged without it, active heads per block [T, depth]) and MLP neurons per block [T, depth],
    as kept fractions (neuron_fraction) or counts; the neuron panel holds the `no_updates` note
    when the topology never changed."""
    figure = Figure(figsize=(10, 4.5))
    left, right = figure.subplots(1, 2)
    if head_masks is not None:
        plot_head_masks(left, steps, head_masks)
    else:
        plot_unit_density(left, steps, active_heads, 'active heads')
    label = 'neuron density' if neuron_fraction else 'active neurons'
    if updated(steps):
        plot_unit_density(right, steps, neurons, label, fraction=neuron_fraction)
    else:
        plot_note(right, no_updates)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


# ----------------------------------------------------------------------------- accuracy

RESULT_KEYS = ('name', 'method', 'top1', 'gmacs')


def check_results(results: Sequence[Mapping]) -> None:
    """Raises ValueError naming the entry when a results list does not fit the format of
    `accuracy_vs_flops_figure`."""
    if not isinstance(results, (list, tuple)) or not results:
        raise ValueError('results must be a non-empty JSON list of runs')
    for i, run in enumerate(results):
        missing = [k for k in RESULT_KEYS if not isinstance(run, Mapping) or k not in run]
        if missing:
            raise ValueError(f'results entry {i} lacks {missing} (each needs {list(RESULT_KEYS)})')
        if not 0 <= run['top1'] <= 1:
            raise ValueError(f'results entry {i} ({run["name"]}): top1 is a fraction in [0, 1]')
        if run['gmacs'] <= 0:
            raise ValueError(f'results entry {i} ({run["name"]}): gmacs must be positive')


def accuracy_vs_flops_figure(results: Sequence[Mapping], *, title: str = '') -> Figure:
    """Top-1 against GMACs per image, one point per run, one colour and line per method (the
    paper's accuracy-vs-FLOPs figure for our runs).

    results: a list of runs, each a dict with
      name: str, the point's label (e.g. 'S²ViTE-S 0.7/0.6');
      method: str, the series (dense | svite | s2vite | sviteplus | s2viteplus | anything);
      top1: float, top-1 accuracy as a fraction in [0, 1] (as tools/evaluate.py reports it);
      gmacs: float, GMACs per image in the paper's convention (tools/flops.py --json 'gmacs');
      dense_gmacs: float, optional, the dense model's (drawn as a dotted vertical line);
      any other keys (model, workdir, top5, ...) are ignored.
    """
    check_results(results)
    figure = Figure(figsize=(7, 5))
    axis = figure.subplots()
    methods = sorted({run['method'] for run in results})
    for method in methods:
        runs = sorted((r for r in results if r['method'] == method), key=lambda r: r['gmacs'])
        x = [r['gmacs'] for r in runs]
        y = [100 * r['top1'] for r in runs]
        axis.plot(x, y, marker='o', linewidth=1, label=method)
        for run, xi, yi in zip(runs, x, y):
            axis.annotate(
                run['name'], (xi, yi), fontsize=6, textcoords='offset points', xytext=(3, 3)
            )
    for dense in sorted({r['dense_gmacs'] for r in results if r.get('dense_gmacs')}):
        axis.axvline(dense, color='grey', linestyle=':', linewidth=0.8)
    axis.set_xlabel('GMACs per image (paper convention)', fontsize=8)
    axis.set_ylabel('top-1 accuracy (%)', fontsize=8)
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    if title:
        axis.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure


FAMILY_MARKERS = {
    'dense': 'o',
    'static': 'X',
    'svite': 's',
    's2static': 'P',
    's2vite': 'D',
    'tokens': 'v',
}


def _dodged(xs: Sequence[float], fraction: float = 0.02) -> list[float]:
    """`xs` with the values that occur more than once spread symmetrically around them, in order,
    by `fraction` of the span of `xs`."""
    step = fraction * ((max(xs) - min(xs)) or 1.0)
    groups = collections.defaultdict(list)
    for i, x in enumerate(xs):
        groups[x].append(i)
    dodged = list(xs)
    for x, members in groups.items():
        for rank, i in enumerate(members):
            dodged[i] = x + (rank - (len(members) - 1) / 2) * step
    return dodged


def study_figure(summary: Sequence[Mapping], *, title: str) -> Figure:
    """Top-1 against MMACs per image for a study: one point per row at its mean over seeds, with
    the seeds' standard deviation as error bars, one marker per method family, one colour per
    row, and no lines joining rows (different methods are not a curve). Rows at the same MACs
    are set a little apart (2% of the axis' span each) so that their error bars do not hide each
    other.

    summary: `sparse_vit_jax.study.summarize` rows (name, description, family, mean, std,
      mmacs, top1 per seed).
    """
    figure = Figure(figsize=(9.5, 5))
    axis = figure.subplots()
    # tab10 and then colours far from all of its ten (its C7 is grey already).
    colours = iter([f'C{i}' for i in range(10)] + ['black', 'gold', 'navy', 'lime', 'maroon'])
    others = iter('v^<>*hp')
    markers = dict(FAMILY_MARKERS)
    for row, x in zip(summary, _dodged([row['mmacs'] for row in summary])):
        if row['family'] not in markers:  # a family without its own marker takes the next one
            markers[row['family']] = next(others)
        marker = markers[row['family']]
        axis.errorbar(
            x,
            row['mean'],
            yerr=row['std'] or 0.0,
            marker=marker,
            linestyle='none',
            capsize=3,
            markersize=6,
            color=next(colours),
            label=f'{row["description"]} (n={len(row["top1"])})',
        )
    axis.set_xlabel(
        'MMACs per image (paper convention; rows with equal MACs set slightly apart)', fontsize=8
    )
    axis.set_ylabel('test top-1 (%), mean ± std over seeds', fontsize=8)
    axis.legend(fontsize=6, loc='upper left', bbox_to_anchor=(1.01, 1.0))  # hides no point
    axis.grid(alpha=0.3)
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure
