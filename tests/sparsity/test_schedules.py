"""Prune-rate cosine, update-step predicate, ΔT rescaling and Gumbel tau (docs/reference.md
§2.4, §4.2)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sparse_vit_jax.sparsity import schedules

SMALL_T = 1_501_200  # 2,502 it/epoch x 600 epochs (Tiny/Small at global batch 512)
BASE_T = 750_600  # 1,251 it/epoch x 600 epochs (Base at global batch 1024)


def torch_cosine_annealing(base: float, eta_min: float, total: int, steps: int) -> list[float]:
    """Independent re-statement of torch's recursive CosineAnnealingLR (the reference's
    CosineDecay), returning the rate after 1..steps scheduler steps."""
    rates, lr = [], base
    for t in range(1, steps + 1):
        if (t - 1 - total) % (2 * total) == 0:
            lr = lr + (base - eta_min) * (1 - math.cos(math.pi / total)) / 2
        else:
            lr = (1 + math.cos(math.pi * t / total)) / (1 + math.cos(math.pi * (t - 1) / total)) * (
                lr - eta_min
            ) + eta_min
        rates.append(lr)
    return rates


def test_prune_rate_matches_recursive_torch_schedule():
    expected = torch_cosine_annealing(0.5, 0.005, 100, 100)
    got = schedules.prune_rate(jnp.arange(1, 101), 100)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6, atol=1e-7)


def test_prune_rate_golden_values_small():
    first = float(schedules.prune_rate(15_000, SMALL_T))
    last = float(schedules.prune_rate(1_200_000, SMALL_T))
    assert round(first, 4) == 0.4999
    assert round(last, 3) == 0.053 and abs(last - 0.052) < 1e-3  # "≈0.052" in REFERENCE §1.4
    assert float(schedules.prune_rate(0, SMALL_T)) == pytest.approx(0.5)
    assert float(schedules.prune_rate(SMALL_T, SMALL_T)) == pytest.approx(0.005)


def test_prune_rate_jits_with_traced_step():
    f = jax.jit(lambda t: schedules.prune_rate(t, SMALL_T))
    assert float(f(jnp.int32(15_000))) == pytest.approx(
        float(schedules.prune_rate(15_000, SMALL_T))
    )


@settings(max_examples=50, deadline=None)
@given(total=st.integers(1, 10_000), frac_a=st.floats(0, 1), frac_b=st.floats(0, 1))
def test_prune_rate_is_monotone_and_bounded(total, frac_a, frac_b):
    a, b = sorted((int(frac_a * total), int(frac_b * total)))
    ra, rb = float(schedules.prune_rate(a, total)), float(schedules.prune_rate(b, total))
    assert 0.005 - 1e-6 <= rb <= ra + 1e-6 <= 0.5 + 2e-6


def test_update_steps_small_recipe():
    steps = jnp.arange(0, SMALL_T + 1, dtype=jnp.int32)
    updates = np.flatnonzero(np.asarray(schedules.is_update_step(steps, 15_000, SMALL_T)))
    assert len(updates) == 80 == schedules.num_update_steps(15_000, SMALL_T)
    assert updates[0] == 15_000 and updates[-1] == 1_200_000


def test_update_steps_base_recipe():
    steps = jnp.arange(0, BASE_T + 1, dtype=jnp.int32)
    assert int(schedules.is_update_step(steps, 7_000, BASE_T).sum()) == 85
    assert schedules.num_update_steps(7_000, BASE_T) == 85


def test_update_step_bound_is_strict():
    # t_end * T = 8 exactly: t = 8 is not an update (strict <), t = 4 is.
    assert schedules.last_update_step_bound(10, 0.8) == 7
    assert [bool(schedules.is_update_step(t, 4, 10)) for t in (0, 4, 8)] == [False, True, False]
    assert [bool(schedules.is_update_step(t, 2, 10)) for t in range(1, 11)] == [
        False,
        True,
        False,
        True,
        False,
        True,
        False,
        False,
        False,
        False,
    ]


def test_update_step_jits_with_traced_step():
    f = jax.jit(lambda t: schedules.is_update_step(t, 15_000, SMALL_T))
    assert [bool(f(jnp.int32(t))) for t in (15_000, 15_001, 1_200_000, 1_215_000)] == [
        True,
        False,
        True,
        False,
    ]


@settings(max_examples=40, deadline=None)
@given(
    total=st.integers(1, 400), every=st.integers(1, 50), t_end=st.floats(0.0, 1.0, allow_nan=False)
)
def test_update_step_matches_python_predicate(total, every, t_end):
    steps = np.arange(0, 401, dtype=np.int32)  # one fixed shape: no recompilation per example
    got = np.asarray(schedules.is_update_step(steps, every, total, t_end))[: total + 1]
    expected = [t >= 1 and t % every == 0 and t < t_end * total for t in range(total + 1)]
    assert got.tolist() == expected
    assert schedules.num_update_steps(every, total, t_end) == sum(expected)


def test_scale_update_every():
    assert schedules.scale_update_every(15_000, 512, 512) == 15_000
    assert schedules.scale_update_every(15_000, 512, 1024) == 7_500
    assert schedules.scale_update_every(15_000, 512, 4096) == 1_875
    assert schedules.scale_update_every(7_000, 1024, 4096) == 1_750
    assert schedules.scale_update_every(15_000, 512, 128) == 60_000
    assert schedules.scale_update_every(1, 512, 4096) == 1


@pytest.mark.parametrize('args', [(0, 512, 512), (100, 0, 512), (100, 512, -1), (100, 512, 1.5)])
def test_scale_update_every_validates(args):
    with pytest.raises(ValueError):
        schedules.scale_update_every(*args)


@settings(max_examples=50, deadline=None)
@given(
    every=st.integers(1, 100_000),
    ref=st.sampled_from([256, 512, 1024]),
    batch=st.sampled_from([64, 128, 512, 1024, 4096]),
)
def test_scale_update_every_keeps_examples_between_updates(every, ref, batch):
    scaled = schedules.scale_update_every(every, ref, batch)
    assert scaled >= 1
    if every * ref >= batch:
        assert abs(scaled * batch - every * ref) <= batch / 2


def test_gumbel_temperature_linear():
    assert float(schedules.gumbel_temperature(0, 1000, 10.0, 0.1)) == pytest.approx(10.0)
    assert float(schedules.gumbel_temperature(500, 1000, 10.0, 0.1)) == pytest.approx(5.05)
    assert float(schedules.gumbel_temperature(1000, 1000, 10.0, 0.1)) == pytest.approx(0.1)
    f = jax.jit(lambda t: schedules.gumbel_temperature(t, 1000, 0.1, 10.0))
    assert float(f(jnp.int32(250))) == pytest.approx(0.1 + 9.9 / 4)


def test_schedules_validate_total_steps():
    with pytest.raises(ValueError):
        schedules.prune_rate(1, 0)
    with pytest.raises(ValueError):
        schedules.is_update_step(1, 0, 10)
