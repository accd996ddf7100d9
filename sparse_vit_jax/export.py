"""Export the slim (physically smaller, dense) model of an S²ViTE run as a model-only checkpoint.

The exported checkpoint is what `tools/evaluate.py` (``evaluate_checkpoint``) reads: params and
a meta whose config is the run's, with the `model` section replaced by the slim model's
(per-layer head counts and MLP widths, explicit head_dim) and the sparsity section reset to
dense (the slim model has no masks). ``meta['slim_export']`` records where it came from.
"""

from __future__ import annotations

import copy
from typing import Any

from sparse_vit_jax import config as config_lib
from sparse_vit_jax import paths
from sparse_vit_jax.models import slim as slim_lib
from sparse_vit_jax.train.checkpoint import Checkpointer
from sparse_vit_jax.train.restore import RestoredModel, restore_model


class SlimExportError(ValueError):
    """The run cannot be exported as a slim model (not structured, or the output is taken)."""


def slim_run_config(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The run config of the slim model: the slim `model` section, dense sparsity (no masks).

    Fidelity is kept for the record; with no masks it changes nothing in the forward pass.
    """
    config = copy.deepcopy(config)
    config['model'] = slim_lib.slim_model_config(config['model'], overrides)
    config['sparsity'].update(method='dense', density=1.0, head_density=1.0, neuron_density=1.0)
    return config


def _restore_structured_run(workdir: str, step: int | None) -> RestoredModel:
    """The restored model (`restore.restore_model`: the run's model and token selectors,
    params and masks, on this machine's devices) of a structured run's checkpoint; refuses
    other runs."""
    restored = restore_model(workdir, step=step)
    name = restored.config.sparsity.method
    if not config_lib.method(name).structured or restored.masks is None:
        raise SlimExportError(
            'this run has no head/neuron masks; slim export needs an S²ViTE run '
            f'(method=s2vite), but {workdir} is method={name}'
        )
    return restored


def export_slim(workdir: str, out: str, step: int | None = None) -> dict[str, Any]:
    """Writes the slim model of `workdir`'s checkpoint (latest, or `step`) to `out`.

    Returns what was written: the output directory, the step, fidelity, kept heads and neurons
    per block, and the parameter counts before and after.
    """
    restored = _restore_structured_run(workdir, step)
    params, masks = restored.params, restored.masks
    try:
        slim_lib.unit_masks(masks)
    except ValueError as error:
        raise SlimExportError(str(error)) from None
    meta = restored.meta
    fidelity = meta['config']['sparsity']['fidelity']
    params_slim, overrides = slim_lib.slim_params(
        params, masks, fidelity=fidelity, head_dim=restored.model.resolved_head_dim
    )
    target = Checkpointer(out)  # created only once there is something to write
    if target.latest_step() is not None:
        raise SlimExportError(f'{target.directory} already holds checkpoints; use a new --out')
    source = {
        'workdir': str(paths.resolve(workdir)),
        'step': meta['step'],
        'method': meta['config']['sparsity']['method'],
        'fidelity': fidelity,
        'kept_heads': list(overrides['num_heads']),
        'kept_neurons': list(overrides['mlp_dim']),
        'head_dim': overrides['head_dim'],
        'source_num_params': slim_lib.num_params(params),
        'num_params': slim_lib.num_params(params_slim),
    }
    slim_meta = {
        **{k: v for k, v in meta.items() if k not in ('step', 'has_masks')},
        'config': slim_run_config(meta['config'], overrides),
        'slim_export': source,
    }
    target.save_model(meta['step'], params_slim, None, slim_meta)
    target.close()
    return {'out': target.directory, **source}
