"""The sparse-training optax transformation: decisions equal the pure per-tensor functions, the zero
invariant holds through optax.apply_updates alone, counts are constant, updates happen exactly at
the ΔT steps, and the improved fidelity resets exactly the regrown moments."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparse_vit_jax.models import create_model
from sparse_vit_jax.sparsity import prune_grow, schedules
from sparse_vit_jax.sparsity import state as sparsity_state
from sparse_vit_jax.sparsity.transform import SparsitySpec, sparse_training, unit_weight_masks
from sparse_vit_jax.train.state import create_train_state
from sparse_vit_jax.train.steps import TrainStep

MODEL = create_model('vit_test')  # depth 2, 4 heads of 8, MLP 64
SPEC = dict(total_steps=40, update_every=3, num_heads=4, head_dim=8)


def _spec(structured, fidelity, **kw):
    return SparsitySpec(
        structured=structured,
        fidelity=fidelity,
        density=0.4,
        head_density=0.5,
        neuron_density=0.5,
        **{**SPEC, **kw},
    )


def _leaves(tree):
    return jax.tree.leaves(tree)


def _masked_pairs(params, masks):
    """(param, mask) for every masked leaf."""
    pairs = []
    jax.tree.map(
        lambda p, m: m is None or pairs.append((p, m)), params, masks, is_leaf=lambda x: x is None
    )
    return pairs


def _run(spec, steps=10):
    """Real training steps on random data; returns the states after every step."""
    tx = sparse_training(optax.adamw(3e-3), spec)
    state = create_train_state(
        MODEL, tx, jax.random.key(0), (16, 16, 3), ema=True, fidelity=spec.fidelity
    )
    step = jax.jit(
        TrainStep(
            MODEL,
            tx,
            seed=0,
            num_classes=10,
            label_smoothing=0.1,
            fidelity=spec.fidelity,
            needs_head_scores=spec.needs_head_scores,
            needs_neuron_gate_grads=spec.needs_neuron_gate_grads,
            ema_decay=0.9,
        ),
        donate_argnums=0,
    )
    states = [jax.device_get(state)]
    for i in range(steps):
        batch = {
            'image': jax.random.normal(jax.random.key(i), (8, 16, 16, 3)),
            'label': jnp.arange(8) % 10,
        }
        state, _ = step(state, batch)
        states.append(jax.device_get(state))
    return states


@pytest.mark.parametrize('structured', [False, True])
@pytest.mark.parametrize('fidelity', ['reference', 'improved'])
def test_counts_constant_zeros_exact_and_masks_move_only_at_update_steps(structured, fidelity):
    """Pruned weights are exactly 0, except in improved S²ViTE, whose gated units keep their
    weights frozen while inactive (and whose neurons then really move)."""
    states = _run(_spec(structured, fidelity))
    counts = [[int(m.sum()) for m in _leaves(s.masks['weights'])] for s in states]
    assert all(c == counts[0] for c in counts), 'per-layer nonzero counts changed'
    gated = structured and fidelity == 'improved'
    changed_at = []
    for before, after in zip(states, states[1:]):
        for (p, m), (q, was) in zip(
            _masked_pairs(after.params, after.masks['weights']),
            _masked_pairs(before.params, before.masks['weights']),
        ):
            if gated:  # inactive before and after this step: untouched
                np.testing.assert_array_equal(p[~m & ~was], q[~m & ~was])
                assert np.any(p[~m] != 0), 'a gated unit lost its weights'
            else:
                assert np.all(p[~m] == 0), 'a pruned weight is not exactly 0'
        # The EMA is the sparse model too: the same exact zeros (gated units: nothing zeroed).
        for e, m in _masked_pairs(after.ema_params, after.masks['weights']):
            assert np.any(e[~m] != 0) if gated else np.all(e[~m] == 0), 'EMA not masked'
        moved = any(np.any(a != b) for a, b in zip(_leaves(before.masks), _leaves(after.masks)))
        if moved:
            changed_at.append(int(after.step))
    assert set(changed_at) <= {3, 6, 9}, changed_at  # ΔT = 3
    if not structured:  # weights move at every update (S²ViTE units may return where they were)
        assert changed_at == [3, 6, 9]
    if structured:
        heads = [s.masks['heads'].sum(1).tolist() for s in states]
        neurons = [s.masks['neurons'].sum(1).tolist() for s in states]
        assert all(h == [2, 2] for h in heads) and all(n == [32, 32] for n in neurons)
        derived = unit_weight_masks(
            states[-1].params, states[-1].masks['heads'], states[-1].masks['neurons'], 8
        )
        for a, b in zip(_leaves(derived), _leaves(states[-1].masks['weights'])):
            np.testing.assert_array_equal(np.broadcast_to(a, b.shape), b)


def test_jitted_update_equals_the_eager_per_tensor_function():
    spec = _spec(False, 'reference', update_every=1)  # every step is an update step
    inner = optax.adam(1e-2)
    tx = sparse_training(inner, spec)
    params = MODEL.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params']
    state = tx.init(params)
    params = sparsity_state.apply_masks(params, state)
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(7), p.shape), params)
    updates, new_state = jax.jit(tx.update)(grads, state, params)
    inner_updates, _ = inner.update(grads, state.inner_state, params)
    rate = schedules.prune_rate(1, spec.total_steps)
    expected = jax.tree.map(
        lambda p, u, g, m: (
            None
            if m is None
            else prune_grow.magnitude_prune_gradient_grow(jnp.where(m, p + u, 0.0), g, m, rate)
        ),
        params,
        inner_updates,
        grads,
        state.masks['weights'],
        is_leaf=lambda x: x is None,
    )
    for got, want in zip(_leaves(new_state.masks['weights']), _leaves(expected)):
        np.testing.assert_array_equal(got, want)
    new_params = optax.apply_updates(params, updates)
    for (p, old), (_, new), (u, _), (q, _) in zip(
        _masked_pairs(new_params, state.masks['weights']),
        _masked_pairs(new_params, new_state.masks['weights']),
        _masked_pairs(inner_updates, state.masks['weights']),
        _masked_pairs(params, state.masks['weights']),
    ):
        kept, grown = old & new, new & ~old
        np.testing.assert_array_equal(p[~new], 0)  # pruned: exactly 0
        np.testing.assert_array_equal(p[grown], 0)  # grown: start at 0
        np.testing.assert_allclose(p[kept], (q + u)[kept], rtol=1e-5, atol=1e-8)  # jit rounding
    assert int(new_state.last_update['step']) == 1


def test_improved_fidelity_resets_exactly_the_regrown_moments():
    spec = _spec(False, 'improved', update_every=2)
    tx = sparse_training(optax.adam(1e-2), spec)
    params = MODEL.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params']
    state = tx.init(params)
    params = sparsity_state.apply_masks(params, state)
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(3), p.shape), params)
    _, state = tx.update(grads, state, params)  # step 1: moments everywhere nonzero
    mu_before = state.inner_state[0].mu
    _, after = tx.update(grads, state, params)  # step 2: an update step
    regrown = jax.tree.map(
        lambda o, n: None if o is None else n & ~o,
        state.masks['weights'],
        after.masks['weights'],
        is_leaf=lambda x: x is None,
    )
    total = 0
    for (mu0, r), (mu1, _) in zip(
        _masked_pairs(mu_before, regrown), _masked_pairs(after.inner_state[0].mu, regrown)
    ):
        total += int(r.sum())
        np.testing.assert_array_equal(mu1[r], 0)
        assert np.all(mu1[~r] != 0) and np.all(mu0 != 0)
    assert total > 0


def test_reference_fidelity_never_touches_the_moments():
    spec = _spec(False, 'reference', update_every=2)
    inner = optax.adam(1e-2)
    tx = sparse_training(inner, spec)
    params = MODEL.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params']
    state = tx.init(params)
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(3), p.shape), params)
    inner_state = inner.init(params)
    for _ in range(2):
        _, state = tx.update(grads, state, params)
        _, inner_state = inner.update(grads, inner_state, params)
    for a, b in zip(_leaves(state.inner_state), _leaves(inner_state)):
        np.testing.assert_array_equal(a, b)


def test_erk_budget_and_exact_counts_in_improved_mode():
    params = MODEL.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params']
    state = sparse_training(optax.adam(1e-2), _spec(False, 'improved')).init(params)
    masks = _leaves(state.masks['weights'])
    density = sum(int(m.sum()) for m in masks) / sum(m.size for m in masks)
    assert abs(density - 0.4) < 0.002


def test_magnitude_init_keeps_the_units_the_method_prunes_last():
    """S²ViTE from trained weights: heads by the given Taylor scores, neurons by fc1/fc2 L1."""
    from sparse_vit_jax.sparsity.transform import initial_masks

    params = MODEL.init(jax.random.key(3), jnp.zeros((1, 16, 16, 3)))['params']
    spec = _spec(True, 'improved', init='magnitude')
    taylor = jnp.asarray([[0.3, 0.1, 0.4, 0.2], [1.0, 0.0, 0.5, 2.0]])
    got = initial_masks(spec, params, jax.random.key(0), taylor)
    np.testing.assert_array_equal(got['heads'], [[1, 0, 1, 0], [1, 0, 0, 1]])
    for i in range(2):
        mlp = params[f'blocks_{i}']['mlp']
        l1 = np.abs(mlp['fc1']['kernel']).sum(0) + np.abs(mlp['fc2']['kernel']).sum(1)
        kept = np.asarray(got['neurons'][i])
        assert kept.sum() == 32 and l1[kept].min() > l1[~kept].max()
    with pytest.raises(ValueError, match='needs the head Taylor scores'):
        initial_masks(spec, params, jax.random.key(0))
