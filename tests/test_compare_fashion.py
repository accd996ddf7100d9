"""The Fashion-MNIST study's bookkeeping (sparse_vit_jax.study, used by tools/compare_fashion.py):
the run log survives a torn line, finished runs are recognized by their exact settings, and the
table gives mean ± std over seeds with every seed's value."""

from sparse_vit_jax import config as config_lib
from sparse_vit_jax import study


def _record(row, seed, top1, **fields):
    return dict(
        name=row.name,
        key=row.key,
        seed=seed,
        top1=top1,
        gmacs=0.00128,
        nonzero_params=71878,
        train_seconds=360.0,
        epochs=15.0,
        **fields,
    )


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
    for row in study.ROWS.values():
        config = config_lib.load(f'configs/fashion_mnist.py:{row.args},seed=0')
        for override in row.overrides:
            field, value = override.split('=')
            section, leaf = field.split('.')
            config[section][leaf] = type(config[section][leaf])(value)
        config_lib.validate(config)
        assert config.sparsity.method in config_lib.METHODS
