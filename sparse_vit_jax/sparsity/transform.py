"""The sparse-training optax transformation: SViTE (weights) and S²ViTE (heads and neurons).

It wraps the inner optimizer (AdamW), must be the outermost transformation, and owns the masks
in its state. Every step it forwards the inner update and emits updates that land pruned weights
on exactly 0, so ``optax.apply_updates`` alone keeps the zero invariant. Every ΔT steps (until
t_end·T) it prunes and grows inside ``lax.cond``, in the order the official code runs:

1. W = masked (params + inner update)       — the optimizer step, then ``apply_mask``;
2. M' = prune/grow(W, this step's dense grads, M, rate(t));
3. params' = where(M ∧ M', W, 0)            — grown weights start at 0; a weight pruned and
                                              regrown in the same update keeps its value.

Fidelity 'reference' reproduces the official decisions (Bernoulli init, Adam moments never
masked or reset); 'improved' uses exact-count init and growth and resets the moments of
regrown weights. Improved S²ViTE silences pruned heads and neurons with gates in the forward pass
instead of zeroing their weights: a pruned unit keeps its weights, frozen, so that its growth
score (the loss gradient at its gate, see `prune_grow.neuron_prune_grow`) says what switching it
back on would do, and a regrown unit resumes from them (a unit regrown with all-zero fc1 and fc2
weights sits at a saddle where every gradient is zero and never learns).

Static runs (`dynamic=False`: the static sparse baselines) draw the same initial masks and never
update them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sparse_vit_jax.layer_order import block_names
from sparse_vit_jax.sparsity import masks as masks_lib
from sparse_vit_jax.sparsity import prune_grow, schedules
from sparse_vit_jax.sparsity.state import SparseState


@dataclasses.dataclass(frozen=True)
class SparsitySpec:
    """Static description of a sparse run (host-side constants, closed over by the jitted step).

    Attributes:
      structured: S²ViTE (heads and neurons) instead of SViTE (weights).
      dynamic: prune and grow every ΔT; False keeps the initial masks (static baselines).
      update_every: ΔT in optimizer steps at this run's global batch.
      num_heads, head_dim: per block, to map heads onto the fused qkv kernel.
      regrown_moments: what happens to the inner optimizer's moments of regrown weights:
        'keep' (their history: the gradients are dense, so it is the weight's own), 'reset'
        (zeroed), or '' for the fidelity's choice (`reset_moments`).
      init: 'random' (the method's own init) or 'magnitude' (from trained weights: the largest
        weights, and for S²ViTE the heads and neurons with the largest pruning scores, at the
        same per-layer counts).
    """

    structured: bool
    fidelity: str
    total_steps: int
    update_every: int
    dynamic: bool = True
    t_end: float = 0.8
    prune_rate: float = 0.5
    final_prune_rate: float = 0.005
    density: float = 1.0
    distribution: str = 'erk'
    head_density: float = 1.0
    neuron_density: float = 1.0
    num_heads: int = 0
    head_dim: int = 0
    seed: int = 0
    regrown_moments: str = ''
    init: str = 'random'

    @property
    def improved(self) -> bool:
        return self.fidelity == 'improved'

    @property
    def reset_moments(self) -> bool:
        """Zero the moments of regrown weights: the reference never does, improved does."""
        if self.regrown_moments:
            return self.regrown_moments == 'reset'
        return self.improved

    @property
    def gates_units(self) -> bool:
        """Pruned heads/neurons are gated and keep their weights (improved S²ViTE), instead of
        having their weights held at 0 (`state.zeroed_masks` states the same rule on masks)."""
        return self.structured and self.improved

    @property
    def needs_head_scores(self) -> bool:
        return self.structured and self.dynamic

    @property
    def needs_neuron_gate_grads(self) -> bool:
        return self.gates_units and self.dynamic


def unit_weight_masks(params: Any, heads: jax.Array, neurons: jax.Array, head_dim: int) -> Any:
    """Weight masks derived from head and neuron masks (the structured source of truth).

    Head h owns qkv kernel columns {q, k, v}·[h·hd, (h+1)·hd); neuron j owns fc1 column j and
    fc2 row j. Every other leaf is None (not masked: qkv bias, proj, norms, ...).
    """
    masks = jax.tree.map(lambda _: None, params)
    for i, block in enumerate(block_names(params)):
        columns = jnp.repeat(heads[i], head_dim)  # [H·hd]
        qkv = jnp.tile(columns, 3)  # [q | k | v]
        dim = params[block]['attn']['qkv']['kernel'].shape[0]
        masks[block]['attn']['qkv']['kernel'] = jnp.broadcast_to(qkv, (dim, qkv.shape[0]))
        fc1 = params[block]['mlp']['fc1']['kernel'].shape
        masks[block]['mlp']['fc1']['kernel'] = jnp.broadcast_to(neurons[i], fc1)
        masks[block]['mlp']['fc2']['kernel'] = jnp.broadcast_to(neurons[i][:, None], fc1[::-1])
    return masks


def _full_tree(masks: Any, params: Any) -> Any:
    """Masks with every None replaced by a scalar False (for elementwise tree maps)."""
    return jax.tree.map(
        lambda p, m: jnp.zeros((), bool) if m is None else m,
        params,
        masks,
        is_leaf=lambda x: x is None,
    )


def _count(mask: jax.Array) -> jax.Array:
    return jnp.sum(mask, dtype=jnp.int32)


def initial_masks(
    spec: SparsitySpec, params: Any, key: jax.Array, head_taylor: jax.Array | None = None
) -> dict[str, Any]:
    """The run's starting topology.

    'random' init: reference: Bernoulli per layer; improved: exact counts. 'magnitude' init keeps
    the largest weights per layer (exact counts); for S²ViTE the heads with the largest Taylor
    score `head_taylor` ([depth, heads], from a batch: see train/steps.py `head_scores`) and the
    neurons with the largest fc1/fc2 L1 norm: what the method prunes by.
    """
    magnitude = spec.init == 'magnitude'
    if spec.structured:
        depth = len(block_names(params))
        hidden = params['blocks_0']['mlp']['fc1']['kernel'].shape[1]
        if magnitude:
            if head_taylor is None:
                raise ValueError('magnitude init of S²ViTE needs the head Taylor scores')
            fc1, fc2 = (
                jnp.stack([params[b]['mlp'][fc]['kernel'] for b in block_names(params)])
                for fc in ('fc1', 'fc2')
            )
            neuron_scores = jax.vmap(prune_grow.neuron_l1)(fc1, fc2)
            heads = masks_lib.top_unit_masks(head_taylor, spec.head_density)
            neurons = masks_lib.top_unit_masks(neuron_scores, spec.neuron_density)
        else:
            head_key, neuron_key = jax.random.split(key)
            heads = masks_lib.random_unit_masks(head_key, depth, spec.num_heads, spec.head_density)
            neurons = masks_lib.random_unit_masks(neuron_key, depth, hidden, spec.neuron_density)
        weights = unit_weight_masks(params, heads, neurons, spec.head_dim)
        return {'weights': weights, 'heads': heads, 'neurons': neurons}
    densities = masks_lib.layer_densities(params, spec.density, spec.distribution)
    if magnitude:
        weights = masks_lib.magnitude_weight_masks(params, densities)
    else:
        weights = masks_lib.random_weight_masks(key, params, densities, exact=spec.improved)
    return {'weights': weights, 'heads': None, 'neurons': None}


def _unstructured_update(spec, weights, grads, masks, rate):
    new = jax.tree.map(
        lambda w, g, m: (
            None
            if m is None
            else prune_grow.magnitude_prune_gradient_grow(w, g, m, rate, exact=spec.improved)
        ),
        weights,
        grads,
        masks['weights'],
        is_leaf=lambda x: x is None,
    )
    return {**masks, 'weights': new}


def _structured_update(spec, weights, grads, masks, rate, scores):
    blocks = block_names(weights)
    stack = lambda tree, *path: jnp.stack([_get(tree[b], path) for b in blocks])
    heads = jax.vmap(prune_grow.head_prune_grow, in_axes=(0, 0, 0, None))(
        scores['head_taylor'], scores['head_grad_norm'], masks['heads'], rate
    )
    # Gated units are grown by the loss decrease their gate's gradient predicts (module doc).
    growth = -scores['neuron_gate_grad'] if spec.gates_units else None
    neuron_update = lambda *args: prune_grow.neuron_prune_grow(
        *args[:6], exact=spec.improved, growth_score=args[6]
    )
    neurons = jax.vmap(neuron_update, in_axes=(0, 0, 0, 0, 0, None, 0))(
        stack(weights, 'mlp', 'fc1', 'kernel'),
        stack(weights, 'mlp', 'fc2', 'kernel'),
        stack(grads, 'mlp', 'fc1', 'kernel'),
        stack(grads, 'mlp', 'fc2', 'kernel'),
        masks['neurons'],
        rate,
        growth,
    )
    return {
        'weights': unit_weight_masks(weights, heads, neurons, spec.head_dim),
        'heads': heads,
        'neurons': neurons,
    }


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _reset_regrown_moments(inner, inner_state, params, regrown):
    """Zeroes the inner optimizer's params-shaped state (Adam's mu and nu) where weights regrew."""
    full = _full_tree(regrown, params)
    return optax.tree_utils.tree_map_params(
        inner,
        lambda state_leaf, grown: jnp.where(grown, jnp.zeros_like(state_leaf), state_leaf),
        inner_state,
        full,
        transform_non_params=lambda x: x,
    )


def _update_stats(old: dict, new: dict, step: jax.Array) -> dict[str, Any]:
    """Counts of a topology update at `step`: weights (per layer) and units newly activated."""
    moved = jax.tree.map(
        lambda o, n: None if o is None else _count(n & ~o),
        old['weights'],
        new['weights'],
        is_leaf=lambda x: x is None,
    )
    stats = {'moved': moved, 'step': jnp.asarray(step, jnp.int32)}
    for unit in ('heads', 'neurons'):
        if new[unit] is not None:
            stats[f'moved_{unit}'] = jnp.sum(new[unit] & ~old[unit], axis=1, dtype=jnp.int32)
    return stats


def sparse_training(
    inner: optax.GradientTransformation, spec: SparsitySpec
) -> optax.GradientTransformationExtraArgs:
    """Wraps `inner` with prune-and-grow sparse training described by `spec`.

    `update(grads, state, params, head_taylor=..., head_grad_norm=..., neuron_gate_grad=...)`:
    the two [depth, heads] head scores are required by dynamic structured runs (the train step
    computes them from the head outputs and their gradients), and the [depth, mlp] loss gradient
    at the neuron gates by dynamic improved ones (`spec.needs_neuron_gate_grads`); `grads` are
    the dense gradients at the current params.
    `init(params, head_taylor=None)`: the head scores are required for S²ViTE magnitude init.
    """

    def init_fn(params, head_taylor=None):
        key = jax.random.fold_in(jax.random.key(spec.seed), 0x5BA5)
        masks = initial_masks(spec, params, key, head_taylor)
        stats = _update_stats(masks, masks, 0)
        return SparseState(
            count=jnp.zeros((), jnp.int32),
            masks=masks,
            ever_active=jax.tree.map(jnp.copy, masks['weights']),  # own buffers (donation)
            last_update=stats,
            inner_state=inner.init(params),
        )

    def update_fn(grads, state, params=None, **scores):
        if params is None:
            raise ValueError('sparse_training needs params in update (zero invariant, growth)')
        wanted = (
            ('head_taylor', 'head_grad_norm') * spec.needs_head_scores
            + ('neuron_gate_grad',) * spec.needs_neuron_gate_grads
        )
        missing = [name for name in wanted if scores.get(name) is None]
        if missing:
            raise ValueError(f'this sparse training needs {", ".join(missing)} in update')
        inner_updates, inner_state = inner.update(grads, state.inner_state, params)
        t = state.count + 1
        masks = state.masks
        # Inactive weights: exactly 0, or (gated units) frozen at their last value.
        inactive = (lambda p: p) if spec.gates_units else jnp.zeros_like
        stepped = jax.tree.map(
            lambda p, u, m: p + u if m is None else jnp.where(m, p + u, inactive(p)),
            params,
            inner_updates,
            masks['weights'],
            is_leaf=lambda x: x is None,
        )

        def topology_update(operand):
            masks, inner_state, stats = operand
            rate = schedules.prune_rate(t, spec.total_steps, spec.prune_rate, spec.final_prune_rate)
            if spec.structured:
                new = _structured_update(spec, stepped, grads, masks, rate, scores)
            else:
                new = _unstructured_update(spec, stepped, grads, masks, rate)
            if spec.reset_moments:
                regrown = jax.tree.map(
                    lambda o, n: None if o is None else n & ~o,
                    masks['weights'],
                    new['weights'],
                    is_leaf=lambda x: x is None,
                )
                inner_state = _reset_regrown_moments(inner, inner_state, params, regrown)
            return new, inner_state, _update_stats(masks, new, t)

        operand = (masks, inner_state, state.last_update)
        if spec.dynamic:
            is_update = schedules.is_update_step(t, spec.update_every, spec.total_steps, spec.t_end)
            operand = jax.lax.cond(is_update, topology_update, lambda operand: operand, operand)
        new_masks, inner_state, stats = operand
        if spec.gates_units:
            # Weights active during this step take its update; the others stay frozen (a unit
            # pruned now keeps its final value, a regrown one resumes from its frozen one).
            updates = jax.tree.map(
                lambda p, u, old: u if old is None else jnp.where(old, u, jnp.zeros_like(u)),
                params,
                inner_updates,
                masks['weights'],
                is_leaf=lambda x: x is None,
            )
        else:
            # Kept weights take the inner update; pruned ones land on exactly 0; grown ones stay
            # at their 0 (they were masked before this step).
            updates = jax.tree.map(
                lambda p, u, old, new: u if old is None else jnp.where(old & new, u, -p),
                params,
                inner_updates,
                masks['weights'],
                new_masks['weights'],
                is_leaf=lambda x: x is None,
            )
        ever_active = jax.tree.map(
            lambda e, m: None if e is None else e | m,
            state.ever_active,
            new_masks['weights'],
            is_leaf=lambda x: x is None,
        )
        new_state = SparseState(
            count=t,
            masks=new_masks,
            ever_active=ever_active,
            last_update=stats,
            inner_state=inner_state,
        )
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
