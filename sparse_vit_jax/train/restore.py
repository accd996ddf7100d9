"""Restoring a run onto the devices at hand: the one place that rebuilds a model from a checkpoint.

Evaluation, slim export, plots, benchmarks and resumed training all come through here. A
checkpoint's `meta` holds the config it was trained with; the model is rebuilt from its `model`
and `tokens` sections, and every restore target carries the shardings of the *current* mesh, so
a checkpoint written by 8 devices (data parallel or FSDP) or by several processes restores on
one device, and the other way round.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections

from sparse_vit_jax.models import create_model_from_config, input_shape
from sparse_vit_jax.train import sharding as sharding_lib
from sparse_vit_jax.train.checkpoint import Checkpointer
from sparse_vit_jax.train.state import TrainState, init_params


def model_from_config(config: Any) -> Any:
    """The model a run config describes: its `model` section with its `tokens` selector."""
    return create_model_from_config(config['model'], config.get('tokens'))


def restore_mesh(config: Any) -> jax.sharding.Mesh:
    """A mesh over the devices at hand: the run's FSDP size where it divides them, else data
    parallel (evaluation and export need no particular layout; any mesh restores)."""
    fsdp = config['mesh']['fsdp']
    fsdp = fsdp if jax.device_count() % fsdp == 0 else 1
    return sharding_lib.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=fsdp)))


def sharded(abstract: Any, mesh: jax.sharding.Mesh, min_size: int = 2**18) -> Any:
    """`abstract` (a tree of shapes) as restore targets with the sharding rule of training."""
    shardings = sharding_lib.state_shardings(abstract, mesh, min_size)
    return with_shardings(abstract, shardings)


def with_shardings(abstract: Any, shardings: Any) -> Any:
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


@dataclasses.dataclass(frozen=True)
class RestoredModel:
    """A checkpoint's model without its optimizer state, on `mesh`."""

    config: ml_collections.ConfigDict  # the run's config, with any data overrides
    model: Any
    params: Any
    masks: dict | None
    step: int
    meta: dict
    mesh: jax.sharding.Mesh

    @property
    def forward_masks(self) -> Any:
        """The masks the forward pass takes (head/neuron gates in improved structured mode)."""
        from sparse_vit_jax.sparsity import state as sparsity_state

        return sparsity_state.forward_masks(self.masks, self.config.sparsity.fidelity)


def restore_model(
    workdir: str,
    *,
    step: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    data_dir: str | None = None,
    split: str | None = None,
) -> RestoredModel:
    """The model, params and masks of a workdir's latest (or given) checkpoint, on `mesh`
    (default: `restore_mesh`). data_dir and split override the config's eval data."""
    checkpointer = Checkpointer(workdir, create=False)
    try:
        meta = checkpointer.meta(step)
        config = ml_collections.ConfigDict(meta['config'])
        if data_dir is not None:
            config.data.data_dir = data_dir
        if split is not None:
            config.data.eval_split = split
        model = model_from_config(config)
        mesh = restore_mesh(config) if mesh is None else mesh
        min_size = config.mesh.fsdp_min_size
        shape = input_shape(config)
        params = jax.eval_shape(lambda: init_params(model, jax.random.key(0), shape))
        targets = {'params': sharded(params, mesh, min_size)}
        if meta['has_masks']:
            saved = checkpointer.saved_shapes('masks', meta['step'])
            targets['masks'] = sharded(saved, mesh, min_size)
        restored = checkpointer.restore(targets, meta['step'])
    finally:
        checkpointer.close()
    return RestoredModel(
        config, model, restored['params'], restored.get('masks'), meta['step'], meta, mesh
    )


def restore_train_state(
    checkpointer: Checkpointer, abstract_state: TrainState, shardings: Any, step: int | None = None
) -> TrainState:
    """The full train state of a checkpoint (resuming), in the current run's shardings."""
    return checkpointer.restore_state(with_shardings(abstract_state, shardings), step)


def saved_config(workdir: str, step: int | None = None) -> dict | None:
    """The config of a workdir's latest (or given) checkpoint, or None when it has none yet."""
    from sparse_vit_jax.errors import CheckpointError

    try:
        checkpointer = Checkpointer(workdir, create=False)
    except CheckpointError:
        return None
    try:
        return checkpointer.meta(step)['config'] if checkpointer.all_steps() else None
    finally:
        checkpointer.close()
