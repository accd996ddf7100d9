"""bf16 compute with fp32 params (the TPU/GPU setting) runs the same step on CPU."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparse_vit_jax.models import create_model
from sparse_vit_jax.train.state import create_train_state
from sparse_vit_jax.train.steps import TrainStep


def test_bfloat16_compute_keeps_float32_params_and_learns():
    model = create_model('vit_test', dtype=jnp.bfloat16)
    tx = optax.adamw(2e-3, weight_decay=0.0)
    state = create_train_state(model, tx, jax.random.key(0), (16, 16, 3))
    step = jax.jit(TrainStep(model, tx, seed=0, num_classes=10, label_smoothing=0.0))
    batch = {
        'image': jax.random.normal(jax.random.key(1), (16, 16, 16, 3)),
        'label': jnp.arange(16) % 10,
    }
    logits = model.apply({'params': state.params}, batch['image'])
    assert logits.dtype == jnp.float32  # the loss is computed in float32
    first = None
    for _ in range(60):
        state, metrics = step(state, batch)
        first = first if first is not None else float(metrics['loss'])
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))
    assert float(metrics['loss']) < 0.5 * first
    fp32 = create_model('vit_test').apply({'params': state.params}, batch['image'])
    bf16 = model.apply({'params': state.params}, batch['image'])
    assert np.max(np.abs(fp32 - bf16)) < 0.1 * np.max(np.abs(fp32))  # same function, bf16 rounding
