"""FLOPs: the paper's convention (docs/reference.md §6) against its published points, monotone
savings, XLA's count of the compiled forward, and tools/flops.py."""

import json
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_vit_jax import config as config_lib
from sparse_vit_jax import flops
from sparse_vit_jax.models import model_kwargs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY, SMALL, BASE = (model_kwargs(n) for n in ('deit_tiny', 'deit_small', 'deit_base'))


def _hand_macs(dim, heads, tokens=197, hidden=None, classes=1000):
    """docs/reference.md §6 written out once more, independently of flops.py."""
    hd, hidden = dim // heads, hidden or 4 * dim
    block = tokens * dim * 3 * dim + 2 * heads * tokens**2 * hd + tokens * dim * dim
    block += 2 * tokens * dim * hidden
    return 196 * dim * 768 + 12 * block + dim * classes


@pytest.mark.parametrize(
    'kwargs, dim, heads, gmacs, figure',
    [(TINY, 192, 3, 1.25, 8.0), (SMALL, 384, 6, 4.6, 29.4), (BASE, 768, 12, 17.6, 112.4)],
)
def test_dense_deit_macs_match_the_paper(kwargs, dim, heads, gmacs, figure):
    macs = flops.paper_macs(kwargs)
    assert macs == _hand_macs(dim, heads)
    assert macs / 1e9 == pytest.approx(gmacs, rel=0.01)
    # The repository figure's x-axis: MACs of a batch of 64, in units of 1e10 (dense stars).
    assert macs * 64 / 1e10 == pytest.approx(figure, rel=0.005)


def test_sviteplus_small_saving_matches_the_abstract():
    """Abstract: DeiT-Small at (5% data, 50% architecture) sparsity saves 49.32% FLOPs, i.e.
    k = 187 tokens and density 0.5 (ERK)."""
    saving = 1 - flops.paper_macs(SMALL, density=0.5, keep_tokens=187) / flops.paper_macs(SMALL)
    assert saving == pytest.approx(0.4932, abs=0.002)


def test_unstructured_scales_weight_terms_by_erk_density_and_keeps_attention_dense():
    layers = flops.macs_by_layer(TINY, density=0.5)
    dense = flops.macs_by_layer(TINY)
    densities = flops.erk_densities(TINY, 0.5)
    assert set(densities) | {f'blocks_{i}/attn/matmuls' for i in range(12)} == set(layers)
    for name, macs in layers.items():
        assert macs == pytest.approx(dense[name] * densities.get(name, 1.0), rel=1e-12)
    assert layers['blocks_3/attn/matmuls'] == dense['blocks_3/attn/matmuls']


def test_structured_counts_kept_units_with_a_full_proj_and_slim_shrinks_proj():
    """Small at (0.7, 0.6): 4 of 6 heads (s_d = 256), 921 of 1536 neurons per block."""
    layers = flops.macs_by_layer(SMALL, head_density=0.7, neuron_density=0.6, keep_tokens=99)
    n = 99
    assert layers['blocks_0/attn/qkv/kernel'] == n * 384 * 3 * 256
    assert layers['blocks_0/attn/matmuls'] == 2 * 4 * n**2 * 64
    assert layers['blocks_0/attn/proj/kernel'] == n * 384 * 384
    assert layers['blocks_0/mlp/fc1/kernel'] == n * 384 * 921
    assert layers['patch_embed/kernel'] == 196 * 384 * 768  # the conv sees every patch
    slim = flops.macs_by_layer(
        SMALL, head_density=0.7, neuron_density=0.6, keep_tokens=99, slim=True
    )
    assert slim['blocks_0/attn/proj/kernel'] == n * 256 * 384
    with pytest.raises(ValueError, match='not both'):
        flops.paper_macs(SMALL, density=0.5, head_density=0.7)


def _saving(**kwargs):
    return 1 - flops.paper_macs(SMALL, **kwargs) / flops.paper_macs(SMALL)


@pytest.mark.parametrize(
    'argument, values',
    [
        ('density', (1.0, 0.9, 0.7, 0.5, 0.3, 0.1, 0.02)),
        ('head_density', (1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6)),
        ('neuron_density', (1.0, 0.9, 0.6, 0.3, 0.01)),
        ('keep_tokens', (197, 187, 177, 138, 99, 50, 1)),
    ],
)
def test_savings_rise_monotonically_as_density_heads_or_tokens_fall(argument, values):
    savings = [_saving(**{argument: value}) for value in values]
    assert savings[0] == pytest.approx(0.0, abs=1e-12)
    assert all(a < b for a, b in zip(savings, savings[1:])), savings


@settings(max_examples=25, deadline=None)
@given(
    heads=st.integers(1, 6),
    neurons=st.integers(1, 1536),
    k1=st.integers(1, 197),
    k2=st.integers(1, 197),
)
def test_fewer_tokens_always_save_more_at_any_structured_point(heads, neurons, k1, k2):
    densities = dict(head_density=heads / 6, neuron_density=neurons / 1536)
    low, high = sorted((k1, k2))
    assert _saving(keep_tokens=low, **densities) >= _saving(keep_tokens=high, **densities)
    if low < high:
        assert _saving(keep_tokens=low, **densities) > _saving(keep_tokens=high, **densities)


def test_xla_flops_of_the_dense_tiny_forward():
    """2.535 GFLOP per image: 2 per MAC of the 1.2537 GMACs (2.507), plus softmax, GELU and
    LayerNorm. (It was 2.645 with jax.nn.dot_product_attention, docs/benchmarks.md, which normalizes
    the N×N attention weights; models/vit.py:attention normalizes the N×hd output instead.)"""
    assert flops.xla_flops(TINY) / 1e9 == pytest.approx(2.535, rel=0.01)


def test_xla_sees_dropped_tokens_and_slim_models_but_not_zeroed_tokens():
    test = model_kwargs('vit_test')
    dense = flops.xla_flops(test)
    dropped = flops.xla_flops(dict(test, keep_tokens=9, token_mode='drop'))
    zeroed = flops.xla_flops(dict(test, keep_tokens=9, token_mode='zero'))
    masked = flops.xla_flops(dict(test, keep_tokens=9, token_mode='mask'))
    slim = flops.xla_flops(flops.slim_kwargs(test, 0.5, 0.5))
    assert dropped < 0.7 * dense and slim < 0.7 * dense
    assert dense < zeroed < 1.01 * dense  # the scorer is the only extra work
    assert masked == dropped  # 'mask' mode evaluates by gathering, as 'drop' does


def test_flops_tool_prints_the_json_fields():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=REPO)
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, 'tools', 'flops.py'),
            '--config',
            os.path.join(REPO, 'configs', 'fashion_mnist.py') + ':method=s2viteplus',
            '--json',
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    expected = flops.report(
        dict(model_kwargs('vit_fashion'), keep_tokens=15),
        head_density=0.5,
        neuron_density=0.5,
        channels=1,
        xla=False,
    )
    for key in ('gmacs', 'dense_gmacs', 'saving', 'slim_gmacs'):
        assert report[key] == pytest.approx(expected[key], rel=1e-9)
    assert 0 < report['saving'] < 1 and report['slim_gmacs'] < report['gmacs']
    assert 0 < report['xla_gflops'] < report['xla_dense_gflops']


def test_sviteplus_config_reaches_the_report():
    sviteplus = config_lib.config_file('configs/sviteplus.py')

    for arg, keep in (('keep_tokens=138', 138), ('method=s2viteplus,keep_tokens=99', 99)):
        config = sviteplus.get_config(arg)
        config_lib.validate(config)
        report = flops.report_from_config(config, xla=False)
        assert report['keep_tokens'] == keep
        if 's2vite' in arg:
            assert (report['head_density'], report['neuron_density']) == (0.7, 0.6)
            assert (
                report['gmacs']
                == flops.paper_macs(SMALL, head_density=0.7, neuron_density=0.6, keep_tokens=99)
                / 1e9
            )
        else:
            assert report['density'] == 0.5
    config = sviteplus.get_config('tau=paper,fidelity=improved')
    assert (config.tokens.tau_start, config.tokens.tau_end) == (0.1, 10.0)
    assert (config.tokens.mode, config.tokens.eval_mode) == ('drop', 'topk')
    assert sviteplus.get_config('').tokens.mode == 'zero'
