"""Evaluation over a padded eval stream: top-1, top-5 and loss over every example exactly once."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparse_vit_jax.data import EvalInput, prefetch_to_device
from sparse_vit_jax.train import sharding as sharding_lib
from sparse_vit_jax.train.steps import eval_step


def make_eval_fn(model: Any, mesh: jax.sharding.Mesh):
    """A jitted (params, masks, batch) -> summed metrics, replicated on the mesh."""
    return jax.jit(functools.partial(eval_step, model), out_shardings=sharding_lib.replicated(mesh))


def evaluate(
    eval_fn, params: Any, masks: Any, eval_input: EvalInput, mesh: jax.sharding.Mesh
) -> dict[str, float]:
    """Runs the whole eval split; returns top1, top5, loss (means) and num_examples."""
    totals = None
    for batch in prefetch_to_device(eval_input.batches(), sharding_lib.batch_sharding(mesh)):
        sums = eval_fn(params, masks, batch)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.tree.map(lambda x: float(np.asarray(x)), totals)
    count = totals.pop('count')
    return {**{k: v / count for k, v in totals.items()}, 'num_examples': int(count)}
