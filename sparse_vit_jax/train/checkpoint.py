"""Orbax checkpoints of a run: the full train state for resuming, the model alone for evaluation.

Each step folder holds items ``params``, ``masks`` (what evaluation and export need), ``opt_state``
and ``train`` (step counters, EMA; what resuming needs besides) and ``meta`` (JSON: the run config,
the model's constructor arguments and the step). The masks are stored once: ``opt_state`` is saved
without them (its SparseState's ``masks`` empty) and resuming puts the ``masks`` item back (for
DeiT-B SViTE, 86 MB less to copy off the devices per save; 16 MB less on disk, where Orbax
compresses them). Checkpoints written before hold the masks in both items (their meta lacks
``masks_in_opt_state``) and restore as they are.

A step becomes visible only when complete (Orbax renames a local temporary folder, or writes
`commit_success.txt` last in a bucket), so a run killed mid-save leaves the earlier steps intact;
the partial step is removed at the next start.

Restoring takes targets that carry shardings (built by `sparse_vit_jax.train.restore` for the
current mesh), so a checkpoint restores onto any device count or mesh. Failures are one-line
`CheckpointError`s that say which it is: no checkpoint yet, a checkpoint of another model, a
damaged step (naming the step and the array that cannot be read), or a full disk.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping

import jax
import orbax.checkpoint as ocp

from sparse_vit_jax import paths
from sparse_vit_jax.errors import CheckpointError, DiskFullError
from sparse_vit_jax.sparsity import state as sparsity_state
from sparse_vit_jax.train.state import TrainState

# Array items (restored into targets) beside 'meta' (JSON).
ARRAY_ITEMS = ('params', 'masks', 'opt_state', 'train')
_DAMAGED = re.compile(
    r'Error reading|DATA_LOSS|OUT_OF_RANGE|NOT_FOUND|Unexpected end|decode|corrupt'
)


def checkpoint_dir(workdir: str) -> str:
    return paths.join(workdir, 'checkpoints')


def _innermost(error: BaseException) -> BaseException:
    """The exception at the bottom of the chain (Orbax wraps TensorStore's, which says why)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return error


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return lines[0].strip()


def _leaf_shapes(tree: Any) -> dict[str, tuple]:
    """{'a/b/c': shape} over the array leaves of a params tree (or its Orbax metadata)."""
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, 'shape'))[0]
    return {
        '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path): tuple(leaf.shape)
        for path, leaf in flat
        if leaf is not None
    }


class Checkpointer:
    """Saves and restores the checkpoints of one workdir (local or gs://)."""

    def __init__(self, workdir: str, keep: int = 3, *, create: bool = True):
        self.directory = checkpoint_dir(workdir)
        self._saving: int | None = None  # the step of the save in flight
        if not create and not paths.resolve(self.directory).is_dir():
            raise CheckpointError(
                f'no checkpoint yet in {workdir} (no {self.directory}); train first with '
                f'tools/train.py --workdir {workdir}'
            )
        standard = ocp.StandardCheckpointHandler
        # Explicit handlers let `saved_shapes` read an item's metadata without restoring it.
        handlers = {name: standard() for name in ARRAY_ITEMS}
        self.manager = ocp.CheckpointManager(
            paths.resolve(self.directory),
            item_handlers={**handlers, 'meta': ocp.JsonCheckpointHandler()},
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=create,
                # A step a killed or failed save left unfinished is deleted when training starts.
                cleanup_tmp_directories=create,
            ),
        )

    # ------------------------------------------------------------------ what is there

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def _step(self, step: int | None) -> int:
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f'no checkpoint yet in {self.directory}')
        if step is None:
            return steps[-1]
        if step not in steps:
            raise CheckpointError(
                f'no checkpoint for step {step} in {self.directory}; available steps: {steps}'
            )
        return step

    def describe_latest(self) -> str:
        """'step N in DIR', or 'none yet (DIR)': for messages about what survives."""
        step = self.latest_step()
        return (
            f'none yet ({self.directory})' if step is None else f'step {step} in {self.directory}'
        )

    # ------------------------------------------------------------------ saving

    def save(
        self, state: TrainState, meta: dict[str, Any], *, masks_in_opt_state: bool = False
    ) -> None:
        """Starts an asynchronous save of `state` at its step (arrays are copied before it
        returns). masks_in_opt_state=True writes the earlier layout, the masks also inside the
        optimizer state (it restores the same; tools/benchmark.py save compares the two)."""
        step = int(state.step)
        opt_state = state.opt_state
        if not masks_in_opt_state:
            opt_state = sparsity_state.without_masks(opt_state)
        items = dict(
            params=ocp.args.StandardSave(state.params),
            opt_state=ocp.args.StandardSave(opt_state),
            train=ocp.args.StandardSave(
                {
                    'step': state.step,
                    'nonfinite_step': state.nonfinite_step,
                    'ema_params': state.ema_params,
                }
            ),
            meta=ocp.args.JsonSave(
                dict(
                    meta,
                    step=step,
                    has_masks=state.masks is not None,
                    masks_in_opt_state=masks_in_opt_state,
                )
            ),
        )
        if state.masks is not None:  # dense runs have no masks item
            items['masks'] = ocp.args.StandardSave(state.masks)
        self._save(step, items)

    def save_model(self, step: int, params: Any, masks: Any, meta: dict[str, Any]) -> None:
        """A model-only checkpoint (no optimizer state): imported or exported weights to
        evaluate."""
        items = dict(
            params=ocp.args.StandardSave(params),
            meta=ocp.args.JsonSave(dict(meta, step=step, has_masks=masks is not None)),
        )
        if masks is not None:
            items['masks'] = ocp.args.StandardSave(masks)
        self._save(step, items)
        self.wait()

    def _save(self, step: int, items: dict[str, Any]) -> None:
        try:  # Orbax first waits for the previous save, whose failure surfaces here
            self.manager.save(step, args=ocp.args.Composite(**items))
        except Exception as error:
            raise self._save_error(error, step if self._saving is None else self._saving) from None
        self._saving = step

    def wait(self) -> None:
        """Blocks until the save in flight is complete; a failed save becomes one clear error."""
        try:
            self.manager.wait_until_finished()
        except Exception as error:
            raise self._save_error(error, self._saving) from None

    def close(self) -> None:
        """Waits for the save in flight and stops Orbax's threads (no stray output at exit)."""
        try:
            self.wait()
        finally:
            try:
                self.manager.close()
            except Exception:  # the failed save was reported by wait()
                pass

    def _save_error(self, error: Exception, step: int | None) -> CheckpointError:
        cause = _first_line(_innermost(error))
        written = re.search(rf'{re.escape(self.directory)}/(\d+)', cause)  # the failing step
        step = int(written.group(1)) if written else step
        if paths.is_disk_full(error):
            return self.disk_full_error(f'checkpoint step {step} to {self.directory}')
        return CheckpointError(
            f'saving checkpoint step {step} to {self.directory} failed: {cause}. The last '
            f'complete checkpoint is {self.describe_latest()}.'
        )

    def disk_full_error(self, writing: str) -> DiskFullError:
        """The one line for a full disk met while writing `writing` (a checkpoint, or any other
        file of the run): the free space, what a checkpoint needs, what survives."""
        free = paths.free_bytes(self.directory)
        need = self._bytes_of_latest_step()
        wanted = f'about {need / 2**20:.1f} MB per checkpoint' if need else 'room for a checkpoint'
        have = f'{free / 2**20:.1f} MB free' if free is not None else 'the bucket is full'
        step = self.latest_step()
        survivor = (
            f'it resumes from the last complete checkpoint, step {step}'
            if step is not None
            else 'no checkpoint was saved yet, so it starts over'
        )
        return DiskFullError(
            f'no space left on the device writing {writing} ({have}; this run needs {wanted}). '
            f'Free space (or choose another --workdir) and run the same command: {survivor}, '
            'and an unfinished step is removed.'
        )

    def _bytes_of_latest_step(self) -> int | None:
        """Size of the latest complete step folder (local disks only): what the next one needs."""
        step = self.latest_step()
        sizes = None if step is None else self.item_bytes(step)
        return None if sizes is None else sum(sizes.values())

    def item_bytes(self, step: int) -> dict[str, int] | None:
        """Bytes on disk of each item of step `step` ('.' for the step's own files); None in a
        bucket (the sizes would cost a listing)."""
        if paths.is_remote(self.directory):
            return None
        folder = paths.resolve(self.directory) / str(step)
        sizes: dict[str, int] = {}
        for root, _, names in folder.walk():
            item = (root.relative_to(folder).parts or ('.',))[0]
            size = sum((root / name).stat().length for name in names)
            sizes[item] = sizes.get(item, 0) + size
        return sizes

    # ------------------------------------------------------------------ restoring

    def meta(self, step: int | None = None) -> dict[str, Any]:
        step = self._step(step)
        return self._restore(step, {'meta': ocp.args.JsonRestore()})['meta']

    def saved_shapes(self, item: str, step: int | None = None) -> Any:
        """An item's tree as saved, with jax.ShapeDtypeStruct leaves (no sharding): what to
        restore it into when nothing else describes it (e.g. the masks)."""
        step = self._step(step)
        try:
            tree = self.manager.item_metadata(step)[item].tree
        except Exception as error:
            raise self._read_error(step, error) from None
        return jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype),
            tree,
            is_leaf=lambda x: hasattr(x, 'shape'),
        )

    def restore(self, targets: Mapping[str, Any], step: int | None = None) -> dict[str, Any]:
        """Array items restored into `targets` ({item: tree of jax.ShapeDtypeStruct with
        shardings}); refuses a params target whose shapes differ from the saved ones."""
        step = self._step(step)
        if 'params' in targets:
            self._check_params_fit(step, targets['params'])
        args = {name: ocp.args.StandardRestore(tree) for name, tree in targets.items()}
        return self._restore(step, args)

    def restore_state(self, target: TrainState, step: int | None = None) -> TrainState:
        """The full train state, restored into the shapes, dtypes and shardings of `target`.

        The masks come from the ``masks`` item into the optimizer state, unless the checkpoint
        holds them inside it (the earlier layout, told by its meta) or the target and the
        checkpoint disagree on having masks (then restoring the whole opt_state names the
        mismatch)."""
        step = self._step(step)
        meta = self.meta(step)
        masks = target.masks
        separate = (
            masks is not None and meta['has_masks'] and not meta.get('masks_in_opt_state', True)
        )
        opt_state = sparsity_state.without_masks(target.opt_state) if separate else target.opt_state
        train = {
            'step': target.step,
            'nonfinite_step': target.nonfinite_step,
            'ema_params': target.ema_params,
        }
        targets = {'params': target.params, 'opt_state': opt_state, 'train': train}
        if separate:
            targets['masks'] = masks
        restored = self.restore(targets, step)
        opt_state = restored['opt_state']
        if separate:
            opt_state = sparsity_state.with_masks(opt_state, restored['masks'])
        train = restored['train']
        return TrainState(
            step=train['step'],
            params=restored['params'],
            opt_state=opt_state,
            nonfinite_step=train['nonfinite_step'],
            ema_params=train['ema_params'],
        )

    def _check_params_fit(self, step: int, target: Any) -> None:
        saved, wanted = _leaf_shapes(self.saved_shapes('params', step)), _leaf_shapes(target)
        if saved == wanted:
            return
        differ = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
        first = differ[0]
        raise CheckpointError(
            f'checkpoint step {step} in {self.directory} holds another model than the one being '
            f'restored: {len(differ)} params differ, first {first}: saved '
            f'{saved.get(first, "absent")}, expected {wanted.get(first, "absent")}'
        )

    def _restore(self, step: int, args: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.manager.restore(step, args=ocp.args.Composite(**args))
        except Exception as error:
            raise self._read_error(step, error) from None

    def _read_error(self, step: int, error: Exception) -> CheckpointError:
        """A step that cannot be read: damaged files get the advice to fall back; anything else
        (never a difference of devices or mesh: targets carry the current shardings) is named."""
        root = _innermost(error)
        cause = _first_line(root)
        if not (
            _DAMAGED.search(cause) or isinstance(root, (FileNotFoundError, json.JSONDecodeError))
        ):
            return CheckpointError(
                f'checkpoint step {step} in {self.directory} cannot be restored: {cause}'
            )
        found = re.search(r'Error reading "([^"]+)" in \w+ database at [^"]*"([^"]+)"', cause)
        if found:
            key, folder = found.groups()
            what = f'{os.path.basename(folder.rstrip("/"))}/{key.split("/")[0]}'
            detail = cause.split(': ', 1)[-1] if ': ' in cause else cause
            cause = f'{what} in {folder} cannot be read ({detail})'
        earlier = [s for s in self.all_steps() if s < step]
        fallback = (
            f'evaluate an earlier step with --step {earlier[-1]} (available: {earlier}), or move '
            f'{self.directory}/{step} aside so training resumes from step {earlier[-1]}'
            if earlier
            else f'no earlier step exists; move {self.directory}/{step} aside to start over'
        )
        return CheckpointError(f'checkpoint step {step} is damaged: {cause}; {fallback}.')
