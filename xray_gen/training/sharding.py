"""Device mesh and shardings, built with jit + Mesh (never pmap).

The mesh has two axes. `data` replicates the model; `model` (FSDP-style, `mesh.model` > 1) splits
every large parameter and its optimiser moments across its devices, so a network too big for one
device's memory (the paper-size diffusion U-Net, PGGAN at 1024 px) still trains. The batch is split
over both axes (every device is data-parallel); with Auto axes XLA (GSPMD) gathers each sharded
weight where a layer needs it, so model code carries no sharding annotations.

Batches are assembled from process-local data into global arrays, so the same code runs on one CPU,
eight fake CPU devices, a GPU node or a multi-host TPU pod.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
MODEL_AXIS = "model"
BATCH_AXES = (DATA_AXIS, MODEL_AXIS)


def make_mesh(data_parallelism: int = -1, model_parallelism: int = 1) -> Mesh:
    """A (data, model) mesh: `data_parallelism` replicas (-1: every device left) of `model_parallelism`
    devices that share one copy of the parameters.

    With several processes the mesh spans every device and each process's devices are kept
    together, in process order, so process `p` holds rows `[p*b, (p+1)*b)` of a global batch:
    exactly the rows its loader reads (data/samplers.py), as in a single-process run.
    """
    devices = jax.devices()
    m = int(model_parallelism or 1)
    if m < 1 or len(devices) % m:
        raise ValueError(f"mesh.model={model_parallelism} must divide the {len(devices)} visible devices")
    n = len(devices) // m if data_parallelism in (-1, 0, None) else int(data_parallelism)
    if n * m > len(devices) or n < 1:
        raise ValueError(f"mesh.data={data_parallelism} x mesh.model={m} but only {len(devices)} devices are visible")
    if jax.process_count() > 1 and n * m != len(devices):
        raise ValueError(f"mesh.data={data_parallelism}: a {jax.process_count()}-process run needs all "
                         f"{len(devices)} devices in the mesh (set mesh.data=-1)")
    auto = (jax.sharding.AxisType.Auto,) * 2
    mesh = jax.make_mesh((n, m), BATCH_AXES, devices=devices[:n * m], axis_types=auto)
    if jax.process_count() == 1:
        return mesh
    by_process = sorted(mesh.devices.flat, key=lambda d: d.process_index)  # stable: keeps make_mesh's order within a host
    return Mesh(np.asarray(by_process).reshape(n, m), BATCH_AXES, axis_types=auto)


def mesh_for(config) -> Mesh:
    """The mesh a run's `config.mesh` asks for."""
    return make_mesh(config.mesh.data, config.mesh.get("model", 1))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def parse_shard_rules(text: str) -> list[tuple[str, int | None]]:
    """`mesh.shard_rules`: a JSON list of [regex, dim] pairs, first match wins; dim null = replicate.

    Example: '[["embed", 0], ["norm|bias", null]]' splits embedding tables along the vocabulary and
    keeps normalisation parameters whole. Unmatched arrays follow the default rule (state_shardings).
    """
    if not text:
        return []
    try:
        rules = json.loads(text)
        parsed = [(str(pattern), None if dim is None else int(dim)) for pattern, dim in rules]
        for pattern, _ in parsed:
            re.compile(pattern)
    except (ValueError, TypeError, re.error) as e:
        raise ValueError(f"mesh.shard_rules={text!r} is not a JSON list of [regex, dim or null] pairs: {e}") from None
    return parsed


def _path_name(path) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
    return "/".join(parts)


def state_shardings(mesh: Mesh, abstract_state: Any, rules: Sequence[tuple[str, int | None]] = (),
                    min_size: int = 2 ** 14) -> Any:
    """Shardings for every array of a training state: replicated on a mesh without a model axis;
    otherwise each array of at least `min_size` elements is split over `model` along its largest
    dimension that the axis divides (optimiser moments follow their parameters, which have the same
    shapes), unless a rule matching its path ('params/unet/conv_in/kernel') says otherwise.
    """
    m = mesh.shape[MODEL_AXIS]

    def spec(path, leaf) -> P:
        shape = tuple(getattr(leaf, "shape", ()))
        if m == 1 or not shape:
            return P()
        name = _path_name(path)
        for pattern, dim in rules:
            if re.search(pattern, name):
                if dim is None:
                    return P()
                if not -len(shape) <= dim < len(shape) or shape[dim] % m:
                    raise ValueError(f"mesh.shard_rules: {pattern!r} puts {name} {shape} on dim {dim}, "
                                     f"which mesh.model={m} does not divide")
                return P(*[MODEL_AXIS if d == dim % len(shape) else None for d in range(len(shape))])
        if int(np.prod(shape)) < min_size:
            return P()
        for d in sorted(range(len(shape)), key=lambda d: -shape[d]):
            if shape[d] % m == 0:
                return P(*[MODEL_AXIS if i == d else None for i in range(len(shape))])
        return P()

    return jax.tree_util.tree_map_with_path(lambda p, leaf: NamedSharding(mesh, spec(p, leaf)), abstract_state)


def state_shardings_for(config, mesh: Mesh, abstract_state: Any) -> Any:
    """state_shardings with the run's `mesh.shard_rules` and `mesh.shard_min_size`."""
    return state_shardings(mesh, abstract_state, parse_shard_rules(config.mesh.get("shard_rules", "")),
                           config.mesh.get("shard_min_size", 2 ** 14))


def check_batch_size(global_batch_size: int, mesh: Mesh, name: str = "train.batch_size") -> int:
    """Validates the global batch against devices and processes; returns the per-process batch."""
    n_dev = mesh.size
    n_proc = jax.process_count()
    if global_batch_size % n_dev or global_batch_size % n_proc:
        raise ValueError(
            f"{name}={global_batch_size} must be divisible by the {n_dev} devices of the mesh "
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
