"""Device mesh and shardings: data parallel over a `data` axis, built with jit + Mesh (never pmap).

Batches are assembled from process-local data into global arrays, so the same code runs on one CPU,
eight fake CPU devices, a GPU node or a multi-host TPU pod.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(data_parallelism: int = -1) -> Mesh:
    """A 1-D data-parallel mesh over `data_parallelism` devices (-1: all devices).

    With several processes the mesh spans every device and each process's devices are kept
    together, in process order, so process `p` holds rows `[p*b, (p+1)*b)` of a global batch:
    exactly the rows its loader reads (data/samplers.py), as in a single-process run.
    """
    devices = jax.devices()
    n = len(devices) if data_parallelism in (-1, 0, None) else int(data_parallelism)
    if n > len(devices) or n < 1:
        raise ValueError(f"mesh.data={data_parallelism} but only {len(devices)} devices are visible")
    if jax.process_count() > 1 and n != len(devices):
        raise ValueError(f"mesh.data={data_parallelism}: a {jax.process_count()}-process run needs all "
                         f"{len(devices)} devices in the mesh (set mesh.data=-1)")
    # Auto axes: XLA propagates shardings (GSPMD), so model code needs no sharding annotations.
    mesh = jax.make_mesh((n,), (DATA_AXIS,), devices=devices[:n], axis_types=(jax.sharding.AxisType.Auto,))
    if jax.process_count() == 1:
        return mesh
    by_process = sorted(mesh.devices.flat, key=lambda d: d.process_index)  # stable: keeps make_mesh's order within a host
    return Mesh(np.asarray(by_process), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh, name: str = "train.batch_size") -> int:
    """Validates the global batch against devices and processes; returns the per-process batch."""
    n_dev = mesh.shape[DATA_AXIS]
    n_proc = jax.process_count()
    if global_batch_size % n_dev or global_batch_size % n_proc:
        raise ValueError(
            f"{name}={global_batch_size} must be divisible by the {n_dev} data-parallel devices "
            f"and the {n_proc} processes"
        )
    return global_batch_size // n_proc


def to_global(local_batch, mesh: Mesh):
    """Process-local numpy batch (leading batch axis) -> globally sharded jax arrays.

    Process `p` passes its `b` rows; the global batch is every process's rows in process order
    (make_mesh keeps each process's devices together), i.e. rows `[p*b, (p+1)*b)` are process p's.
    """
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )
