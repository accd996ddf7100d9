"""The Fashion-MNIST study's bookkeeping (sparse_vit_jax.study, used by tools/compare_fashion.py):
the run log survives a torn line, finished runs are recognized by their exact settings, and the
table gives mean ± std over seeds with every seed's value."""

import numpy as np
import pytest
from matplotlib import colors

from sparse_vit_jax import config as config_lib
from sparse_vit_jax import plots, study


def _record(row, seed, top1, **fields):
    defaults = {'gmacs': 0.00128, 'nonzero_params': 71878, 'train_seconds': 360.0, 'epochs': 15.0}
    return dict(defaults, name=row.name, key=row.key, seed=seed, top1=top1, **fields)


def test_log_resume_and_table(tmp_path):
    dense, svite = study.ROWS['dense'], study.ROWS['svite_0.5_ref']
    path = str(tmp_path / 'runs' / 'log.jsonl')
    for record in (_record(svite, 0, 0.8798), _record(dense, 1, 0.8919), _record(dense, 0, 0.8894)):
        study.append_log(path, record)
    with open(path, 'a') as f:
        f.write('{"name": "dense", "se')  # a run killed while logging
    records = study.read_log(path)
    assert len(records) == 3
    assert study.finished(records, dense, 0)['top1'] == 0.8894
    assert study.finished(records, svite, 1) is None
    changed = study.Row('dense', 'method=dense,width=32', 'changed', 'dense')
    assert study.finished(records, changed, 0) is None  # other settings: run again

    summary = study.summarize(records, [dense, svite])
    assert [s['seeds'] for s in summary] == [[0, 1], [0]]
    table = study.markdown(summary).splitlines()
    assert table[2].startswith('| dense ViT (width 64) | 89.06 ± 0.18 | 88.94 (s0), 89.19 (s1) |')
    assert table[2].endswith('| 71,878 | 1.28 | 6.0 |')
    assert table[3].startswith('| SViTE 0.5, reference | 87.98 | 87.98 (s0) |')  # no spread


def test_every_row_is_a_valid_config():
    # The study runs 3 seeds a row (docs/results.md); the token rows differ only by an override.
    assert all(row.seeds == 3 for row in study.STUDY)
    assert len({row.key for row in study.ROWS.values()}) == len(study.ROWS)
    for row in study.ROWS.values():
        config = config_lib.load(f'configs/fashion_mnist.py:{row.args},seed=0')
        for override in row.overrides:
            field, value = override.split('=')
            section, leaf = field.split('.')
            config[section][leaf] = type(config[section][leaf])(value)
        config_lib.validate(config)
        assert config.sparsity.method in config_lib.METHODS


def test_figure_one_point_per_row_with_its_spread():
    dense, svite, static = (study.ROWS[n] for n in ('dense', 'svite_0.5_ref', 'static_0.5'))
    records = [
        _record(dense, 0, 0.8894, gmacs=0.00243),
        _record(dense, 1, 0.8944, gmacs=0.00243),
        _record(svite, 0, 0.8798),
        _record(svite, 1, 0.8808),
        _record(static, 0, 0.8841),
    ]
    summary = study.summarize(records, [dense, svite, static])
    figure = plots.study_figure(summary, title='Fashion-MNIST: top-1 vs MACs')
    axis = figure.axes[0]
    assert axis.get_title() == 'Fashion-MNIST: top-1 vs MACs'
    bars = axis.containers  # one errorbar container per row
    points = [bar.lines[0] for bar in bars]
    # One point per row at (MMACs, mean), and no line joins two rows; the two rows at 1.28
    # MMACs are set apart by 2% of the axis' span (1.15 MMACs), around their MACs.
    step = 0.02 * (2.43 - 1.28)
    assert [p.get_xdata()[0] for p in points] == pytest.approx(
        [2.43, 1.28 - step / 2, 1.28 + step / 2]
    )
    assert [round(p.get_ydata()[0], 2) for p in points] == [89.19, 88.03, 88.41]
    assert all(p.get_linestyle() == 'None' for p in points)
    # Markers by family (dense o, svite s, static X), colours by row.
    assert [p.get_marker() for p in points] == ['o', 's', 'X']
    assert len({p.get_color() for p in points}) == 3
    # Error bars span mean ± std over seeds; a single seed has none (zero length).
    assert round(summary[0]['std'], 3) == 0.354
    spans = [bar.lines[2][0].get_segments()[0][:, 1] for bar in bars]
    assert [round(high - low, 3) for low, high in spans] == [0.707, 0.141, 0.0]
    assert [label.get_text() for label in axis.get_legend().get_texts()] == [
        'dense ViT (width 64) (n=2)',
        'SViTE 0.5, reference (n=2)',
        'static sparse, density 0.5 (n=1)',
    ]


def test_figure_of_the_whole_study_has_a_marker_per_family():
    records = [_record(row, seed, 0.88) for row in study.STUDY for seed in (0, 1)]
    summary = study.summarize(records, study.STUDY)
    figure = plots.study_figure(summary, title='all rows')
    markers = {}
    for row, bar in zip(summary, figure.axes[0].containers):
        markers.setdefault(row['family'], set()).add(bar.lines[0].get_marker())
    assert all(len(used) == 1 for used in markers.values())  # one marker per family
    assert len({next(iter(used)) for used in markers.values()}) == len(markers)  # distinct
    assert len(figure.axes[0].containers) == len(study.STUDY)
    # Every row's colour is far from every other's (tab10's own grey was reused once).
    rgb = np.array([colors.to_rgb(bar.lines[0].get_color()) for bar in figure.axes[0].containers])
    distances = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1) + np.eye(len(rgb))
    assert distances.min() > 0.2
