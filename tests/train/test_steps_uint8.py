"""The train and eval steps take uint8 batches: normalized and erased on device, then exactly the
step that took host-normalized float32 images (Mixup/CutMix, loss, update unchanged)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparse_vit_jax.data import mixup
from sparse_vit_jax.data.device_input import DeviceInput
from sparse_vit_jax.models import create_model
from sparse_vit_jax.train.state import create_train_state
from sparse_vit_jax.train.steps import TrainStep, eval_step, step_keys

INPUTS = DeviceInput(mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3))


def _batch():
    rng = np.random.default_rng(0)
    boxes = np.zeros((8, 1, 4), np.int32)
    boxes[::2, 0] = [[1, 2, 6, 5], [0, 0, 15, 15], [9, 9, 7, 7], [3, 4, 2, 11]]  # half erased
    return {
        'image': rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8),
        'label': np.arange(8, dtype=np.int32) % 10,
        'erase': boxes,
    }


def test_uint8_train_step_equals_the_step_on_host_normalized_floats():
    model = create_model('vit_test')
    tx = optax.adamw(1e-3)
    state = create_train_state(model, tx, jax.random.key(0), (16, 16, 3))
    mix = functools.partial(
        mixup.mixup_cutmix,
        num_classes=10,
        mixup_alpha=0.8,
        cutmix_alpha=1.0,
        prob=1.0,
        switch_prob=0.5,
        label_smoothing=0.1,
    )
    common = dict(seed=3, num_classes=10, label_smoothing=0.1, mix=mix)
    on_device = jax.jit(TrainStep(model, tx, inputs=INPUTS, **common))
    on_floats = jax.jit(TrainStep(model, tx, **common))
    batch = _batch()
    for _ in range(2):  # two steps: two erasing keys, Mixup then CutMix or the other way
        key = step_keys(3, state.step)['erasing']
        floats = {'image': jax.jit(INPUTS.images)(batch, key), 'label': batch['label']}
        assert (np.asarray(floats['image'])[::2] != np.asarray(floats['image'])[1::2]).any()
        new, metrics = on_device(state, batch)
        expected, expected_metrics = on_floats(state, floats)
        for a, b in zip(
            jax.tree.leaves((new.params, metrics)),
            jax.tree.leaves((expected.params, expected_metrics)),
        ):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        state = new


def test_earlier_random_streams_keep_their_keys():
    # The erasing stream was added last: dropout, Gumbel, Mixup and sparsity draw as before.
    keys = step_keys(7, jnp.int32(5))
    before = jax.random.split(jax.random.fold_in(jax.random.key(7), 5), 4)
    for name, key in zip(('dropout', 'gumbel', 'mixup', 'sparsity'), before):
        np.testing.assert_array_equal(jax.random.key_data(keys[name]), jax.random.key_data(key))


def test_uint8_eval_step_equals_the_step_on_host_normalized_floats():
    model = create_model('vit_test')
    params = create_train_state(model, optax.sgd(0.1), jax.random.key(0), (16, 16, 3)).params
    batch = {k: v for k, v in _batch().items() if k != 'erase'}
    batch['mask'] = np.arange(8) < 6
    on_device = jax.jit(functools.partial(eval_step, model, inputs=INPUTS))(params, None, batch)
    floats = {**batch, 'image': jax.jit(INPUTS.normalize)(batch['image'])}
    expected = jax.jit(functools.partial(eval_step, model))(params, None, floats)
    for name in expected:
        np.testing.assert_allclose(on_device[name], expected[name], rtol=1e-5, atol=1e-5)
