"""The Fashion-MNIST comparison's results table (tools/compare_fashion.py)."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool():
    path = os.path.join(ROOT, 'tools', 'compare_fashion.py')
    spec = importlib.util.spec_from_file_location('compare_fashion', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(name, seed, top1, **fields):
    return dict(
        dict(name=name, seed=seed, top1=top1, description=name, nonzero_params=50, num_params=100),
        gmacs=0.00128,
        saving=0.472,
        **fields,
    )


def test_table_rows_follow_the_method_order_with_mean_std_and_every_seed():
    tool = _tool()
    results = [
        _run('svite_0.5', 0, 0.8798),
        _run('dense', 1, 0.8919),
        _run('dense', 0, 0.8894),
    ]
    table = tool.markdown(results, ['0', '1']).splitlines()
    dense, svite = table[4], table[5]  # header line, blank, column names, rule, rows
    assert dense.startswith('| dense | 89.06 ± 0.18 | 89.19 (s1), 88.94 (s0) | 50 / 100 | 1.28 |')
    assert svite.startswith('| svite_0.5 | 87.98 | 87.98 (s0) |')  # one seed: no spread
    assert dense.endswith('| 47.2% |') and len(table) == 6
