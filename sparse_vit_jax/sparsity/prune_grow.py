"""Pure prune-and-grow updates of one tensor, one block's heads, or one block's MLP neurons.

All three functions are jittable with a traced `prune_rate` (static shapes, no Python branching on
values) and `head_prune_grow` / `neuron_prune_grow` vmap over a leading block axis. Called with
their defaults they reproduce the official SViTE code decision by decision, quirks included
(docs/reference.md §2.5, §3.2, §3.3). Improved behaviour is an explicit keyword (`exact=True`).

Tie-breaking. The reference sorts with `torch.sort`/`torch.argsort`, whose order among equal keys
is implementation-defined (unstable on CPU, different on CUDA). Here every "take the first k"
selection orders by its score and then by ASCENDING flat index, so results are deterministic and
identical under jit, vmap and on every backend.

Counts. r = ceil(prune_rate * n_active) is computed in the rate's floating dtype (float32 unless
x64 is enabled) while the reference multiplies Python float64 numbers; the two can disagree only
when rate * n lies within float32 rounding of an integer. Rates below float32's normal range
(< 1.2e-38) may be flushed to 0 by XLA, giving r = 0 where the reference gets 1.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

Array = jnp.ndarray


def _first_in_order(keys: tuple[Array, ...], count: Array) -> Array:
    """Bool mask of the `count` positions that come first in lexicographic order of `keys`.

    Keys are 1-D arrays of equal length, all ascending; the flat index is appended as the last
    key, so ties are always broken by ascending index whatever the sort's stability.
    """
    size = keys[0].shape[0]
    index = lax.iota(jnp.int32, size)
    order = lax.sort((*keys, index), num_keys=len(keys) + 1)[-1]
    return jnp.zeros((size,), dtype=bool).at[order].set(index < count)


def _largest_first(score: Array) -> Array:
    """Ascending sort key that puts the largest scores first.

    Zeros are mapped to +0.0 explicitly: negating 0.0 gives -0.0, and sorts that use a total
    order place -0.0 before +0.0, which would silently change tie order.
    """
    return jnp.where(score == 0, jnp.zeros_like(score), -score)


def largest(score: Array, count: int | Array) -> Array:
    """Bool mask of the `count` largest entries of a 1-D `score`, ties by ascending index."""
    return _first_in_order((_largest_first(score),), count)


def _smallest_first(score: Array) -> Array:
    """Ascending sort key with every zero as +0.0 (see `_largest_first`)."""
    return jnp.where(score == 0, jnp.zeros_like(score), score)


def _removal_count(prune_rate: Array | float, n_active: Array) -> Array:
    """r = ceil(prune_rate * n_active) as int32, clipped to [0, n_active]."""
    rate = jnp.asarray(prune_rate)
    dtype = jnp.promote_types(rate.dtype, jnp.float32)
    r = jnp.ceil(rate.astype(dtype) * n_active.astype(dtype)).astype(jnp.int32)
    return jnp.clip(r, 0, n_active)


def magnitude_prune_gradient_grow(
    weight: Array, grad: Array, mask: Array, prune_rate: Array | float, *, exact: bool = False
) -> Array:
    """One unstructured topology update of one tensor: magnitude death, then gradient growth.

    Reference semantics (`Masking.magnitude_death` + `Masking.gradient_growth`), n = mask.sum():

    * A dense layer (n == numel, e.g. ERK-dense `attn.proj`) is skipped: the mask is returned.
    * r = ceil(prune_rate * n). If r == 0 the prune result is `weight != 0`, not the mask.
    * Otherwise thr = sort(|W|.ravel())[z + r - 1] with z = numel - n, and kept = |W| > thr.
      This reads |W| and not the mask: it assumes `weight` is already masked (pruned entries
      exactly 0). Weights tied with the threshold and active weights that are exactly 0 are
      pruned in addition to the r.
    * pruned = n - kept.sum(). Growth enables the `pruned` positions with the largest score
      |grad| * (kept == 0), ties by ascending flat index (the reference's order among ties is
      implementation-defined). Candidates include the weights just pruned (they come back with
      their old value, since the caller re-masks only after both phases).
    * Quirk kept in reference mode: positions already kept score 0, so when fewer than `pruned`
      candidates have a nonzero gradient, zero-score kept positions can fill the quota and the
      layer loses nonzeros. With all candidate gradients nonzero the count is preserved.

    Args:
      weight: masked weights, any shape.
      grad: dense gradient of this step, same shape.
      mask: current mask (bool or 0/1), same shape.
      prune_rate: scalar in [0, 1]; may be traced.
      exact: improved behaviour. Growth never picks a position already kept, so the number of
        active weights is preserved exactly. Pruning is unchanged.

    Returns:
      New bool mask of the same shape.
    """
    shape = mask.shape
    active = mask.reshape(-1).astype(bool)
    magnitude = jnp.abs(weight.reshape(-1))
    numel = active.shape[0]
    n_active = active.sum(dtype=jnp.int32)
    n_zeros = numel - n_active
    r = _removal_count(prune_rate, n_active)

    threshold = jnp.sort(magnitude)[jnp.clip(n_zeros + r - 1, 0, numel - 1)]
    kept = jnp.where(r == 0, magnitude != 0, magnitude > threshold)
    # Non-negative for masked weights; the clip only guards against unmasked input.
    n_pruned = jnp.maximum(n_active - kept.sum(dtype=jnp.int32), 0)

    score = jnp.where(kept, 0.0, jnp.abs(grad.reshape(-1)).astype(jnp.float32))
    keys = (_largest_first(score),)
    if exact:
        keys = (kept.astype(jnp.int32),) + keys  # every non-kept position before any kept one
    grown = _first_in_order(keys, n_pruned)

    new_mask = kept | grown
    is_dense = n_active == numel
    return jnp.where(is_dense, active, new_mask).reshape(shape)


def head_prune_grow(
    taylor_scores: Array, grad_norms: Array, head_mask: Array, prune_rate: Array | float
) -> Array:
    """One structured update of the attention heads of one block (arrays of shape [H]).

    Reference semantics (S²ViTE, `truncate_weights(structure_new)`, attention part):

    * num = ceil(prune_rate * n_active): at least 1 while the rate is > 0 and a head is active.
    * Prune the `num` active heads with the smallest first-order Taylor score |A * dL/dA|.
    * Grow, among all heads not still enabled (INCLUDING the ones just pruned), the `num` with
      the largest output-gradient L1 norm, so a pruned head can come straight back.
    * The head count is preserved; rate 1 prunes every active head and regrows as many.
    * Ties by ascending head index (the reference follows an internal list order).

    Vmap over a leading block axis for all blocks at once.
    """
    active = head_mask.astype(bool)
    num = _removal_count(prune_rate, active.sum(dtype=jnp.int32))
    taylor = _smallest_first(taylor_scores.astype(jnp.float32))
    pruned = active & _first_in_order(((~active).astype(jnp.int32), taylor), num)
    enabled = active & ~pruned
    growth = _largest_first(grad_norms.astype(jnp.float32))
    grown = ~enabled & _first_in_order((enabled.astype(jnp.int32), growth), num)
    return enabled | grown


def neuron_l1(fc1: Array, fc2: Array) -> Array:
    """Per-neuron L1 norm over fc1 column j (D, hidden) plus fc2 row j (hidden, D), in float32."""
    return jnp.abs(fc1.astype(jnp.float32)).sum(axis=0) + jnp.abs(fc2.astype(jnp.float32)).sum(
        axis=1
    )


def neuron_prune_grow(
    fc1_kernel: Array,
    fc2_kernel: Array,
    fc1_grad: Array,
    fc2_grad: Array,
    neuron_mask: Array,
    prune_rate: Array | float,
    *,
    exact: bool = False,
    growth_score: Array | None = None,
) -> Array:
    """One structured update of the MLP hidden neurons of one block (Flax layouts).

    Neuron j owns column j of the fc1 kernel (D, hidden) and row j of the fc2 kernel (hidden, D).

    Reference semantics (S²ViTE, `truncate_weights(structure_new)`, MLP part), n = active count:

    * r = ceil(prune_rate * n). Score s_j = L1(fc1[:, j]) + L1(fc2[j, :]) in float32; it reads
      the kernels, not the mask, so it assumes masked kernels (inactive neurons score 0).
    * thr = sorted(s)[r + n_inactive - 1] with Python indexing: index -1 (r = 0 and no inactive
      neuron) means the LAST element, so nothing survives the prune. kept = s > thr.
    * Growth score gs_j = L1 of the gradients of neuron j, zero for kept neurons.
      thr_g = sorted(gs)[-r]; for r = 0 that is sorted(gs)[0], the minimum. Enable gs >= thr_g.
    * Quirks reproduced: the growth count is r, not the number actually pruned (ties at the
      prune threshold shrink the layer, ties at the growth threshold grow it); when fewer than r
      neurons have a nonzero growth score, or r = 0 (rate 0 or no active neuron), thr_g is the
      minimum and EVERY neuron is enabled. No dense-layer shortcut: a fully active MLP is
      still pruned and regrown.

    Args:
      exact: improved behaviour: prune exactly r active neurons by smallest score, then grow
        exactly r of the non-kept neurons (the just-pruned included) by largest gradient score;
        ties by ascending neuron index. The active count is preserved.
      growth_score: [hidden] scores to grow by instead of the weight-gradient L1 (exact mode
        only; may be negative). Improved S²ViTE passes the loss decrease that switching each
        neuron on predicts, -∂L/∂gate: with masked weights the L1 of an inactive neuron's
        weight gradients is exactly 0 (its fc2 row is 0, so nothing flows into fc1, and its
        activation is 0, so nothing flows into fc2), so only the just-pruned could ever return.

    Returns:
      New bool neuron mask [hidden]. Vmap over a leading block axis for all blocks at once.
    """
    active = neuron_mask.astype(bool)
    hidden = active.shape[0]
    n_active = active.sum(dtype=jnp.int32)
    r = _removal_count(prune_rate, n_active)
    score = neuron_l1(fc1_kernel, fc2_kernel)
    grad_score = neuron_l1(fc1_grad, fc2_grad)
    if growth_score is not None:
        if not exact:
            raise ValueError('growth_score replaces the reference growth score: exact mode only')
        grad_score = growth_score.astype(jnp.float32)

    if exact:
        removed = active & _first_in_order(((~active).astype(jnp.int32), _smallest_first(score)), r)
        kept = active & ~removed
        candidates = jnp.where(kept, 0.0, grad_score)
        grown = ~kept & _first_in_order((kept.astype(jnp.int32), _largest_first(candidates)), r)
        return kept | grown

    prune_index = r + (hidden - n_active) - 1
    prune_index = jnp.where(prune_index < 0, prune_index + hidden, prune_index)  # Python wrap
    threshold = jnp.sort(score)[jnp.clip(prune_index, 0, hidden - 1)]
    kept = score > threshold

    candidates = jnp.where(kept, 0.0, grad_score)
    grow_index = jnp.where(r == 0, 0, hidden - r)  # sorted(gs)[-r]; [-0] is the first element
    grow_threshold = jnp.sort(candidates)[jnp.clip(grow_index, 0, hidden - 1)]
    return kept | (candidates >= grow_threshold)
