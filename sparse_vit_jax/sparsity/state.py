"""What the rest of the code needs to know about sparse optimizer states.

The sparse optax transformation keeps the masks in its state (one source of truth; a checkpoint
stores them once, as their own item, and puts them back on restore: `without_masks`,
`with_masks`). These accessors find that state inside any optimizer state, so the trainer,
evaluation and export never need to know whether a run is sparse.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from sparse_vit_jax.layer_order import named_leaves

# 'reference' reproduces the official code's decisions, 'improved' fixes its accidents (README
# "Fidelity"); the functions below and sparsity/transform.py, models/slim.py read it.
FIDELITIES = ('reference', 'improved')


class SparseState(NamedTuple):
    """State of the sparse transformation (see ``transform.py``).

    Attributes:
      count: optimizer steps taken (int32).
      masks: {'weights': params-shaped tree of bool (None on dense leaves),
              'heads': bool[depth, heads] | None, 'neurons': bool[depth, mlp] | None}.
      ever_active: params-shaped bool tree, the union of every weight mask used so far (the
        reference's "fired" masks).
      last_update: per-layer statistics of the latest prune/grow update (ints).
      inner_state: the wrapped optimizer's state.
    """

    count: jax.Array
    masks: dict
    ever_active: Any
    last_update: dict
    inner_state: Any


def sparse_state(opt_state: Any) -> SparseState | None:
    """The SparseState inside `opt_state` (the transformation is outermost), or None if dense."""
    return opt_state if isinstance(opt_state, SparseState) else None


def masks_of(opt_state: Any) -> dict | None:
    state = sparse_state(opt_state)
    return None if state is None else state.masks


def without_masks(opt_state: Any) -> Any:
    """`opt_state` with the SparseState's masks left out (None): what a checkpoint saves as the
    optimizer state, since it holds the masks once, as their own item (`with_masks` undoes it).
    A dense state passes through."""
    return with_masks(opt_state, None)


def with_masks(opt_state: Any, masks: dict | None) -> Any:
    """`opt_state` (saved `without_masks`) with `masks` back in its SparseState."""
    state = sparse_state(opt_state)
    return opt_state if state is None else state._replace(masks=masks)


def apply_weight_masks(params: Any, weight_masks: Any) -> Any:
    """Zeroes pruned weights; leaves without a mask pass through. Uses `where`, so NaN/Inf in a
    pruned weight cannot survive (a multiplication would keep them)."""
    return jax.tree.map(
        lambda p, m: p if m is None else jnp.where(m, p, jnp.zeros_like(p)),
        params,
        weight_masks,
        is_leaf=lambda x: x is None,
    )


def zeroed_masks(masks: dict | None, fidelity: str) -> Any:
    """The weight masks whose pruned entries the params (and their EMA) hold at exactly 0.

    Every weight mask, except in improved structured runs: there gates silence pruned heads and
    neurons in the forward pass (`forward_masks`) and their weights are kept, frozen, for when
    they regrow (see `transform.py`); nothing is zeroed (None).
    """
    if masks is None or (fidelity == 'improved' and masks.get('heads') is not None):
        return None
    return masks['weights']


def apply_masks(params: Any, opt_state: Any, fidelity: str = 'reference') -> Any:
    """Params with the zero invariant enforced for the masks held in `opt_state` (if any)."""
    weights = zeroed_masks(masks_of(opt_state), fidelity)
    return params if weights is None else apply_weight_masks(params, weights)


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


def summary(opt_state: Any) -> dict[str, Any] | None:
    """Sparsity metrics on device (jit it; fetch at log time): per-layer density, the weights
    moved by the latest update, the union of all masks so far ("fired"), unit counts, and for
    structured runs the head mask itself (bool[depth, heads], small; the head plots of
    tools/visualize.py draw it over training)."""
    state = sparse_state(opt_state)
    if state is None:
        return None
    weights = named_leaves(state.masks['weights'])
    active = {k: jnp.sum(m, dtype=jnp.int32) for k, m in weights.items()}
    sizes = sum(m.size for m in weights.values())
    fired = sum(jnp.sum(m, dtype=jnp.int32) for m in named_leaves(state.ever_active).values())
    moved = named_leaves(state.last_update['moved'])
    out = {
        'density': sum(active.values()) / sizes,
        'layer_density': {k: a / weights[k].size for k, a in active.items()},
        'fired_density': fired / sizes,
        'last_update_step': state.last_update['step'],
        'moved': sum(moved.values()),
        'layer_moved': moved,
    }
    for unit in ('heads', 'neurons'):
        if state.masks[unit] is not None:
            out[f'active_{unit}'] = jnp.sum(state.masks[unit], axis=1, dtype=jnp.int32)
            out[f'moved_{unit}'] = state.last_update[f'moved_{unit}']
    if state.masks['heads'] is not None:
        out['head_mask'] = state.masks['heads']
    return out
