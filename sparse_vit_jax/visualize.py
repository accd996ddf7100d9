"""Figures of a run written as PNG files: what tools/visualize.py draws, from a workdir's
metrics.jsonl ('sparsity' records) and checkpoints, or from a results file. Each `render_*`
returns the paths it wrote (default folder: WORKDIR/plots); nothing here prints.
"""

from __future__ import annotations

import io
import json

import numpy as np

from sparse_vit_jax import data as data_lib
from sparse_vit_jax import paths, plots
from sparse_vit_jax.data.device_input import DeviceInput
from sparse_vit_jax.models import token_selector
from sparse_vit_jax.sparsity import schedules
from sparse_vit_jax.train.metrics import METRICS_FILE, read_metrics
from sparse_vit_jax.train.restore import restore_model, saved_config


def eval_images(config, count: int) -> np.ndarray:
    """The first `count` (real, unpadded) eval images, uint8 as the pipeline hands them over."""
    _, eval_input = data_lib.make_inputs(config)
    chunks, total = [], 0
    for batch in eval_input.batches():
        images = batch['image'][batch['mask'].astype(bool)]
        chunks.append(images)
        total += len(images)
        if total >= count:
            break
    return np.concatenate(chunks)[:count]


def render_tokens(
    workdir: str, out_dir: str | None = None, num_images: int = 8, *, step=None, data_dir=None
) -> list[str]:
    """Writes the token-selection figure of a run's checkpoint; returns the paths written."""
    restored = restore_model(workdir, step=step, data_dir=data_dir)
    config = restored.config
    images = eval_images(config, num_images)
    inputs = DeviceInput.from_config(config).normalize(images)
    kept = token_selector.kept_patches(
        restored.model, restored.params, inputs, masks=restored.forward_masks
    )
    figure = plots.token_selection_figure(
        images / np.float32(255),
        np.asarray(kept),
        config.model.patch_size,
        title=f'{config.sparsity.method}: {config.tokens.keep} of '
        f'{kept.shape[1] + 1} tokens kept ({config.tokens.eval_mode} eval), step {restored.step}',
    )
    return [save(figure, out_dir or plots_dir(workdir), f'tokens_step{restored.step}.png')]


def plots_dir(workdir: str) -> str:
    return paths.join(workdir, 'plots')


def save(figure, out_dir: str, name: str, dpi: int = 120) -> str:
    """Writes the figure as a PNG (local folder or bucket); returns its path."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png', dpi=dpi)
    path = paths.join(out_dir, name)
    paths.write_atomic(path, buffer.getvalue())
    return path


def _title(config: dict | None, what: str) -> str:
    if config is None:
        return what
    return f'{config["model"]["name"]} ({config["sparsity"]["method"]}): {what}'


def sparsity_history(workdir: str) -> tuple[list[dict], dict, int]:
    """The run's sparsity records, their arrays (plots.sparsity_history) and the run's last
    step (its last train record: the sparsity records stop at the last topology update)."""
    records = read_metrics(workdir, 'sparsity')
    if not records:
        raise ValueError(
            f'no sparsity records in {paths.join(workdir, METRICS_FILE)}: density and head '
            'plots need a sparse run (method svite, s2vite, sviteplus or s2viteplus) that has '
            'logged at least once'
        )
    logged = [r['step'] for r in records + read_metrics(workdir, 'train')]
    return records, plots.sparsity_history(records), max(logged)


def _no_updates(config: dict | None, step: int) -> str:
    """What the figure of a run without topology updates says instead of single points."""
    if config is None:
        return plots.NO_UPDATES
    s = config['sparsity']
    every = schedules.scale_update_every(
        s['update_every'], s['update_every_batch'], config['batch_size']
    )
    return (
        f'no topology update in the {step} steps of this run (ΔT = {every} steps):\n'
        'the masks are the initial ones'
    )


def render_density(workdir: str, out_dir: str | None = None) -> list[str]:
    """Per-layer densities (latest record) and density / weights moved over training."""
    records, history, step = sparsity_history(workdir)
    latest = max(records, key=lambda r: r['last_update_step'])
    config = saved_config(workdir)
    figure = plots.density_figure(
        latest['layer_density'],
        history['steps'],
        history['density'],
        history['moved'],
        history['fired_density'],
        title=_title(config, f'sparsity at step {step}'),
        no_updates=_no_updates(config, step),
    )
    return [save(figure, out_dir or plots_dir(workdir), f'density_step{step}.png')]


def _neuron_values(history: dict, config: dict | None) -> tuple[np.ndarray, bool]:
    """Kept fraction of each block's MLP neurons, or the counts when the width is unknown (no
    checkpoint to read the config from); and whether they are fractions."""
    active = history['active_neurons']
    width = None if config is None else config['model']['mlp_dim']
    if width is None:
        return active, False
    return active / np.asarray(width, np.float64), True


def render_heads(workdir: str, out_dir: str | None = None) -> list[str]:
    """The head mask over training and the neuron density per block (structured runs)."""
    _, history, step = sparsity_history(workdir)
    if 'active_heads' not in history:
        raise ValueError(
            f'{workdir} is not a structured run: head plots need method s2vite or s2viteplus'
        )
    config = saved_config(workdir)
    neurons, fraction = _neuron_values(history, config)
    figure = plots.heads_figure(
        history['steps'],
        history.get('head_mask'),
        history['active_heads'],
        neurons,
        neuron_fraction=fraction,
        title=_title(config, f'heads and neurons up to step {step}'),
        no_updates=_no_updates(config, step),
    )
    return [save(figure, out_dir or plots_dir(workdir), f'heads_step{step}.png')]


def render_accuracy(results_path: str, out_dir: str | None = None) -> list[str]:
    """Top-1 against GMACs across the runs listed in `results_path`."""
    results = json.loads(paths.resolve(results_path).read_text())
    figure = plots.accuracy_vs_flops_figure(results, title='top-1 vs FLOPs')
    out_dir = out_dir or paths.join(paths.resolve(results_path).parent, 'plots')
    return [save(figure, out_dir, 'accuracy_vs_flops.png')]


def render_all(
    workdir: str, out_dir: str | None = None, results: str | None = None, **token_args
) -> list[str]:
    """Every plot that applies: density (sparse runs), heads (structured), tokens (a token
    selector and a checkpoint), accuracy (with a results file)."""
    config = saved_config(workdir)
    records = read_metrics(workdir, 'sparsity')
    written = []
    if records:
        written += render_density(workdir, out_dir)
        if 'active_heads' in records[-1]:
            written += render_heads(workdir, out_dir)
    if config is not None and config['tokens']['keep']:
        written += render_tokens(workdir, out_dir, **token_args)
    if results:
        written += render_accuracy(results, out_dir or plots_dir(workdir))
    if not written:
        raise ValueError(
            f'nothing to plot for {workdir}: no sparsity records, no token selector'
            + ('' if config else ', no checkpoint')
        )
    return written
