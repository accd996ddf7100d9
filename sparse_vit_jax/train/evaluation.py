"""Evaluation over a padded eval stream: top-1, top-5 and loss over every example exactly once."""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparse_vit_jax import data as data_lib
from sparse_vit_jax.data import EvalInput, prefetch_to_device
from sparse_vit_jax.data.device_input import DeviceInput
from sparse_vit_jax.train import sharding as sharding_lib
from sparse_vit_jax.train.report import describe, params_fingerprint
from sparse_vit_jax.train.restore import restore_model
from sparse_vit_jax.train.steps import eval_step

logger = logging.getLogger(__name__)

# A long evaluation (ImageNet's 50,000 images on a CPU) says how far it is this often.
PROGRESS_SECONDS = 30.0


def make_eval_fn(model: Any, mesh: jax.sharding.Mesh, inputs: DeviceInput | None = None):
    """A jitted (params, masks, batch, rng) -> summed metrics, replicated on the mesh; `inputs`
    normalizes the uint8 images of the pipeline's batches (`DeviceInput.from_config(config)`)."""
    return jax.jit(
        functools.partial(eval_step, model, inputs=inputs),
        out_shardings=sharding_lib.replicated(mesh),
    )


def evaluate(
    eval_fn,
    params: Any,
    masks: Any,
    eval_input: EvalInput,
    mesh: jax.sharding.Mesh,
    seed: int = 0,
) -> dict[str, float]:
    """Runs the whole eval split; returns top1, top5, loss (means) and num_examples.

    Batch i draws its random numbers (only the reference token selector's Gumbel noise uses any)
    from fold_in(key(seed), i), so an evaluation is repeatable. Every PROGRESS_SECONDS it logs
    how many batches are done (waiting for the device only then).
    """
    totals = None
    start = last_report = time.perf_counter()
    batches = prefetch_to_device(eval_input.batches(), sharding_lib.batch_sharding(mesh))
    for index, batch in enumerate(batches):
        rng = jax.random.fold_in(jax.random.key(seed), index)
        sums = eval_fn(params, masks, batch, rng)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        if time.perf_counter() - last_report >= PROGRESS_SECONDS:
            jax.block_until_ready(totals)
            last_report = time.perf_counter()
            logger.info(
                'evaluating: %d of %d batches done, %.0f s',
                index + 1,
                eval_input.num_batches,
                last_report - start,
            )
    totals = jax.tree.map(lambda x: float(np.asarray(x)), totals)
    count = totals.pop('count')
    return {**{k: v / count for k, v in totals.items()}, 'num_examples': int(count)}


def evaluate_checkpoint(
    workdir: str, *, step: int | None = None, data_dir: str | None = None, split: str | None = None
) -> dict[str, Any]:
    """Restores a checkpoint's model (no optimizer state) and evaluates it on its eval split.

    Returns the eval metrics, the parameter counts and per-layer densities, and
    `params_fingerprint` (SHA-256 over params and masks).
    """

    restored = restore_model(workdir, step=step, data_dir=data_dir, split=split)
    config, params, mesh = restored.config, restored.params, restored.mesh
    _, eval_input = data_lib.make_inputs(config)
    eval_fn = make_eval_fn(restored.model, mesh, DeviceInput.from_config(config))
    results = evaluate(eval_fn, params, restored.forward_masks, eval_input, mesh, config.seed)
    return {
        'step': restored.step,
        'model': config.model.name,
        'method': config.sparsity.method,
        **results,
        **describe(params, restored.masks),
        'params_fingerprint': params_fingerprint(params, restored.masks),
    }
