"""Hand-computed cases for the three prune/grow updates, plus jit and vmap equivalence.

Every expected mask below was worked out by hand from the rules in docs/reference.md §2.5, §3.2
and §3.3.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_vit_jax.sparsity.prune_grow import (
    head_prune_grow,
    magnitude_prune_gradient_grow,
    neuron_prune_grow,
)


def as_list(x):
    return np.asarray(x).astype(bool).tolist()


def positions(*idx, size):
    out = [False] * size
    for i in idx:
        out[i] = True
    return out


def unstructured(w, g, m, rate, **kw):
    return as_list(
        magnitude_prune_gradient_grow(
            jnp.asarray(w, jnp.float32),
            jnp.asarray(g, jnp.float32),
            jnp.asarray(m, bool),
            rate,
            **kw,
        )
    )


# ----------------------------------------------------------------------------- unstructured


def test_unstructured_basic():
    # active |W| = .5 .1 .3 .2 .9 (n 5, z 3); r = ceil(.4*5) = 2; thr = sorted(|W|)[4] = .2
    # kept {1, 4, 7}; grow 2 largest |g| among the rest: idx 6 (3) and idx 2 (2).
    w = [0.0, 0.5, 0.0, 0.1, 0.3, 0.2, 0.0, 0.9]
    g = [1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 3.0, 0.0]
    m = [x != 0 for x in w]
    assert unstructured(w, g, m, 0.4) == positions(1, 2, 4, 6, 7, size=8)


def test_unstructured_ties_at_threshold_are_pruned_and_regrown_count():
    # n 4, z 1, r = ceil(.25*4) = 1, thr = sorted[1] = 1 -> both 1s pruned (2 instead of 1),
    # so 2 are grown: idx 0 (5) and idx 2 (4, just pruned, comes back).
    w = [0.0, 1.0, 1.0, 2.0, 3.0]
    g = [5.0, 0.0, 4.0, 0.0, 0.0]
    m = [False, True, True, True, True]
    assert unstructured(w, g, m, 0.25) == positions(0, 2, 3, 4, size=5)


def test_unstructured_active_exact_zero_is_pruned():
    # position 1 is active but exactly 0. n 3, z 1, r = ceil(.3*3) = 1, thr = sorted[1] = 0,
    # kept = |W| > 0 = {2, 3}; 1 grown: position 0 has the larger gradient.
    w = [0.0, 0.0, 2.0, 3.0]
    m = [False, True, True, True]
    assert unstructured(w, [3.0, 1.0, 0.0, 0.0], m, 0.3) == positions(0, 2, 3, size=4)
    # with the larger gradient on the active zero, it is pruned and regrown in the same update
    assert unstructured(w, [1.0, 3.0, 0.0, 0.0], m, 0.3) == positions(1, 2, 3, size=4)


def test_unstructured_r_zero_uses_weights_not_mask():
    # rate 0 -> r = 0 -> prune result is W != 0 (the active zero at 1 drops), then one grown.
    w = [0.0, 0.0, 2.0, 3.0]
    m = [False, True, True, True]
    assert unstructured(w, [3.0, 1.0, 0.0, 0.0], m, 0.0) == positions(0, 2, 3, size=4)


def test_unstructured_dense_layer_is_skipped():
    w = [0.0, 1.0, 0.0, 2.0]
    m = [True] * 4
    assert unstructured(w, [9.0, 9.0, 9.0, 9.0], m, 0.5) == [True] * 4


def test_unstructured_empty_layer_stays_empty():
    assert unstructured([0.0] * 4, [1.0] * 4, [False] * 4, 0.5) == [False] * 4


def test_unstructured_reference_fills_with_kept_positions_when_gradients_vanish():
    # n 4, z 2, r 2, thr = sorted[3] = 2 -> kept {0, 1}, pruned 2. All growth scores are 0, so
    # the ascending-index order picks 0 and 1, which are already kept: the layer loses 2.
    w = [5.0, 6.0, 0.0, 0.0, 1.0, 2.0]
    m = [True, True, False, False, True, True]
    assert unstructured(w, [0.0] * 6, m, 0.5) == positions(0, 1, size=6)
    # one nonzero candidate: it is taken, then index 0 (kept) fills the quota: loses 1.
    assert unstructured(w, [0.0, 0.0, 0.0, 0.0, 7.0, 0.0], m, 0.5) == positions(0, 1, 4, size=6)
    # exact=True never picks kept positions: the count is preserved.
    assert unstructured(w, [0.0] * 6, m, 0.5, exact=True) == positions(0, 1, 2, 3, size=6)
    assert unstructured(w, [0.0, 0.0, 0.0, 0.0, 7.0, 0.0], m, 0.5, exact=True) == positions(
        0, 1, 2, 4, size=6
    )


def test_unstructured_rate_one_prunes_everything_then_regrows_by_gradient():
    w = [1.0, 2.0, 0.0, 3.0]
    m = [True, True, False, True]
    assert unstructured(w, [4.0, 1.0, 3.0, 2.0], m, 1.0) == positions(0, 2, 3, size=4)


def test_unstructured_keeps_shape_and_handles_4d():
    rng = np.random.default_rng(0)
    m = rng.random((2, 2, 3, 4)) < 0.5
    w = rng.standard_normal(m.shape).astype(np.float32) * m
    g = rng.standard_normal(m.shape).astype(np.float32)
    out = magnitude_prune_gradient_grow(w, g, m, 0.3)
    assert out.shape == m.shape and out.dtype == jnp.bool_
    assert int(out.sum()) == int(m.sum())


# ----------------------------------------------------------------------------- heads


def heads(taylor, gnorm, mask, rate):
    return as_list(
        head_prune_grow(
            jnp.asarray(taylor, jnp.float32),
            jnp.asarray(gnorm, jnp.float32),
            jnp.asarray(mask),
            rate,
        )
    )


def test_heads_basic_and_just_pruned_head_regrown():
    # active {0,1,2,3}; num = ceil(.5*4) = 2; prune by smallest taylor: 1 (1.) and 3 (2.).
    # Inactive heads' taylor scores (0.) are ignored. Enabled {0,2}; grow 2 of {1,3,4,5} by
    # largest grad norm: 1 (5.) and 4 (2.). Head 1 comes straight back.
    taylor = [4.0, 1.0, 3.0, 2.0, 0.0, 0.0]
    gnorm = [0.0, 5.0, 1.0, 1.0, 2.0, 0.0]
    mask = [True, True, True, True, False, False]
    assert heads(taylor, gnorm, mask, 0.5) == positions(0, 1, 2, 4, size=6)


def test_heads_ties_break_by_ascending_index():
    mask = [True, True, True, False, False, False]
    # all taylor equal -> prune head 0 (num = ceil(.2*3) = 1); grow among {0,3,4,5} with equal
    # norms -> head 0 again.
    assert heads([1.0] * 6, [1.0] * 6, mask, 0.2) == mask
    # equal norms on 3 and 5 only: the lower index, 3, wins.
    assert heads([1.0] * 6, [0.0, 0.0, 0.0, 2.0, 0.0, 2.0], mask, 0.2) == positions(1, 2, 3, size=6)


def test_heads_rate_one_preserves_count():
    mask = [True, False, True, False]
    assert heads([1.0, 2.0, 3.0, 4.0], [1.0, 4.0, 2.0, 3.0], mask, 1.0) == positions(1, 3, size=4)


def test_heads_num_at_least_one_for_positive_rate_and_zero_rate_is_identity():
    mask = [True, True, False]
    assert heads([2.0, 1.0, 0.0], [0.0, 0.0, 9.0], mask, 1e-6) == positions(0, 2, size=3)
    assert heads([2.0, 1.0, 0.0], [0.0, 0.0, 9.0], mask, 0.0) == mask


# ----------------------------------------------------------------------------- neurons


def neurons(fc1_cols, fc2_rows, g1_cols, g2_rows, mask, rate, *, dim=2, **kw):
    """Build Flax-layout kernels whose per-neuron L1 norms are the given numbers: neuron j owns
    fc1[:, j] (all its L1 in row 0) and fc2[j, :] (all its L1 in column 1)."""
    hidden = len(mask)

    def fc1(cols):
        k = np.zeros((dim, hidden), np.float32)
        k[0] = cols
        return jnp.asarray(k)

    def fc2(rows):
        k = np.zeros((hidden, dim), np.float32)
        k[:, -1] = rows
        return jnp.asarray(k)

    return as_list(
        neuron_prune_grow(
            fc1(fc1_cols), fc2(fc2_rows), fc1(g1_cols), fc2(g2_rows), jnp.asarray(mask), rate, **kw
        )
    )


def test_neurons_basic_flax_layout():
    # s = [2, 3, 4, 0]; n 3, r = ceil(.5*3) = 2, n_inactive 1 -> thr = sorted(s)[2] = 3,
    # kept {2}. gs = [5, 1, 0 (kept), 2] -> thr = sorted(gs)[-2] = 2 -> enable {0, 3}.
    out = neurons(
        [1.0, 2.0, 3.0, 0.0],
        [1.0, 1.0, -1.0, 0.0],
        [5.0, -1.0, 9.0, 2.0],
        [0.0] * 4,
        [True, True, True, False],
        0.5,
    )
    assert out == positions(0, 2, 3, size=4)


def test_neurons_fc2_gradient_counts_too():
    out = neurons(
        [1.0, 2.0, 3.0, 0.0],
        [1.0, 1.0, 1.0, 0.0],
        [0.0] * 4,
        [5.0, 1.0, 9.0, 2.0],
        [True, True, True, False],
        0.5,
    )
    assert out == positions(0, 2, 3, size=4)


def test_neurons_prune_ties_shrink_layer_growth_count_is_r():
    # all active, s = [1, 1, 1, 5]; r = ceil(.25*4) = 1 -> thr = sorted(s)[0] = 1 -> three pruned.
    # Only r = 1 grown (largest gs: neuron 0) -> 4 active become 2.
    out = neurons(
        [1.0, 1.0, 1.0, 5.0], [0.0] * 4, [3.0, 2.0, 1.0, 0.0], [0.0] * 4, [True] * 4, 0.25
    )
    assert out == positions(0, 3, size=4)


def test_neurons_growth_ties_grow_layer():
    # same prune; gs = [2, 2, 1, 0] -> thr = 2 -> neurons 0 and 1 enabled: 4 -> 3.
    out = neurons(
        [1.0, 1.0, 1.0, 5.0], [0.0] * 4, [2.0, 2.0, 1.0, 0.0], [0.0] * 4, [True] * 4, 0.25
    )
    assert out == positions(0, 1, 3, size=4)


def test_neurons_fewer_nonzero_growth_scores_than_r_enables_every_neuron():
    # 6 neurons, 4 active with s = [4, 1, 2, 3]; r = ceil(.5*4) = 2 -> thr = sorted(s)[3] = 2,
    # kept {0, 3}. Only neuron 1 has a nonzero gs -> sorted(gs)[-2] = 0 -> all 6 enabled.
    out = neurons(
        [4.0, 1.0, 2.0, 3.0, 0.0, 0.0],
        [0.0] * 6,
        [0.0, 7.0, 0.0, 0.0, 0.0, 0.0],
        [0.0] * 6,
        [True, True, True, True, False, False],
        0.5,
    )
    assert out == [True] * 6


def test_neurons_zero_rate_enables_every_neuron():
    # r = 0: thr = sorted(s)[n_inactive - 1] = 0 -> kept = active; growth thr = sorted(gs)[-0]
    # = min -> everything enabled.
    out = neurons(
        [1.0, 2.0, 0.0, 0.0], [0.0] * 4, [0.0] * 4, [0.0] * 4, [True, True, False, False], 0.0
    )
    assert out == [True] * 4


def test_neurons_python_index_wraparound_when_all_active_and_rate_zero():
    # r = 0 and no inactive neuron: index -1 is the LAST element (max), nothing is kept; growth
    # with r = 0 then enables everything again.
    out = neurons([1.0, 2.0, 3.0], [0.0] * 3, [1.0, 0.0, 0.0], [0.0] * 3, [True] * 3, 0.0)
    assert out == [True] * 3


def test_neurons_empty_layer_becomes_fully_dense():
    out = neurons([0.0] * 4, [0.0] * 4, [1.0, 2.0, 3.0, 4.0], [0.0] * 4, [False] * 4, 0.5)
    assert out == [True] * 4


def test_neurons_exact_mode_preserves_count_with_index_ties():
    # prune exactly r = 1 of s = [1, 1, 1, 5] by index -> neuron 0; grow exactly 1 of {0} ∪
    # inactive by gs (all 0) -> neuron 0 again (lowest index).
    assert (
        neurons([1.0, 1.0, 1.0, 5.0], [0.0] * 4, [0.0] * 4, [0.0] * 4, [True] * 4, 0.25, exact=True)
        == [True] * 4
    )
    out = neurons(
        [4.0, 1.0, 2.0, 3.0, 0.0, 0.0],
        [0.0] * 6,
        [0.0, 7.0, 0.0, 0.0, 0.0, 0.0],
        [0.0] * 6,
        [True, True, True, True, False, False],
        0.5,
        exact=True,
    )
    # removed {1, 2} (smallest s); grow 2 of {1, 2, 4, 5}: 1 (gs 7) then 2 (index).
    assert out == positions(0, 1, 2, 3, size=6)


# ----------------------------------------------------------------------------- jit / vmap


def random_block(rng, hidden=12, dim=5, heads=4):
    mask = rng.random(hidden) < 0.6
    fc1 = rng.standard_normal((dim, hidden)).astype(np.float32) * mask[None, :]
    fc2 = rng.standard_normal((hidden, dim)).astype(np.float32) * mask[:, None]
    g1 = rng.standard_normal((dim, hidden)).astype(np.float32)
    g2 = rng.standard_normal((hidden, dim)).astype(np.float32)
    head_mask = rng.random(heads) < 0.5
    taylor = rng.integers(0, 3, heads).astype(np.float32)
    gnorm = rng.integers(0, 3, heads).astype(np.float32)
    return dict(
        fc1=fc1, fc2=fc2, g1=g1, g2=g2, mask=mask, head_mask=head_mask, taylor=taylor, gnorm=gnorm
    )


@pytest.mark.parametrize('exact', [False, True])
def test_unstructured_jit_with_traced_rate_equals_eager(exact):
    rng = np.random.default_rng(1)
    m = rng.random((6, 7)) < 0.4
    w = (rng.integers(-3, 4, m.shape) * m).astype(np.float32)
    g = rng.integers(-2, 3, m.shape).astype(np.float32)
    jitted = jax.jit(lambda w, g, m, r: magnitude_prune_gradient_grow(w, g, m, r, exact=exact))
    for rate in (0.0, 0.05, 0.3, 0.5, 0.77, 1.0):
        eager = magnitude_prune_gradient_grow(w, g, m, rate, exact=exact)
        np.testing.assert_array_equal(jitted(w, g, m, jnp.float32(rate)), eager)


@pytest.mark.parametrize('exact', [False, True])
def test_structured_vmap_over_blocks_equals_loop_and_jit(exact):
    rng = np.random.default_rng(2)
    blocks = [random_block(rng) for _ in range(5)]
    stack = {k: jnp.stack([b[k] for b in blocks]) for k in blocks[0]}
    rate = jnp.float32(0.3)

    neuron_fn = jax.jit(
        jax.vmap(
            lambda a, b, c, d, m, r: neuron_prune_grow(a, b, c, d, m, r, exact=exact),
            in_axes=(0, 0, 0, 0, 0, None),
        )
    )
    head_fn = jax.jit(jax.vmap(head_prune_grow, in_axes=(0, 0, 0, None)))
    got_neurons = neuron_fn(
        stack['fc1'], stack['fc2'], stack['g1'], stack['g2'], stack['mask'], rate
    )
    got_heads = head_fn(stack['taylor'], stack['gnorm'], stack['head_mask'], rate)
    for i, b in enumerate(blocks):
        np.testing.assert_array_equal(
            got_neurons[i],
            neuron_prune_grow(b['fc1'], b['fc2'], b['g1'], b['g2'], b['mask'], 0.3, exact=exact),
        )
        np.testing.assert_array_equal(
            got_heads[i], head_prune_grow(b['taylor'], b['gnorm'], b['head_mask'], 0.3)
        )
