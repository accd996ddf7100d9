"""The train state: params, optimizer state (which owns the masks), step, optional EMA."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from sparse_vit_jax.sparsity import state as sparsity_state


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32: optimizer steps taken
    params: Any
    opt_state: optax.OptState  # holds the masks when a sparse method runs
    nonfinite_step: jax.Array  # int32: first step whose loss or gradient was not finite, else -1
    ema_params: Any = None

    @property
    def masks(self) -> dict | None:
        """The masks pytree ({'weights', 'heads', 'neurons'}) or None for dense training."""
        return sparsity_state.masks_of(self.opt_state)


def init_params(model: Any, key: jax.Array, image_shape: tuple[int, ...]) -> Any:
    """Fresh params (only the 'params' collection) for images of `image_shape` (H, W, C)."""
    return model.init(key, jnp.zeros((1,) + tuple(image_shape), jnp.float32))['params']


def create_train_state(
    model: Any,
    tx: optax.GradientTransformation,
    key: jax.Array,
    image_shape: tuple[int, ...],
    ema: bool = False,
    fidelity: str = 'reference',
    params: Any = None,
    head_taylor: jax.Array | None = None,
) -> TrainState:
    """Initializes params (unless given, e.g. trained weights) and the optimizer state; the
    optimizer applies the initial masks (`fidelity` decides which, see
    `sparsity.state.zeroed_masks`; `head_taylor`: S²ViTE head scores for magnitude init)."""
    if params is None:
        params = init_params(model, key, image_shape)
    opt_state = tx.init(params) if head_taylor is None else tx.init(params, head_taylor=head_taylor)
    params = sparsity_state.apply_masks(params, opt_state, fidelity)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=opt_state,
        nonfinite_step=jnp.full((), -1, jnp.int32),
        ema_params=jax.tree.map(jnp.copy, params) if ema else None,  # own buffers (donation)
    )
