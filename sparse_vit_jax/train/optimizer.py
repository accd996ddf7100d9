"""The optimizer of a run: DeiT AdamW (linear warmup then cosine, no weight decay on 1-D params
and embeddings), wrapped in the sparse-training transformation for the sparse methods."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import optax
from flax import traverse_util

from sparse_vit_jax.config import mask_init, method
from sparse_vit_jax.sparsity import schedules
from sparse_vit_jax.sparsity.transform import SparsitySpec, sparse_training

# Never decayed besides 1-D params (biases, norms), as timm's `no_weight_decay` lists.
NO_DECAY_NAMES = ('pos_embed', 'cls_token')


def deit_lr_schedule(
    peak: float, total_steps: int, warmup_steps: int, warmup_lr: float, min_lr: float
) -> optax.Schedule:
    """timm's CosineLRScheduler (warmup_prefix=False) stepped per iteration instead of per epoch.

    During warmup the lr rises linearly from `warmup_lr`; afterwards it follows the cosine from
    `peak` to `min_lr` over the whole run, warmup included (so it joins the cosine just below peak).
    """

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = warmup_lr + (peak - warmup_lr) * step / max(warmup_steps, 1)
        cosine = min_lr + 0.5 * (peak - min_lr) * (1 + jnp.cos(jnp.pi * step / max(total_steps, 1)))
        return jnp.where(step < warmup_steps, warm, cosine)

    return schedule


def weight_decay_mask(params: Any) -> Any:
    """True where AdamW decays: every param with ndim > 1 except the position embedding and cls."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict(
        {path: leaf.ndim > 1 and path[-1] not in NO_DECAY_NAMES for path, leaf in flat.items()}
    )


def peak_learning_rate(optimizer_config: Any, global_batch: int) -> float:
    """DeiT scales the lr linearly with the global batch: lr · batch / lr_base_batch."""
    return optimizer_config.lr * global_batch / optimizer_config.lr_base_batch


def adamw(
    optimizer_config: Any,
    params_shape: Any,
    *,
    global_batch: int,
    total_steps: int,
    steps_per_epoch: int,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with the DeiT recipe; returns the transformation and its lr schedule."""
    o = optimizer_config
    schedule = deit_lr_schedule(
        peak_learning_rate(o, global_batch),
        total_steps,
        round(o.warmup_epochs * steps_per_epoch),
        o.warmup_lr,
        o.min_lr,
    )
    tx = optax.adamw(
        schedule,
        b1=o.b1,
        b2=o.b2,
        eps=o.eps,
        weight_decay=o.weight_decay,
        mask=weight_decay_mask(params_shape),
    )
    if o.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), tx)
    return tx, schedule


def sparsity_spec(config: Any, model: Any, total_steps: int) -> SparsitySpec | None:
    """The sparse-training description of a run config, or None for dense training."""
    traits = method(config.sparsity.method)
    if not traits.sparse:
        return None
    s = config.sparsity
    heads = model.heads_per_layer
    if len(set(heads)) != 1 or len(set(model.mlp_per_layer)) != 1:
        raise ValueError(
            'sparse training needs a model with the same heads and MLP width in '
            'every block (slim models are exported, not trained further)'
        )
    return SparsitySpec(
        structured=traits.structured,
        dynamic=traits.dynamic,
        fidelity=s.fidelity,
        regrown_moments=s.regrown_moments,
        total_steps=total_steps,
        update_every=schedules.scale_update_every(
            s.update_every, s.update_every_batch, config.batch_size
        ),
        t_end=s.t_end,
        prune_rate=s.prune_rate,
        final_prune_rate=s.final_prune_rate,
        density=s.density,
        distribution=s.distribution,
        head_density=s.head_density,
        neuron_density=s.neuron_density,
        num_heads=heads[0],
        head_dim=model.resolved_head_dim,
        seed=config.seed,
        init=mask_init(config),
    )


def make_optimizer(
    config: Any, model: Any, params_shape: Any, *, total_steps: int, steps_per_epoch: int
) -> tuple[optax.GradientTransformation, optax.Schedule, SparsitySpec | None]:
    """The run's optimizer: DeiT AdamW, wrapped in sparse training unless the method is dense."""
    inner, schedule = adamw(
        config.optimizer,
        params_shape,
        global_batch=config.batch_size,
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
    )
    spec = sparsity_spec(config, model, total_steps)
    tx = inner if spec is None else sparse_training(inner, spec)
    return tx, schedule, spec
