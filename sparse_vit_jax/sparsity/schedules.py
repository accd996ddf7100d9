"""Step-indexed schedules of sparse training: prune rate, update steps, ΔT rescaling, Gumbel tau.

Step convention: `step` is the 1-based optimizer step t, i.e. the number of optimizer updates
already applied (the reference's `Masking.steps` right after `mask.step()`), unless a function
says otherwise. `total_steps` (T) is a static Python int: iterations per epoch times epochs.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

ArrayLike = jnp.ndarray | int | float


def _check_total(total_steps: int) -> None:
    if int(total_steps) <= 0:
        raise ValueError(f'total_steps must be a positive integer, got {total_steps!r}')


def prune_rate(
    step: ArrayLike, total_steps: int, initial: float = 0.5, final: float = 0.005
) -> jnp.ndarray:
    """Cosine-decayed prune (death) rate after `step` optimizer steps. Jittable.

    dr_t = final + (initial - final) * (1 + cos(pi * t / T)) / 2.

    The reference (`CosineDecay`, a torch `CosineAnnealingLR` stepped once per iteration,
    eta_min = 0.005) computes the same curve recursively; the closed form differs from it only by
    rounding. Returned in float32 unless x64 is enabled.
    """
    _check_total(total_steps)
    t = jnp.asarray(step, dtype=jnp.float32)
    cosine = (1.0 + jnp.cos(jnp.pi * t / float(total_steps))) / 2.0
    return final + (initial - final) * cosine


def last_update_step_bound(total_steps: int, t_end: float = 0.8) -> int:
    """Largest integer t with t < t_end * T, computed in Python float64 as the reference does."""
    _check_total(total_steps)
    return math.ceil(float(t_end) * int(total_steps)) - 1


def is_update_step(
    step: ArrayLike, update_every: int, total_steps: int, t_end: float = 0.8
) -> jnp.ndarray:
    """Whether the topology is updated after optimizer step `step`. Jittable; returns a bool array.

    Reference (`engine.train_one_epoch`): update iff t % ΔT == 0 and t < t_end * T, strict, with
    t the 1-based step. The bound is resolved to an integer on the host (float64, as in Python) so
    that a traced int32 step compares exactly. t = 0 (no step taken yet) never updates; the
    reference never asks, since t >= 1 there.
    """
    if int(update_every) <= 0:
        raise ValueError(f'update_every must be a positive integer, got {update_every!r}')
    bound = last_update_step_bound(total_steps, t_end)
    t = jnp.asarray(step)
    return (t >= 1) & (t % int(update_every) == 0) & (t <= bound)


def num_update_steps(update_every: int, total_steps: int, t_end: float = 0.8) -> int:
    """How many topology updates a full run performs (host-side count of `is_update_step`)."""
    if int(update_every) <= 0:
        raise ValueError(f'update_every must be a positive integer, got {update_every!r}')
    bound = last_update_step_bound(total_steps, t_end)
    return max(0, bound // int(update_every))


def scale_update_every(
    update_every_at_reference: int, reference_batch: int, global_batch: int
) -> int:
    """Rescale ΔT so that the number of training examples between updates is unchanged.

    ΔT is stated in optimizer steps at the paper's global batch (512 for Tiny/Small, 1024 for
    Base). With a different global batch B the same number of examples passes in
    round(ΔT * B_ref / B) steps; the result is at least 1.
    """
    for name, value in (
        ('update_every_at_reference', update_every_at_reference),
        ('reference_batch', reference_batch),
        ('global_batch', global_batch),
    ):
        if int(value) <= 0 or int(value) != value:
            raise ValueError(f'{name} must be a positive integer, got {value!r}')
    scaled = int(update_every_at_reference) * int(reference_batch) / int(global_batch)
    return max(1, int(math.floor(scaled + 0.5)))


def gumbel_temperature(step: ArrayLike, total_steps: int, start: float, end: float) -> jnp.ndarray:
    """Linear Gumbel-softmax temperature for the token selector. Jittable.

    tau = start + (end - start) * step / T (the reference's `get_tau`, not clipped). Here `step`
    is the number of optimizer steps completed BEFORE the forward pass (0 on the first batch):
    the reference reads `mask.steps` before this iteration's `mask.step()`. Official HEAD uses
    start = 10, end = 0.1; the code the paper ran (before commit b0c62fd) used 0.1 -> 10.
    """
    _check_total(total_steps)
    fraction = jnp.asarray(step, dtype=jnp.float32) / float(total_steps)
    # Same line as start + (end - start) * fraction, written so both ends are exact in float32.
    return start * (1.0 - fraction) + end * fraction
