"""Orbax checkpoints of a run: the full train state for resuming, the model alone for evaluation.

Each step folder holds items ``params``, ``masks`` (what evaluation and export need), ``opt_state``
and ``train`` (step counters, EMA; what resuming needs besides) and ``meta`` (JSON: the run config,
the model's constructor arguments and the step). Orbax writes a step to a temporary folder and
renames it when complete, so a run killed mid-save leaves the earlier steps intact and the
restart resumes from the last complete one.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from sparse_vit_jax.errors import CheckpointError
from sparse_vit_jax.train.state import TrainState

ITEMS = ('params', 'masks', 'opt_state', 'train', 'meta')


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), 'checkpoints')


def _abstract(tree: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
    """Saves and restores the checkpoints of one workdir."""

    def __init__(self, workdir: str, keep: int = 3, *, create: bool = True):
        directory = checkpoint_dir(workdir)
        if not create and not os.path.isdir(directory):
            raise CheckpointError(
                f'no checkpoints in {workdir} (expected {directory}); train first '
                'with tools/train.py --workdir ' + workdir
            )
        self.directory = directory
        self.manager = ocp.CheckpointManager(
            directory,
            item_names=ITEMS,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, state: TrainState, meta: dict[str, Any]) -> None:
        """Starts an asynchronous save of `state` at its step (arrays are copied before it returns)."""
        step = int(state.step)
        items = dict(
            params=ocp.args.StandardSave(state.params),
            opt_state=ocp.args.StandardSave(state.opt_state),
            train=ocp.args.StandardSave(
                {
                    'step': state.step,
                    'nonfinite_step': state.nonfinite_step,
                    'ema_params': state.ema_params,
                }
            ),
            meta=ocp.args.JsonSave(dict(meta, step=step, has_masks=state.masks is not None)),
        )
        if state.masks is not None:  # dense runs have no masks item
            items['masks'] = ocp.args.StandardSave(state.masks)
        self.manager.save(step, args=ocp.args.Composite(**items))

    def save_model(self, step: int, params: Any, masks: Any, meta: dict[str, Any]) -> None:
        """A model-only checkpoint (no optimizer state): imported or exported weights to evaluate."""
        items = dict(
            params=ocp.args.StandardSave(params),
            meta=ocp.args.JsonSave(dict(meta, step=step, has_masks=masks is not None)),
        )
        if masks is not None:
            items['masks'] = ocp.args.StandardSave(masks)
        self.manager.save(step, args=ocp.args.Composite(**items))
        self.manager.wait_until_finished()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def _step(self, step: int | None) -> int:
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f'no complete checkpoint in {self.directory}')
        if step is None:
            return max(steps)
        if step not in steps:
            raise CheckpointError(
                f'no checkpoint for step {step} in {self.directory}; '
                f'available steps: {sorted(steps)}'
            )
        return step

    def _restore(self, step: int, **args: Any) -> Any:
        try:
            return self.manager.restore(step, args=ocp.args.Composite(**args))
        except Exception as error:  # Orbax raises many types for damaged files.
            raise CheckpointError(
                f'checkpoint step {step} in {self.directory} cannot be read ({type(error).__name__}: '
                f'{str(error)[:300]}). It is corrupt or was written by a different model/config. '
                f'Restore an earlier step (available: {sorted(self.all_steps())}) or move the damaged '
                'step folder aside.'
            ) from error

    def meta(self, step: int | None = None) -> dict[str, Any]:
        step = self._step(step)
        return self._restore(step, meta=ocp.args.JsonRestore())['meta']

    def restore_state(self, target: TrainState, step: int | None = None) -> TrainState:
        """Restores the full train state into the shapes, dtypes and shardings of `target`."""
        step = self._step(step)
        restored = self._restore(
            step,
            params=ocp.args.StandardRestore(_abstract(target.params)),
            opt_state=ocp.args.StandardRestore(_abstract(target.opt_state)),
            train=ocp.args.StandardRestore(
                _abstract(
                    {
                        'step': target.step,
                        'nonfinite_step': target.nonfinite_step,
                        'ema_params': target.ema_params,
                    }
                )
            ),
        )
        train = restored['train']
        return TrainState(
            step=train['step'],
            params=restored['params'],
            opt_state=restored['opt_state'],
            nonfinite_step=train['nonfinite_step'],
            ema_params=train['ema_params'],
        )

    def restore_model(self, params_target: Any, step: int | None = None) -> tuple[Any, Any]:
        """Params and masks only (no optimizer state), e.g. for evaluation or export.

        Params are restored into `params_target` (so a checkpoint of another model size fails
        clearly); masks are plain bool arrays restored as saved, or None for a dense run.
        """
        step = self._step(step)
        items = dict(params=ocp.args.StandardRestore(_abstract(params_target)))
        if self.meta(step)['has_masks']:
            items['masks'] = ocp.args.StandardRestore()
        restored = self._restore(step, **items)
        return restored['params'], restored.get('masks')
