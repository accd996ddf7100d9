"""The JAX programs the benchmarks time: a config's real train step and a model's forward.

Both are built the way training and evaluation build them (the Trainer's `make_train_step`,
`make_optimizer`, the config's mesh and shardings), compiled once with `lower().compile()`, and
fed one random batch of the model's image size over and over.
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sparse_vit_jax import config as config_lib
from sparse_vit_jax import flops
from sparse_vit_jax.benchmark.timing import Runner
from sparse_vit_jax.data.device_input import DeviceInput
from sparse_vit_jax.models import create_model_from_config, input_shape
from sparse_vit_jax.sparsity import state as sparsity_state
from sparse_vit_jax.sparsity import schedules
from sparse_vit_jax.train import steps as steps_lib
from sparse_vit_jax.train import optimizer as optimizer_lib
from sparse_vit_jax.train import sharding as sharding_lib
from sparse_vit_jax.train.state import TrainState, create_train_state, init_params

# Only the learning-rate and prune-rate schedules read these; no value changes a step's cost.
STEPS_PER_EPOCH = 1000


def model_bench_config(name: str, batch: int, dtype: str = 'float32') -> ml_collections.ConfigDict:
    """A dense run of registered model `name` with the DeiT recipe (AdamW, label smoothing,
    Mixup/CutMix, the model's drop path) at global batch `batch`."""
    c = config_lib.base_config()
    c.model = config_lib.model_config(name)
    c.model.dtype = dtype
    c.batch_size = batch
    config_lib.validate(c)
    return c


def with_batch(config: ml_collections.ConfigDict, batch: int, dtype: str | None = None):
    """A copy of `config` at global batch `batch` (ΔT and the lr rescale with it, as in a run)."""
    c = config.copy_and_resolve_references()
    c.batch_size = batch
    if dtype is not None:
        c.model.dtype = dtype
    config_lib.validate(c)
    return c


def dense_counterpart(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The same run without any sparsity: dense method, no token selector."""
    c = config.copy_and_resolve_references()
    c.sparsity.method = 'dense'
    c.tokens.keep = 0
    return c


def _mesh(config: ml_collections.ConfigDict, batch: int, devices=None) -> jax.sharding.Mesh:
    mesh = sharding_lib.make_mesh(config.mesh, devices)
    if batch % mesh.size:
        raise ValueError(f'batch {batch} does not split over the {mesh.size} devices of the mesh')
    return mesh


def random_batch(config: ml_collections.ConfigDict, batch: int, sharding: Any) -> dict:
    """Uniform uint8 images of the model's size (as the input pipeline hands them to the train
    step) and uniform labels, placed like training's batches (left where they are when
    `sharding` is None)."""
    image_key, label_key = jax.random.split(jax.random.key(1))
    shape = (batch,) + input_shape(config)
    images = jax.random.randint(image_key, shape, 0, 256, jnp.int32).astype(jnp.uint8)
    labels = jax.random.randint(label_key, (batch,), 0, config.model.num_classes, jnp.int32)
    batch = {'image': images, 'label': labels}
    return batch if sharding is None else jax.device_put(batch, sharding)


def update_every(config: ml_collections.ConfigDict) -> int:
    """ΔT in optimizer steps at the config's global batch."""
    s = config.sparsity
    return schedules.scale_update_every(s.update_every, s.update_every_batch, config.batch_size)


def bench_total_steps(config: ml_collections.ConfigDict) -> int:
    """A run length T whose topology updates reach past ΔT (t_end·T > ΔT), so that step ΔT is
    an update step."""
    return math.ceil(10 * max(update_every(config), 1) / config.sparsity.t_end)


def with_count(state: TrainState, count: jax.Array) -> TrainState:
    """The state as if `count` optimizer steps had been taken (step and the sparse count)."""
    sparse = sparsity_state.sparse_state(state.opt_state)
    if sparse is not None:
        state = state.replace(opt_state=sparse._replace(count=count))
    return state.replace(step=count)


class TrainProgram:
    """A config's train step lowered and compiled for its mesh from shapes alone: no state or
    batch is allocated, so any model, batch and mesh compiles on any host (XLA's memory
    analysis of a 256-per-device DeiT-B step needs no accelerator).

    The jitted function takes (state, batch, count): `count` is the optimizer step the state
    pretends to be at (see `TrainBench`). `devices` (default: all) may be devices of a
    topology that is not attached (`memory.topology_devices`): then it only compiles.
    """

    def __init__(self, config: ml_collections.ConfigDict, seed: int = 0, devices=None):
        self.config = config
        batch = config.batch_size
        mesh = _mesh(config, batch, devices)
        self.mesh = mesh
        self.partitions = mesh.size
        model = create_model_from_config(config.model, config.tokens)
        shape = input_shape(config)
        key = jax.random.key(seed)
        total = bench_total_steps(config)
        params_shape = jax.eval_shape(lambda: init_params(model, key, shape))
        tx, _, self.spec = optimizer_lib.make_optimizer(
            config, model, params_shape, total_steps=total, steps_per_epoch=STEPS_PER_EPOCH
        )

        def init():
            return create_train_state(
                model, tx, key, shape, ema=config.ema_decay > 0, fidelity=config.sparsity.fidelity
            )

        self.init = init
        abstract_state = jax.eval_shape(init)
        self.state_sharding = sharding_lib.state_shardings(
            abstract_state, mesh, config.mesh.fsdp_min_size
        )
        step = steps_lib.make_train_step(config, model, tx, self.spec, total)
        self.batch_sharding = sharding_lib.batch_sharding(mesh)
        replicated = sharding_lib.replicated(mesh)
        self.abstract_state = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract_state,
            self.state_sharding,
        )
        abstract_batch = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=self.batch_sharding),
            jax.eval_shape(lambda: random_batch(config, batch, None)),
        )
        count = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)
        jitted = jax.jit(
            lambda state, batch, count: step(with_count(state, count), batch),
            in_shardings=(self.state_sharding, self.batch_sharding, replicated),
            out_shardings=(self.state_sharding, replicated),
            donate_argnums=0,
        )
        start = time.perf_counter()
        self.lowered = jitted.lower(self.abstract_state, abstract_batch, count)
        self.compiled = self.lowered.compile()
        self.compile_seconds = time.perf_counter() - start
        self.flops = flops.compiled_flops(self.compiled, self.partitions)


class TrainBench(TrainProgram):
    """A config's train step compiled once, with its own state and one random batch.

    `runner(name, count)` times steps taken from optimizer step `count`: the sparse
    transformation updates the topology after step t = count + 1 iff that is an update step,
    so count=0 times regular steps and count=ΔT−1 times update steps, with the same executable
    and the same state (the count is an argument, so XLA cannot fold the update away).
    """

    def __init__(self, config: ml_collections.ConfigDict, seed: int = 0):
        super().__init__(config, seed)
        self.state = jax.jit(self.init, out_shardings=self.state_sharding)()
        self.batch = random_batch(config, config.batch_size, self.batch_sharding)
        self.metrics = None

    @property
    def update_every(self) -> int | None:
        """ΔT at this batch, or None for dense training."""
        return None if self.spec is None else self.spec.update_every

    def count(self, value: int) -> jax.Array:
        return jax.device_put(jnp.asarray(value, jnp.int32), sharding_lib.replicated(self.mesh))

    def step(self, count: jax.Array) -> None:
        self.state, self.metrics = self.compiled(self.state, self.batch, count)
        jax.block_until_ready((self.state, self.metrics))

    def runner(self, name: str, count: int = 0, *, per_block: int = 1, warmup: int = 1) -> Runner:
        value = self.count(count)
        return Runner(name, lambda: self.step(value), self.config.batch_size, per_block, warmup)

    def last_update_step(self) -> int | None:
        """The step of the latest topology update in the state (0: none yet), None if dense."""
        sparse = sparsity_state.sparse_state(self.state.opt_state)
        return None if sparse is None else int(sparse.last_update['step'])

    def gflops_per_image(self) -> float | None:
        return None if self.flops is None else self.flops / self.config.batch_size / 1e9


class InferBench:
    """A model's jitted evaluation forward on one random batch, compiled once."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        model: Any,
        params: Any,
        batch: int,
    ):
        self.batch_size = batch
        mesh = _mesh(config, batch)
        self.partitions = mesh.size
        replicated = sharding_lib.replicated(mesh)
        self.params = jax.device_put(params, replicated)
        images = random_batch(config, batch, sharding_lib.batch_sharding(mesh))['image']
        # The forward alone is timed: the images are normalized once, here.
        self.images = jax.jit(DeviceInput.from_config(config).normalize)(images)
        self.rng = jax.random.key(2)  # the reference token selector draws Gumbel noise at eval

        def forward(params, images, rng):
            return model.apply({'params': params}, images, train=False, rngs={'gumbel': rng})

        start = time.perf_counter()
        self.compiled = jax.jit(forward).lower(self.params, self.images, self.rng).compile()
        self.compile_seconds = time.perf_counter() - start
        self.flops = flops.compiled_flops(self.compiled, self.partitions)

    def call(self) -> None:
        jax.block_until_ready(self.compiled(self.params, self.images, self.rng))

    def runner(self, name: str, *, per_block: int = 1, warmup: int = 1) -> Runner:
        return Runner(name, self.call, self.batch_size, per_block, warmup)

    def gflops_per_image(self) -> float | None:
        return None if self.flops is None else self.flops / self.batch_size / 1e9


def random_params(config: ml_collections.ConfigDict, model: Any, seed: int = 0) -> Any:
    return jax.jit(lambda key: init_params(model, key, input_shape(config)))(jax.random.key(seed))


class MatmulBench:
    """One large square matmul: the machine's practical dense-compute ceiling at `dtype`, for
    the achieved fraction of it that the model steps reach (timed in the same alternation)."""

    def __init__(self, size: int = 2048, dtype: str = 'float32'):
        a, b = jax.random.normal(jax.random.key(3), (2, size, size), jnp.dtype(dtype))
        self.operands = (a, b)
        self.compiled = jax.jit(jnp.matmul).lower(a, b).compile()
        self.flops = 2.0 * size**3

    def call(self) -> None:
        jax.block_until_ready(self.compiled(*self.operands))

    def runner(self, name: str, *, per_block: int = 1, warmup: int = 1) -> Runner:
        return Runner(name, self.call, 1, per_block, warmup)

    def gflops_per_sec(self, seconds: list[float]) -> float:
        return self.flops / float(np.median(seconds)) / 1e9
