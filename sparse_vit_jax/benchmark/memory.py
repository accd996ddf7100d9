"""Memory per device of a config's train step, from XLA's analysis of the compiled program.

Nothing runs and nothing is allocated: the step is compiled for the config's mesh from shapes
alone (`jax_bench.TrainProgram`), so a DeiT-B step at 256 images per device on an 8-device
FSDP mesh can be sized on a laptop with `--xla_force_host_platform_device_count=8`.

XLA reports, for the program ONE device runs: its arguments (the sharded train state and the
batch), outputs, the bytes where outputs reuse donated arguments (the state is donated, so the
new state overwrites the old), and temporaries (activations kept for the backward pass,
gradients, workspace). The peak is bounded by arguments + outputs − aliased + temporaries.
The analysis is of the backend that compiled it: a CPU compile is an estimate of what a TPU or
GPU compile of the same program needs (different fusions and layouts; docs/benchmarks.md).
With `topology` the TPU compiler itself compiles for a TPU slice that is not attached.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from sparse_vit_jax.benchmark import jax_bench, timing
from sparse_vit_jax.errors import UserError
from sparse_vit_jax.sparsity import state as sparsity_state

GIB = 2**30


def _shard_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape)
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


def state_bytes_per_device(program: jax_bench.TrainProgram) -> dict[str, int]:
    """What the train state puts on one device, by part: params, Adam moments and the rest of
    the optimizer state, masks (with the sparse bookkeeping), EMA."""
    state = program.abstract_state
    sparse = sparsity_state.sparse_state(state.opt_state)
    masks = 0 if sparse is None else _shard_bytes(sparse) - _shard_bytes(sparse.inner_state)
    return {
        'params': _shard_bytes(state.params),
        'optimizer': _shard_bytes(state.opt_state) - masks,
        'masks_and_sparse_state': masks,
        'ema_params': _shard_bytes(state.ema_params),
    }


class TopologyUnavailableError(UserError):
    """A TPU topology was asked for and cannot be described on this host."""


def topology_devices(name: str) -> list[Any]:
    """The devices of TPU topology `name` (e.g. 'v5e:2x4', 'v4:2x2x2'), for compiling without
    the hardware: XLA's TPU compiler comes with libtpu, which `pip install libtpu` (the version
    jax[tpu] pins) provides on any Linux host. v4 and v5p count one device per chip
    (megacore), as JAX on those TPUs does."""
    from jax.experimental import topologies

    options = {'chip_config_name': 'megacore'} if name.startswith(('v4', 'v5p')) else {}
    try:
        return list(topologies.get_topology_desc(name, 'tpu', **options).devices)
    except Exception as error:  # noqa: BLE001  (no libtpu, or a name it does not know)
        raise TopologyUnavailableError(
            f'cannot describe TPU topology {name!r} ({str(error).splitlines()[0][:200]}); '
            'it needs libtpu (pip install the libtpu version jax[tpu] pins) and a name like '
            'v5e:2x4 or v4:2x2x2'
        ) from None


def train_memory(
    config: ml_collections.ConfigDict,
    *,
    batch: int,
    dtype: str | None = None,
    topology: str | None = None,
):
    """XLA's memory analysis of the config's train step at global `batch` on its mesh, per
    device, in bytes and GiB. The mesh spans every visible device, or, with `topology`, the
    chips of that TPU topology, compiled by the TPU compiler without any TPU attached."""
    config = jax_bench.with_batch(config, batch, dtype)
    devices = None if topology is None else topology_devices(topology)
    program = jax_bench.TrainProgram(config, devices=devices)
    stats = program.compiled.memory_analysis()
    if stats is None:
        raise RuntimeError(f'the {jax.default_backend()} backend gives no memory analysis')
    keys = ('argument', 'output', 'alias', 'temp', 'generated_code')
    sizes = {k: int(getattr(stats, f'{k}_size_in_bytes')) for k in keys}
    peak = sizes['argument'] + sizes['output'] - sizes['alias'] + sizes['temp']
    mesh = program.mesh
    result = {
        'mode': 'memory',
        'config_method': config.sparsity.method,
        'model': config.model.name,
        'dtype': config.model.dtype,
        'remat': config.model.remat,
        'batch': batch,
        'per_device_batch': batch // mesh.size,
        'mesh': dict(mesh.shape),
        'backend': topology and f'tpu {topology}' or jax.default_backend(),
        'device_kind': program.mesh.devices.flat[0].device_kind,
        'bytes_per_device': {**sizes, 'peak_estimate': peak},
        'peak_gib_per_device': peak / GIB,
        'state_bytes_per_device': state_bytes_per_device(program),
        'compile_seconds': program.compile_seconds,
    }
    result.update(timing.environment())
    return result
