"""Device mesh and shardings: data parallel by default, FSDP optional.

The mesh has two axes, ``data`` and ``fsdp``; batches are split over both. A param is sharded
over ``fsdp`` on its largest dimension that the axis divides (big_vision's rule) when it is big
enough to matter, otherwise replicated. The rule is a function of the shape alone, so masks
and Adam moments — same shapes as their params — are sharded exactly like their params.

Under bfloat16 compute the model casts each weight to bfloat16 before use, and XLA's sharding
propagation places that cast on the stored shard, so FSDP all-gathers move bfloat16 (half the
bytes) while the float32 master weights stay sharded (tests/train/test_mixed_precision.py
checks the partitioned program).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXES = ('data', 'fsdp')


def make_mesh(mesh_config: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp) mesh over `devices` (default: all); data=-1 takes whatever fsdp leaves."""
    count = jax.device_count() if devices is None else len(devices)
    fsdp = mesh_config.fsdp
    data = mesh_config.data if mesh_config.data > 0 else count // fsdp
    if data * fsdp != count:
        raise ValueError(
            f'mesh data={mesh_config.data} × fsdp={fsdp} does not match the '
            f'{count} devices; set config.mesh.data=-1 or make the product {count}'
        )
    # Auto axis types: classic GSPMD propagation (jax.make_mesh defaults to explicit types now).
    return Mesh(mesh_utils.create_device_mesh((data, fsdp), devices), DATA_AXES)


def local_batch_size(global_batch: int, name: str = 'global batch') -> int:
    """Examples per process; a global batch (`name` says which) must split evenly over the
    processes and devices."""
    processes, devices = jax.process_count(), jax.device_count()
    if global_batch % devices or global_batch % processes:
        raise ValueError(
            f'{name}={global_batch} does not divide evenly over {devices} devices and '
            f'{processes} processes; choose a multiple of {devices} (e.g. '
            f'{max(devices, global_batch // devices * devices)}).'
        )
    return global_batch // processes


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int = 2**18) -> P:
    """Shards the largest dimension `fsdp` divides, for arrays of at least `min_size` elements."""
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp == 0:
            return P(*[('fsdp' if d == dim else None) for d in range(len(shape))])
    return P()


def state_shardings(abstract_state: Any, mesh: Mesh, min_size: int = 2**18) -> Any:
    """Shardings for every leaf of a (train) state, by the shape rule above."""
    fsdp = mesh.shape['fsdp']
    return jax.tree.map(
        lambda x: NamedSharding(mesh, fsdp_spec(tuple(x.shape), fsdp, min_size)), abstract_state
    )
