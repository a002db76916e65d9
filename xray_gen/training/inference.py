"""Sharded inference over a whole split: pad the last batch, run a jitted function, gather."""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from xray_gen.data.pipeline import pad_batch
from xray_gen.training.sharding import batch_sharding, replicated, to_global


def predict(fn: Callable[[Any, dict], dict], state, loader, mesh, batch_size: int, limit: int | None = None):
    """Runs `fn(state, batch) -> dict of per-example arrays` over `loader`; returns host numpy arrays.

    Outputs are replicated, so every process gets the whole split's predictions (multi-host safe).
    `state` keeps the sharding it has (replicated, or split over the model axis by FSDP).
    """
    def with_validity(state, batch):
        out = fn(state, batch)
        out["_valid"] = batch["_valid"]
        return out

    jitted = jax.jit(with_validity, in_shardings=(None, batch_sharding(mesh)), out_shardings=replicated(mesh))
    local_batch = batch_size // jax.process_count()
    outputs: dict[str, list] = {}
    seen = 0
    for batch in loader:
        batch, n_valid = pad_batch(batch, local_batch)
        batch["_valid"] = np.arange(local_batch) < n_valid  # padding rows are dropped after the gather
        result = jax.device_get(jitted(state, to_global(batch, mesh)))
        valid = np.asarray(result.pop("_valid"))
        for k, v in result.items():
            outputs.setdefault(k, []).append(np.asarray(v)[valid])
        seen += int(valid.sum())
        if limit is not None and seen >= limit:
            break
    if not outputs:
        raise ValueError("the evaluation split is empty")
    return {k: np.concatenate(v)[:limit] for k, v in outputs.items()}
