"""Benchmarks (sparse_vit_jax/benchmark, tools/benchmark.py) on tiny inputs: every measurement
returns its documented keys with sane values, compared programs really alternate, the sparse
update steps really update, and the timm comparison fails with one clear line without torch.

The timm smoke run needs torch and timm (neither is a dependency):
    PYTHONPATH=.:/tmp/torch_timm python -m pytest tests/test_benchmark.py -k timm -rs
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

from sparse_vit_jax import benchmark, flops
from sparse_vit_jax import config as config_lib
from sparse_vit_jax.benchmark import jax_bench, measure, timing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENVIRONMENT_KEYS = {'devices', 'jax_version', 'xla_flags', 'date', 'machine', 'peak_rss_mb'}
SIDE_KEYS = {
    'images_per_sec',
    'step_time_ms',
    'timed_steps',
    'compile_seconds',
    'xla_gflops_per_image',
    'achieved_gflops_per_sec',
}
_CACHE_FLAGS = {
    'jax_compilation_cache_dir': None,
    'jax_persistent_cache_min_compile_time_secs': 0.0,
    'jax_persistent_cache_min_entry_size_bytes': 0,
}


@pytest.fixture(scope='module', autouse=True)
def _compile_once(tmp_path_factory):
    """Several tests build the same tiny train step: a compilation cache for this module only
    (restored afterwards) compiles it once."""
    saved = {name: getattr(jax.config, name) for name in _CACHE_FLAGS}
    values = dict(_CACHE_FLAGS, jax_compilation_cache_dir=str(tmp_path_factory.mktemp('xla')))
    for name, value in values.items():
        jax.config.update(name, value)
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


def _check_step_times(side, steps):
    ms = side['step_time_ms']
    assert 0 < ms['p10'] <= ms['median'] <= ms['p90'] < 60_000
    assert side['timed_steps'] == steps and side['images_per_sec'] > 0


# ----------------------------------------------------------------------------- timing


def test_alternate_warms_up_then_interleaves_blocks():
    calls = []
    runners = [
        timing.Runner('a', lambda: calls.append('a'), images=4, per_block=2, warmup=1),
        timing.Runner('b', lambda: calls.append('b'), images=4, per_block=1, warmup=2),
    ]
    timings = timing.alternate(runners, rounds=3)
    assert calls == ['a', 'b', 'b'] + ['a', 'a', 'b'] * 3
    assert timings.order == ['a', 'b'] * 3
    assert [len(timings.seconds[n]) for n in 'ab'] == [6, 3]
    assert all(s >= 0 for s in timings.seconds['a'] + timings.cpu_seconds['b'])
    assert timing.rounds_for(5, 2) == (3, 2) and timing.rounds_for(1, 4) == (1, 1)


def test_summary_is_the_median_step_and_its_spread():
    summary = timing.summarize([0.1, 0.3, 0.2, 0.2, 1.0], images=8)
    assert summary['step_time_ms']['median'] == pytest.approx(200.0)
    assert summary['images_per_sec'] == pytest.approx(40.0)
    assert summary['step_time_ms']['p10'] == pytest.approx(140.0)
    assert summary['step_time_ms']['p90'] == pytest.approx(720.0)
    # One update step in ΔT = 4: three regular steps of 1 s and one of 5 s average 2 s.
    assert measure.amortized_step_seconds(1.0, 5.0, 4) == pytest.approx(2.0)


# ----------------------------------------------------------------------------- train / infer


def test_model_train_step_speed_has_the_documented_keys():
    result = benchmark.model_speed('train', 'vit_test', batch=8, steps=3, warmup=1)
    assert SIDE_KEYS | ENVIRONMENT_KEYS | {'mode', 'model', 'batch', 'recipe'} <= set(result)
    _check_step_times(result, 3)
    assert result['images_per_sec'] == pytest.approx(8e3 / result['step_time_ms']['median'])
    # A train step costs about three forwards; vit_test's forward is ~0.9 MFLOP per image.
    assert 1.5e-3 < result['xla_gflops_per_image'] < 5e-3
    assert result['achieved_gflops_per_sec'] == pytest.approx(
        result['xla_gflops_per_image'] * result['images_per_sec']
    )
    assert result['compile_seconds'] > 0 and result['peak_rss_mb'] > 100
    assert result['devices']['count'] == jax.device_count()
    assert result['order'] == ['jax', 'matmul']  # the matmul ceiling is timed in the same run
    assert result['matmul_gflops_per_sec'] > 1
    assert result['fraction_of_matmul_rate'] == pytest.approx(
        result['achieved_gflops_per_sec'] / result['matmul_gflops_per_sec']
    )
    json.dumps(result)  # JSON-able as it is


def _tiny(tiny_config, arg):
    """The tiny test config at depth 1 (compiles fastest)."""
    return tiny_config(arg=arg, **{'model.depth': 1})


S2VITE = 'method=s2vite,head_density=0.5,neuron_density=0.5'


def test_sparse_train_overhead_alternates_and_amortizes_real_update_steps(tiny_config):
    config = _tiny(tiny_config, S2VITE)
    result = benchmark.sparse_train_overhead(config, batch=4, steps=4, warmup=1, block=2)
    # ΔT = 100 steps at batch 128 is 3200 steps at batch 4; the run raises if the update steps
    # left the topology alone.
    assert result['update_every'] == 3200
    assert result['order'] == ['dense', 'regular', 'update'] * 2
    for side in result['measurements'].values():
        _check_step_times(side, 4)
        assert SIDE_KEYS <= set(side)
    t = {k: v['step_time_ms']['median'] for k, v in result['measurements'].items()}
    assert result['step_time_ms'] == pytest.approx((3199 * t['regular'] + t['update']) / 3200)
    assert result['overhead'] == pytest.approx(result['step_time_ms'] / t['dense'] - 1)
    assert result['dense_images_per_sec'] == pytest.approx(4e3 / t['dense'])
    assert result['images_per_sec'] == pytest.approx(4e3 / result['step_time_ms'])


def test_update_bench_updates_the_topology_at_delta_t(tiny_config):
    """The count argument puts the step at t = ΔT: the transformation's own predicate fires."""
    config = jax_bench.with_batch(_tiny(tiny_config, S2VITE), 4)  # compiled above already
    bench = jax_bench.TrainBench(config)
    heads = lambda: np.asarray(bench.state.masks['heads'])
    initial = heads()
    for _ in range(3):  # regular steps: t = 1
        bench.step(bench.count(0))
    assert bench.last_update_step() == 0 and (heads() == initial).all()
    bench.step(bench.count(bench.update_every - 1))
    assert bench.last_update_step() == bench.update_every == 3200
    assert (heads().sum(1) == 2).all()  # the update keeps the head count


def test_save_speed_of_both_mask_layouts_and_the_overlap(tiny_config, tmp_path):
    from sparse_vit_jax.benchmark.save import save_speed

    config = _tiny(tiny_config, S2VITE)  # the train step compiled above already
    result = save_speed(config, batch=4, saves=1, workdir=str(tmp_path))
    once, twice = result['masks_once'], result['masks_twice']
    for side in (once, twice):
        assert {'params', 'masks', 'opt_state', 'train', 'meta'} <= set(side['item_bytes'])
        assert side['bytes'] == sum(side['item_bytes'].values())
        assert 0 < side['return_s'] <= side['complete_s']
    # Only the optimizer state differs: by the masks it no longer holds. How many bytes that is
    # on a tiny model depends on how OCDBT batched the writes (3.0k to 10k seen for a 10k masks
    # item), so only the sign is asserted; tests/train/test_checkpoint_masks.py checks the
    # layout array by array.
    assert twice['item_bytes']['opt_state'] > once['item_bytes']['opt_state']
    assert result['once_vs_twice']['bytes'] == once['bytes'] / twice['bytes'] < 1
    overlap = result['overlap']
    assert min(overlap['save_s'], overlap['step_s'], overlap['save_with_step_s']) > 0
    assert ENVIRONMENT_KEYS <= set(result)
    json.dumps(result)


def test_inference_saving_of_slim_token_model(tiny_config):
    config = _tiny(
        tiny_config, 'method=s2viteplus,head_density=0.5,neuron_density=0.5,keep_tokens=9'
    )
    result = benchmark.inference_saving(config, batch=4, steps=2, warmup=1, block=1)
    assert result['deployed'] == 'slim, tokens dropped'
    assert result['order'] == ['dense', 'model'] * 2
    for side in result['measurements'].values():
        _check_step_times(side, 2)
    report = flops.report_from_config(config, xla=False)
    assert result['flops_saving'] == pytest.approx(report['saving'])
    # Half the heads and neurons and 9 of 17 tokens: XLA sees most of the work gone.
    assert 0.4 < result['xla_flops_saving'] < 0.9 and 0.4 < result['slim_flops_saving'] < 0.9
    t = {k: v['step_time_ms']['median'] for k, v in result['measurements'].items()}
    assert result['time_saving'] == pytest.approx(1 - t['model'] / t['dense'])
    assert result['time_over_flops_saving'] == pytest.approx(
        result['time_saving'] / result['flops_saving']
    )


def test_deployed_slim_model_keeps_the_configured_units(tiny_config):
    config = _tiny(tiny_config, 'method=s2vite,head_density=0.5,neuron_density=0.25')
    model, params, kind = measure.deployed_model(config)
    assert kind == 'slim' and model.heads_per_layer == (2,) and model.mlp_per_layer == (16,)
    assert params['blocks_0']['mlp']['fc1']['kernel'].shape == (32, 16)


# ----------------------------------------------------------------------------- input


def test_input_pipeline_speed_and_train_demand(capsys):
    result = benchmark.input_speed(
        config_lib.load('configs/dense.py:model=deit_tiny'),
        num_images=16,
        batch=8,
        augment='light',
        passes=2,
        warmup_passes=1,
        train_demand_model='vit_test',
        train_steps=2,
        vs_float32=True,
    )
    assert result['order'] == ['input', 'input_float32', 'train'] * 2
    assert capsys.readouterr().out == ''  # stdout is the result's alone (--json)
    # uint8 images and int32 labels cross to the devices; the host-normalized float32 images
    # were 4 times the bytes.
    assert result['bytes_per_batch'] == 8 * (224 * 224 * 3 + 4)
    assert result['float32']['bytes_per_batch'] == 8 * (224 * 224 * 3 * 4 + 4)
    assert result['uint8_vs_float32']['bytes_per_batch'] == pytest.approx(0.25, abs=1e-4)
    assert result['uint8_vs_float32']['images_per_sec'] > 0
    assert result['images_per_pass'] == 16 and len(result['pass_images_per_sec']) == 2
    assert result['pipeline']['randaugment'] == '' and result['pipeline']['image_size'] == 224
    rates = result['pass_images_per_sec']
    assert min(rates) <= result['images_per_sec'] <= max(rates)
    assert result['steady_images_per_sec'] > 0 and result['first_batch_seconds'] > 0
    assert result['images_per_cpu_second'] > 0
    assert result['images_per_sec_per_core'] == pytest.approx(
        result['images_per_sec'] / os.cpu_count()
    )
    assert result['ratio'] == pytest.approx(
        result['steady_images_per_sec'] / result['train_demand_images_per_sec']
    )
    assert ENVIRONMENT_KEYS <= set(result)


# ----------------------------------------------------------------------------- command line


def _tool(*args, pythonpath=REPO):
    """tools/benchmark.py with only `pythonpath` importable beyond the venv (no torch)."""
    env = dict(os.environ, PYTHONPATH=pythonpath, TF_CPP_MIN_LOG_LEVEL='2')
    return subprocess.run(
        [sys.executable, 'tools/benchmark.py', *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_command_line_prints_the_json_contract():
    result = _tool('infer', '--model', 'vit_test', '--batch', '4', '--steps', '2', '--json')
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert SIDE_KEYS | ENVIRONMENT_KEYS <= set(report) and report['mode'] == 'infer'
    assert report['images_per_sec'] > 0 and report['timed_steps'] == 2


def test_vs_timm_without_torch_says_how_to_install_it():
    result = _tool('train', '--model', 'vit_test', '--vs_timm')
    assert result.returncode == 1
    assert 'Traceback' not in result.stderr
    assert 'error: ' in result.stderr and 'docs/benchmarks.md' in result.stderr
    assert 'PYTHONPATH=.:/tmp/torch_timm' in result.stderr


def test_vs_timm_smoke():
    pytest.importorskip('torch')
    from sparse_vit_jax.benchmark import timm_torch

    try:
        timm_torch.import_torch_timm()
    except timm_torch.TimmUnavailableError as error:
        pytest.skip(str(error))
    result = benchmark.model_speed('train', 'vit_test', batch=8, steps=1, warmup=1, vs_timm=True)
    assert result['order'] == ['jax', 'matmul', 'timm']
    assert result['timm_fraction_of_matmul_rate'] == pytest.approx(
        result['fraction_of_matmul_rate'] / result['ratio']
    )
    assert result['timm_images_per_sec'] > 0
    assert result['ratio'] == pytest.approx(
        result['images_per_sec'] / result['timm_images_per_sec']
    )
    config = jax_bench.model_bench_config('vit_test', 8)
    params = jax_bench.random_params(config, jax_bench.create_model_from_config(config.model))
    # The same network in timm: as many parameters as ours.
    assert result['timm']['params'] == sum(np.size(p) for p in jax.tree.leaves(params))
