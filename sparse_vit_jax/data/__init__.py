"""Input pipelines: ``make_inputs(config)`` builds the train and eval streams a config names.

Only this package imports TensorFlow, and only when a pipeline is used: the model, sparsity,
train step and benchmark import without it (accelerator hosts may not have it), so the names
below load their modules on first access, and ``sparse_vit_jax.data.mixup`` (pure JAX) never
does.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    'make_inputs': 'sparse_vit_jax.data.inputs',
    'make_recipe': 'sparse_vit_jax.data.inputs',
    'label_names': 'sparse_vit_jax.data.datasets',
    'DatasetNotPreparedError': 'sparse_vit_jax.errors',
    'EvalInput': 'sparse_vit_jax.data.pipeline',
    'TrainInput': 'sparse_vit_jax.data.pipeline',
    'load_builder': 'sparse_vit_jax.data.pipeline',
    'local_batch_size': 'sparse_vit_jax.data.pipeline',
    'prefetch_to_device': 'sparse_vit_jax.data.pipeline',
    'to_global': 'sparse_vit_jax.data.pipeline',
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    return getattr(importlib.import_module(_LAZY[name]), name)
