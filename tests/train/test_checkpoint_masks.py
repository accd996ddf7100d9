"""A checkpoint holds the sparse masks once (its ``masks`` item; the saved optimizer state leaves
them out) and resuming puts them back exactly; checkpoints of the earlier layout (masks in both
items) still restore, and a damaged masks item is named in one line."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from sparse_vit_jax.errors import CheckpointError
from sparse_vit_jax.train import loop, restore
from sparse_vit_jax.train.checkpoint import Checkpointer


def _random_state(trainer, step):
    """A train state of the run's shapes, dtypes and shardings holding random values at `step`:
    only the checkpoint can reproduce its masks (not the initial ones, not `ever_active`)."""
    rng = np.random.default_rng(step)

    def draw(leaf):
        if leaf.dtype == np.bool_:
            return rng.random(leaf.shape) < 0.5
        if leaf.dtype == np.int32:
            return rng.integers(0, 100, leaf.shape, np.int32)
        return rng.standard_normal(leaf.shape).astype(leaf.dtype)

    state = jax.tree.map(draw, trainer.abstract_state)
    state = jax.device_put(state.replace(step=np.int32(step)), trainer.state_sharding)
    return state


def _paths(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, 'shape'))[0]
    return [jax.tree_util.keystr(path) for path, leaf in flat if leaf is not None]


def _assert_same(restored, saved):
    assert jax.tree.structure(restored) == jax.tree.structure(saved)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(saved)):
        assert got.dtype == want.dtype and np.array_equal(got, want)


def _save_earlier_layout(checkpointer, state, meta):
    """A checkpoint as written before the masks were stored once: the whole optimizer state
    (masks included) beside the masks item, and a meta without 'masks_in_opt_state'."""
    save = ocp.args.StandardSave
    train = {'step': state.step, 'nonfinite_step': state.nonfinite_step, 'ema_params': None}
    items = ocp.args.Composite(
        params=save(state.params),
        masks=save(state.masks),
        opt_state=save(state.opt_state),
        train=save(train),
        meta=ocp.args.JsonSave(dict(meta, step=int(state.step), has_masks=True)),
    )
    checkpointer.manager.save(int(state.step), args=items)
    checkpointer.manager.wait_until_finished()


@pytest.mark.parametrize(
    'method', ['method=svite', 'method=s2vite,head_density=0.5,neuron_density=0.5']
)
def test_masks_are_saved_once_and_resume_exactly_also_from_the_earlier_layout(
    tiny_config, tmp_path, method
):
    workdir = str(tmp_path / 'run')
    trainer = loop.Trainer(tiny_config(arg=method), workdir)
    checkpointer = Checkpointer(workdir)
    once, earlier = _random_state(trainer, 7), _random_state(trainer, 8)
    checkpointer.save(once, trainer.meta)
    _save_earlier_layout(checkpointer, earlier, trainer.meta)  # waits for both

    # On disk step 7's optimizer state holds no mask array (ever_active, no copy, stays).
    saved = _paths(checkpointer.saved_shapes('opt_state', 7))
    masks = _paths(once.masks)
    assert masks and not any("['masks']" in path for path in saved)
    assert any("['ever_active']" in path for path in saved)
    assert len(saved) == len(_paths(once.opt_state)) - len(masks)
    assert len(_paths(checkpointer.saved_shapes('opt_state', 8))) == len(_paths(once.opt_state))

    # Resuming gives back each whole state, masks bit for bit; evaluation reads the same masks.
    for state in (once, earlier):
        step = int(state.step)
        resumed = restore.restore_train_state(
            checkpointer, trainer.abstract_state, trainer.state_sharding, step
        )
        _assert_same(resumed, state)
        _assert_same(restore.restore_model(workdir, step=step).masks, state.masks)

    # A damaged masks item is named as such, in one line.
    folder = os.path.join(checkpointer.directory, '7', 'masks', 'd')
    victim = max((os.path.join(folder, name) for name in os.listdir(folder)), key=os.path.getsize)
    with open(victim, 'r+b') as f:
        f.truncate(os.path.getsize(victim) // 2)
    with pytest.raises(CheckpointError, match=r'^checkpoint step 7 is damaged: masks/[^\n]*$'):
        restore.restore_train_state(checkpointer, trainer.abstract_state, trainer.state_sharding, 7)
    checkpointer.close()
