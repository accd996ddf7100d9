"""Property tests: the JAX updates against small NumPy/Python re-statements of the reference
rules (docs/reference.md §2.5, §3.2, §3.3), written independently of the implementation, plus the
invariants the rules imply.

Inputs are tie-heavy on purpose (small integers, many zeros) so ties, active exact zeros and
vanishing gradients are common. Integer-valued float32 data keeps float sums exact, so the
NumPy and XLA reductions agree bit for bit.
"""

import math

import jax
import numpy as np
from hypothesis import given, settings, strategies as st

from sparse_vit_jax.sparsity.prune_grow import (
    head_prune_grow,
    magnitude_prune_gradient_grow,
    neuron_prune_grow,
)

SHAPES = [(1,), (7,), (4, 6), (3, 5), (2, 3, 2, 2), (9, 4)]
rates = st.one_of(
    st.sampled_from([0.0, 0.005, 0.1, 0.25, 0.5, 0.75, 1.0]),
    st.floats(0.0, 1.0, width=32, allow_subnormal=False),
)


def f32_count(rate: float, n: int) -> int:
    """ceil(rate * n) in float32, the precision the implementation documents."""
    return math.ceil(float(np.float32(rate) * np.float32(n)))


# ----------------------------------------------------------------------------- re-statements


def reference_unstructured(w, g, m, rate, exact=False):
    size = m.size
    mag = np.abs(w.ravel())
    active = m.ravel().astype(bool)
    n = int(active.sum())
    if n == size:
        return active.reshape(m.shape)
    r = f32_count(rate, n)
    if r == 0:
        kept = mag != 0
    else:
        threshold = sorted(mag.tolist())[(size - n) + r - 1]
        kept = mag > threshold
    to_grow = n - int(kept.sum())
    score = [0.0 if kept[i] else abs(float(g.ravel()[i])) for i in range(size)]
    pool = [i for i in range(size) if not (exact and kept[i])]
    chosen = sorted(pool, key=lambda i: (-score[i], i))[:to_grow]
    new = kept.copy()
    new[chosen] = True
    return new.reshape(m.shape)


def reference_heads(taylor, gnorm, mask, rate):
    active = [h for h in range(len(mask)) if mask[h]]
    num = f32_count(rate, len(active))
    pruned = sorted(active, key=lambda h: (taylor[h], h))[:num]
    enabled = [h for h in active if h not in pruned]
    disabled = [h for h in range(len(mask)) if h not in enabled]
    grown = sorted(disabled, key=lambda h: (-gnorm[h], h))[:num]
    return np.array([h in enabled or h in grown for h in range(len(mask))])


def reference_neurons(fc1, fc2, g1, g2, mask, rate, exact=False):
    hidden = len(mask)
    n = int(mask.sum())
    r = f32_count(rate, n)
    s = [float(np.abs(fc1[:, j]).sum() + np.abs(fc2[j, :]).sum()) for j in range(hidden)]
    gnorm = [float(np.abs(g1[:, j]).sum() + np.abs(g2[j, :]).sum()) for j in range(hidden)]
    if exact:
        active = [j for j in range(hidden) if mask[j]]
        removed = sorted(active, key=lambda j: (s[j], j))[:r]
        kept = [j in active and j not in removed for j in range(hidden)]
        pool = [j for j in range(hidden) if not kept[j]]
        grown = sorted(pool, key=lambda j: (-gnorm[j], j))[:r]
        return np.array([kept[j] or j in grown for j in range(hidden)])
    threshold = sorted(s)[r + (hidden - n) - 1]  # Python list indexing: -1 wraps to the end
    kept = [x > threshold for x in s]
    gs = [0.0 if kept[j] else gnorm[j] for j in range(hidden)]
    grow_threshold = sorted(gs)[-r]  # -0 is index 0
    return np.array([kept[j] or gs[j] >= grow_threshold for j in range(hidden)])


# ----------------------------------------------------------------------------- data


@st.composite
def layers(draw, nonzero_grads=False):
    shape = draw(st.sampled_from(SHAPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
    mask = rng.random(shape) < density
    w = (rng.integers(-3, 4, shape) * mask).astype(np.float32)
    if nonzero_grads:
        g = (rng.integers(1, 4, shape) * rng.choice([-1, 1], shape)).astype(np.float32)
    else:
        g = (rng.integers(-2, 3, shape) * (rng.random(shape) < 0.6)).astype(np.float32)
    return w, g, mask, draw(rates)


# Jitted once per (shape, exact): much faster than eager dispatch over many examples.
_jitted_prune_grow = jax.jit(magnitude_prune_gradient_grow, static_argnames='exact')
_jitted_neurons = jax.jit(neuron_prune_grow, static_argnames='exact')
_jitted_heads = jax.jit(head_prune_grow)


def prune_grow(w, g, m, rate, exact=False):
    return np.asarray(_jitted_prune_grow(w, g, m, np.float32(rate), exact=exact))


# ----------------------------------------------------------------------------- unstructured


@settings(max_examples=150, deadline=None)
@given(layers(), st.booleans())
def test_unstructured_matches_restatement(layer, exact):
    w, g, m, rate = layer
    np.testing.assert_array_equal(
        prune_grow(w, g, m, rate, exact), reference_unstructured(w, g, m, rate, exact)
    )


@settings(max_examples=80, deadline=None)
@given(layers(nonzero_grads=True))
def test_count_preserved_when_all_gradients_nonzero(layer):
    w, g, m, rate = layer
    assert int(prune_grow(w, g, m, rate).sum()) == int(m.sum())


@settings(max_examples=80, deadline=None)
@given(layers())
def test_count_always_preserved_with_exact(layer):
    w, g, m, rate = layer
    assert int(prune_grow(w, g, m, rate, exact=True).sum()) == int(m.sum())


@settings(max_examples=80, deadline=None)
@given(layers(), st.booleans())
def test_growth_and_removal_order(layer, exact):
    w, g, m, rate = layer
    new = prune_grow(w, g, m, rate, exact)
    old = m.astype(bool)
    mag, grad = np.abs(w), np.abs(g)
    # Never grows a position that is not its turn: every newly active weight has a gradient at
    # least as large as every weight left inactive (all of those were growth candidates).
    added, inactive = new & ~old, ~new
    if added.any() and inactive.any():
        assert grad[added].min() >= grad[inactive].max()
    # Removal follows magnitude: an active weight no larger than a removed one was pruned too,
    # so if it is still active it was regrown, hence its gradient is at least the removed one's.
    removed = old & ~new
    for i in zip(*np.nonzero(removed)):
        smaller_survivors = old & new & (mag <= mag[i])
        assert (grad[smaller_survivors] >= grad[i]).all()
    # A dense layer is untouched.
    if old.all():
        assert new.all()


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(SHAPES[1:]), st.floats(0.01, 1.0))
def test_removed_are_exactly_the_r_smallest_active(seed, shape, rate):
    # Distinct nonzero magnitudes, no gradient on active weights and a nonzero gradient on every
    # inactive one: growth only re-enables inactive positions, so the removed set is observable.
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    mask = np.zeros(size, bool)
    n = int(rng.integers(1, size + 1)) if size > 1 else 1
    mask[rng.permutation(size)[:n]] = True
    if mask.all():
        mask[rng.integers(size)] = False
    n = int(mask.sum())
    w = np.zeros(size, np.float32)
    w[mask] = rng.permutation(n).astype(np.float32) + 1.0
    w *= rng.choice([-1, 1], size)
    g = np.where(mask, 0.0, rng.integers(1, 5, size)).astype(np.float32)
    r = f32_count(rate, n)
    if (size - n) < r:  # not enough candidates to refill with non-kept positions
        return
    new = prune_grow(w.reshape(shape), g.reshape(shape), mask.reshape(shape), rate, True).ravel()
    removed = np.flatnonzero(mask & ~new)
    smallest = np.flatnonzero(mask)[np.argsort(np.abs(w[mask]))[:r]]
    assert sorted(removed.tolist()) == sorted(smallest.tolist())


# ----------------------------------------------------------------------------- structured


@st.composite
def blocks(draw):
    hidden, heads = draw(st.integers(1, 10)), draw(st.integers(1, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mask = rng.random(hidden) < draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    fc1 = (rng.integers(-2, 3, (3, hidden)) * mask[None, :]).astype(np.float32)
    fc2 = (rng.integers(-2, 3, (hidden, 3)) * mask[:, None]).astype(np.float32)
    sparse_grad = rng.random() < 0.5
    g1 = (
        rng.integers(-2, 3, (3, hidden)) * (rng.random((3, hidden)) < (0.2 if sparse_grad else 1))
    ).astype(np.float32)
    g2 = rng.integers(-2, 3, (hidden, 3)).astype(np.float32) * (not sparse_grad)
    head_mask = rng.random(heads) < 0.6
    taylor = rng.integers(0, 3, heads).astype(np.float32)
    gnorm = rng.integers(0, 3, heads).astype(np.float32)
    return (fc1, fc2, g1, g2, mask), (taylor, gnorm, head_mask), draw(rates)


@settings(max_examples=150, deadline=None)
@given(blocks(), st.booleans())
def test_neurons_match_restatement(block, exact):
    (fc1, fc2, g1, g2, mask), _, rate = block
    got = np.asarray(_jitted_neurons(fc1, fc2, g1, g2, mask, np.float32(rate), exact=exact))
    np.testing.assert_array_equal(got, reference_neurons(fc1, fc2, g1, g2, mask, rate, exact))
    if exact:
        assert int(got.sum()) == int(mask.sum())


@settings(max_examples=150, deadline=None)
@given(blocks())
def test_heads_match_restatement_and_preserve_count(block):
    _, (taylor, gnorm, head_mask), rate = block
    got = np.asarray(_jitted_heads(taylor, gnorm, head_mask, np.float32(rate)))
    np.testing.assert_array_equal(got, reference_heads(taylor, gnorm, head_mask, rate))
    assert int(got.sum()) == int(head_mask.sum())
