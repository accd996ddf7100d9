"""Smoke test of tools/benchmark_input.py, so the tool keeps working."""

import importlib.util
import pathlib

import pytest

_TOOL = pathlib.Path(__file__).resolve().parents[2] / 'tools' / ('benchmark_input.py')


def test_benchmark_runs_on_a_tiny_fake_dataset(tmp_path):
    spec = importlib.util.spec_from_file_location('benchmark_input', _TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    result = tool.run(
        16,
        (24, 32),
        batch_size=8,
        passes=2,
        warmup_passes=1,
        workdir=str(tmp_path),
        check_jpeg=True,
        image_size=16,
        randaugment=None,
        reprob=0.25,
    )
    assert result['num_images'] == 16
    assert len(result['pass_images_per_sec']) == 2
    assert result['images_per_sec'] > 0 and result['images_per_cpu_second'] > 0
    assert result['images_per_sec_per_core'] * result['cpu_count'] == (
        pytest.approx(result['images_per_sec'])
    )
