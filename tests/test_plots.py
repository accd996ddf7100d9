"""Training plots: the figure functions (plots.py) draw exactly the arrays they are given, and
sparse_vit_jax/visualize.py and tools/visualize.py turn a real (tiny) S²ViTE run and a results
file into PNGs."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from matplotlib import image as mpimg

from sparse_vit_jax import plots, visualize
from sparse_vit_jax.train import loop
from sparse_vit_jax.train.metrics import read_metrics

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = [
    {'name': 'DeiT-S', 'method': 'dense', 'top1': 0.798, 'gmacs': 4.6, 'dense_gmacs': 4.6},
    {'name': 'S2ViTE-S .5', 'method': 's2vite', 'top1': 0.77, 'gmacs': 2.4, 'dense_gmacs': 4.6},
    {'name': 'S2ViTE-S .7', 'method': 's2vite', 'top1': 0.792, 'gmacs': 3.1, 'dense_gmacs': 4.6},
    {'name': 'SViTE-S .5', 'method': 'svite', 'top1': 0.797, 'gmacs': 2.8},
]


def _check_png(path, figsize, dpi=120):
    """A PNG of the figure's size in pixels that is not blank."""
    assert os.path.getsize(path) > 5_000
    pixels = mpimg.imread(path)
    assert pixels.shape[:2] == (round(figsize[1] * dpi), round(figsize[0] * dpi))
    assert pixels[..., :3].std() > 0.05


# ----------------------------------------------------------------------------- figure functions


def test_head_mask_image_is_the_mask_and_is_what_is_drawn():
    masks = np.random.default_rng(0).random((5, 3, 4)) < 0.5  # [updates, blocks, heads]
    image = plots.head_mask_image(masks)
    assert image.shape == (12, 5)
    for t, block, head in np.ndindex(masks.shape):
        assert image[block * 4 + head, t] == masks[t, block, head]
    steps = np.arange(1, 6) * 10
    figure = plots.heads_figure(steps, masks, masks.sum(2), np.full((5, 3), 0.5))
    drawn = figure.axes[0].get_images()[0].get_array()
    np.testing.assert_array_equal(np.asarray(drawn), image)
    # A tick per head (numbered), and neuron lines that differ in more than colour.
    heads_axis, neurons_axis = figure.axes
    ticks = heads_axis.yaxis.get_minor_ticks()
    assert [t.label2.get_text() for t in ticks] == ['h0', 'h1', 'h2', 'h3'] * 3
    assert not any(t.label1.get_visible() for t in ticks)  # the block names stay alone
    styles = {(line.get_marker(), line.get_linestyle()) for line in neurons_axis.lines}
    assert len(styles) == 3


def test_a_run_without_topology_updates_says_so_instead_of_single_points():
    initial = np.array([0])  # the one record of such a run: the initial masks
    figure = plots.density_figure({'head/kernel': 0.5}, initial, np.array([0.5]), np.array([0]))
    assert [t.get_text() for a in figure.axes for t in a.texts] == [plots.NO_UPDATES]
    assert not any(a.lines for a in figure.axes)
    masks = np.ones((1, 2, 4), bool)
    figure = plots.heads_figure(initial, masks, masks.sum(2), np.ones((1, 2)), no_updates='none')
    assert [t.get_text() for a in figure.axes for t in a.texts] == ['none']


def test_heads_figure_without_masks_draws_head_counts_and_neuron_fractions():
    steps = np.array([2, 4])
    active_heads = np.array([[3, 2], [2, 2]])
    neurons = np.array([[0.5, 0.25], [0.5, 0.5]])
    figure = plots.heads_figure(steps, None, active_heads, neurons)
    heads_axis, neurons_axis = figure.axes
    np.testing.assert_array_equal(heads_axis.lines[0].get_ydata(), [3, 2])  # block 0
    np.testing.assert_array_equal(neurons_axis.lines[1].get_ydata(), [0.25, 0.5])  # block 1
    assert neurons_axis.get_ylim() == (0, 1.02)


def test_layers_are_drawn_in_model_order_with_their_densities():
    densities = {
        'head/kernel': 0.9,
        'blocks_10/mlp/fc1/kernel': 0.3,
        'blocks_2/attn/proj/kernel': 0.4,
        'blocks_2/attn/qkv/kernel': 0.5,
        'patch_embed/kernel': 0.8,
    }
    order = sorted(densities, key=plots.layer_sort_key)
    assert order == [
        'patch_embed/kernel',
        'blocks_2/attn/qkv/kernel',
        'blocks_2/attn/proj/kernel',
        'blocks_10/mlp/fc1/kernel',
        'head/kernel',
    ]
    steps = np.array([5, 10])
    figure = plots.density_figure(densities, steps, np.array([0.5, 0.5]), np.array([40, 20]))
    bars = figure.axes[0].patches
    assert [bar.get_width() for bar in bars] == [densities[name] for name in order]
    np.testing.assert_array_equal(figure.axes[2].lines[0].get_ydata(), [40, 20])


def test_sparsity_history_orders_updates_and_keeps_head_masks_only_when_complete():
    record = lambda step, mask=None: {
        'last_update_step': step,
        'density': 0.5,
        'fired_density': 0.6,
        'moved': step,
        'active_heads': [1, 2],
        **({} if mask is None else {'head_mask': mask}),
    }
    mask = [[True, False], [True, True]]
    history = plots.sparsity_history([record(4, mask), record(2, mask)])
    np.testing.assert_array_equal(history['steps'], [2, 4])
    assert history['head_mask'].shape == (2, 2, 2) and history['head_mask'].dtype == bool
    assert 'head_mask' not in plots.sparsity_history([record(2), record(4, mask)])
    with pytest.raises(ValueError, match='no sparsity records'):
        plots.sparsity_history([])


def test_accuracy_figure_has_one_series_per_method_in_flops_order():
    figure = plots.accuracy_vs_flops_figure(RESULTS)
    lines = {line.get_label(): line for line in figure.axes[0].lines if line.get_marker() == 'o'}
    assert sorted(lines) == ['dense', 's2vite', 'svite']
    np.testing.assert_allclose(lines['s2vite'].get_xdata(), [2.4, 3.1])
    np.testing.assert_allclose(lines['s2vite'].get_ydata(), [77.0, 79.2])
    with pytest.raises(ValueError, match=r"entry 1 lacks \['gmacs'\]"):
        plots.check_results([RESULTS[0], {'name': 'x', 'method': 'svite', 'top1': 0.5}])
    with pytest.raises(ValueError, match='fraction'):
        plots.check_results([dict(RESULTS[0], top1=79.8)])


# ----------------------------------------------------------------------------- a real run


def test_visualize_subcommands_on_a_tiny_structured_run(tiny_config, tmp_path):
    config = tiny_config(
        arg='method=s2vite,head_density=0.5,neuron_density=0.5',
        **{
            'num_epochs': 8 / 9,  # 8 steps of batch 4
            'sparsity.update_every': 1,  # updates after steps 1..6 (t_end 0.8)
            'sparsity.update_every_batch': 4,
            'log_every_steps': 1,
            'checkpoint_every_steps': 100,
        },
    )
    workdir = str(tmp_path / 'run')
    loop.train_and_evaluate(config, workdir)
    records = read_metrics(workdir, 'sparsity')
    assert [r['last_update_step'] for r in records] == [1, 2, 3, 4, 5, 6]
    for r in records:  # the head mask the summary logs agrees with its head counts
        assert np.sum(r['head_mask'], axis=1).tolist() == r['active_heads'] == [2, 2]

    out = str(tmp_path / 'plots')
    (density,) = visualize.render_density(workdir, out)
    (heads,) = visualize.render_heads(workdir, out)
    # Named by the run's last step (8), not the last update's (6).
    assert os.path.basename(density) == 'density_step8.png'
    _check_png(density, (10, 4.0))
    _check_png(heads, (10, 4.5))
    results = tmp_path / 'results.json'
    results.write_text(json.dumps(RESULTS))
    (accuracy,) = visualize.render_accuracy(str(results))
    assert accuracy == str(tmp_path / 'plots' / 'accuracy_vs_flops.png')
    _check_png(accuracy, (7, 5))

    # The command line: every plot that applies, paths printed, default --out WORKDIR/plots.
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL='2')
    command = [sys.executable, 'tools/visualize.py', 'all', '--workdir', workdir]
    result = subprocess.run(
        command + ['--results', str(results)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    written = [line.split(' ', 1)[1] for line in result.stdout.splitlines()]
    names = ['density_step8.png', 'heads_step8.png', 'accuracy_vs_flops.png']
    assert written == [os.path.join(workdir, 'plots', n) for n in names]
    assert all(os.path.getsize(path) > 5_000 for path in written)


def test_density_of_a_dense_run_is_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match='need a sparse run'):
        visualize.render_density(str(tmp_path))
