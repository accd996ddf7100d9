"""Improved S²ViTE grows MLP neurons by what switching them on would do to the loss.

With the reference's growth score (the L1 of an inactive neuron's weight gradients) every
inactive neuron scores exactly 0 — its fc2 row is 0, so nothing flows into fc1, and its gated
activation is 0, so nothing flows into fc2 — and exact-count growth can only bring back the
neurons it just pruned. Improved S²ViTE keeps a pruned neuron's weights (frozen, gated off) and
scores it by -∂L/∂gate, the loss decrease that switching it on predicts to first order.
"""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparse_vit_jax.data.mixup import smooth_labels
from sparse_vit_jax.models import create_model
from sparse_vit_jax.sparsity import state as sparsity_state
from sparse_vit_jax.sparsity.transform import SparsitySpec, sparse_training
from sparse_vit_jax.train.state import create_train_state
from sparse_vit_jax.train.steps import TrainStep

MODEL = create_model('vit_test')  # depth 2, 4 heads of 8, MLP 64


@pytest.fixture(scope='module')
def improved_run():
    """(initial state, jitted train step) of improved S²ViTE updating after every step with
    r = ceil(0.02 · 32) = 1 neuron pruned and grown per block."""
    spec = SparsitySpec(
        structured=True,
        fidelity='improved',
        total_steps=40,
        update_every=1,
        prune_rate=0.02,
        final_prune_rate=0.02,
        head_density=0.5,
        neuron_density=0.5,
        num_heads=4,
        head_dim=8,
    )
    tx = sparse_training(optax.adamw(3e-3), spec)
    init = lambda: create_train_state(
        MODEL, tx, jax.random.key(0), (16, 16, 3), fidelity='improved'
    )
    step = TrainStep(
        MODEL,
        tx,
        seed=0,
        num_classes=10,
        label_smoothing=0.1,
        fidelity='improved',
        needs_head_scores=True,
        needs_neuron_gate_grads=True,
    )
    return jax.jit(init)(), jax.jit(step)


def _batch(seed: int, size: int = 32):
    return {
        'image': jax.random.normal(jax.random.key(seed), (size, 16, 16, 3)),
        'label': jnp.arange(size) % 10,
    }


def test_a_neuron_whose_growth_lowers_the_loss_scores_and_the_best_one_is_grown(improved_run):
    state, step = improved_run
    batch = _batch(0)
    targets = smooth_labels(batch['label'], 10, 0.1)
    masks = sparsity_state.forward_masks(state.masks, 'improved')

    def loss(gates):
        logits = MODEL.apply(
            {'params': state.params}, batch['image'], masks={**masks, 'neurons': gates}
        )
        return optax.softmax_cross_entropy(logits, targets).mean()

    @jax.jit  # one compile: the loss and its gate gradient, and the loss of each variant
    def probe(gates, variants):
        return jax.value_and_grad(loss)(gates), jax.vmap(loss)(variants)

    gates = masks['neurons'].astype(jnp.float32)
    inactive = ~np.asarray(masks['neurons'])
    # Each variant switches one inactive neuron on: does the loss really go down?
    blocks, units = np.nonzero(inactive)
    variants = np.repeat(np.asarray(gates)[None], blocks.size, 0)
    variants[np.arange(blocks.size), blocks, units] = 1.0
    (base, gate_grad), losses = probe(gates, jnp.asarray(variants))
    score = -np.asarray(gate_grad)  # the predicted loss decrease of switching on
    helps = np.zeros_like(inactive)
    helps[blocks, units] = np.asarray(losses) < float(base)
    assert helps.sum() >= 10, 'the frozen weights of inactive neurons must be able to help'
    assert np.all(score[helps] > 0), 'a neuron whose growth lowers the loss scored <= 0'
    assert np.mean(helps[inactive] == (score[inactive] > 0)) > 0.9  # first order is accurate here

    new_state, _ = step(state, batch)
    old, new = np.asarray(state.masks['neurons']), np.asarray(new_state.masks['neurons'])
    assert np.all(new.sum(1) == old.sum(1))
    for block in range(2):
        grown = np.flatnonzero(new[block] & ~old[block])
        assert grown.size == 1, 'the grown neuron must be a previously inactive one'
        assert helps[block, grown[0]]
        assert grown[0] == np.flatnonzero(inactive[block])[np.argmax(score[block][inactive[block]])]


def test_improved_neurons_move_and_regrown_ones_resume_their_frozen_weights(improved_run):
    """Over 4 updates neurons really move (the reference score moves none but the just-pruned),
    each neuron grown back has the nonzero weights it was frozen with, the count stays 32."""
    state, step = improved_run
    grown_total = 0
    for i in range(4):
        before = jax.device_get(state)
        state, _ = step(state, _batch(i))
        old, new = before.masks['neurons'], np.asarray(state.masks['neurons'])
        assert np.all(new.sum(1) == 32)
        for block, j in zip(*np.nonzero(new & ~old)):
            grown_total += 1
            fc1 = np.asarray(state.params[f'blocks_{block}']['mlp']['fc1']['kernel'])[:, j]
            np.testing.assert_array_equal(
                fc1, before.params[f'blocks_{block}']['mlp']['fc1']['kernel'][:, j]
            )
            assert np.any(fc1 != 0)
    assert grown_total >= 4
