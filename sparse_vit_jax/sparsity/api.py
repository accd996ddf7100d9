"""What the rest of the code needs to know about sparse optimizer states.

The sparse optax transformation keeps the masks in its state (one source of truth, checkpointed
with the optimizer). These accessors find that state inside any optimizer state, so the trainer,
evaluation and export never need to know whether a run is sparse.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class SparseState(NamedTuple):
    """State of the sparse transformation (see ``transform.py``).

    Attributes:
      count: optimizer steps taken (int32).
      masks: {'weights': params-shaped tree of bool (None on dense leaves),
              'heads': bool[depth, heads] | None, 'neurons': bool[depth, mlp] | None}.
      ever_active: params-shaped bool tree, the union of every weight mask used so far (the
        reference's "fired" masks).
      last_update: per-layer statistics of the latest prune/grow update (ints).
      key: PRNG key data for random choices (uint32).
      inner_state: the wrapped optimizer's state.
    """

    count: jax.Array
    masks: dict
    ever_active: Any
    last_update: dict
    key: jax.Array
    inner_state: Any


def sparse_state(opt_state: Any) -> SparseState | None:
    """The SparseState inside `opt_state` (the transformation is outermost), or None if dense."""
    return opt_state if isinstance(opt_state, SparseState) else None


def masks_of(opt_state: Any) -> dict | None:
    state = sparse_state(opt_state)
    return None if state is None else state.masks


def apply_weight_masks(params: Any, weight_masks: Any) -> Any:
    """Zeroes pruned weights; leaves without a mask pass through. Uses `where`, so NaN/Inf in a
    pruned weight cannot survive (a multiplication would keep them)."""
    return jax.tree.map(
        lambda p, m: p if m is None else jnp.where(m, p, jnp.zeros_like(p)),
        params,
        weight_masks,
        is_leaf=lambda x: x is None,
    )


def apply_masks(params: Any, opt_state: Any) -> Any:
    """Params with the zero invariant enforced for the masks held in `opt_state` (if any)."""
    masks = masks_of(opt_state)
    return params if masks is None else apply_weight_masks(params, masks['weights'])


def forward_masks(masks: dict | None, fidelity: str) -> dict | None:
    """The masks the forward pass takes.

    Weight masks never enter the forward pass (the zeros live in the params). Head and neuron
    masks gate the unit outputs only in 'improved' fidelity; in 'reference' fidelity a pruned
    head keeps emitting its v-bias through proj, as the official code does.
    """
    if masks is None or fidelity == 'reference':
        return None
    gates = {k: masks.get(k) for k in ('heads', 'neurons')}
    return gates if any(v is not None for v in gates.values()) else None
