"""The one place that owns checkpoints (orbax CheckpointManager).

A checkpoint holds the state pytree (params, optimiser states, EMA, step, RNG) plus a JSON `meta`
record with everything else an exact resume needs: the data-iterator position, the training phase
(stage / resolution / fade-in), host-side schedules (e.g. plateau trackers) and the config.
Every process calls `save` and `restore` (orbax coordinates them; the directory must be shared).
Arrays are written once as global arrays; `meta` is written by process 0, so per-process values
(each process's data position) are gathered into it first: see `data_meta`.
Orbax writes to a temporary directory and renames on completion, so a run killed mid-save resumes
from the previous complete checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from xray_gen.training.distributed import all_gather_text


class CheckpointMismatchError(ValueError):
    """A checkpoint whose arrays do not fit the state this config builds (other network sizes,
    other pretrained weights): resuming it would mean training a different model."""


class Checkpointer:
    def __init__(self, directory: str, max_to_keep: int = 3):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        self._manager.save(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restores (state, meta); `abstract_state` carries shapes, dtypes and shardings."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
                ),
            )
        except ValueError as e:  # orbax: "Structure mismatch ..." / "Requested shape ... stored shape ..."
            raise CheckpointMismatchError(
                f"the checkpoint in {self.directory} (step {step}) does not fit the model this config builds: {e}. "
                "It was written with other network sizes or other pretrained weights: use the config it was "
                "trained with, or another --workdir") from e
        return restored["state"], dict(restored["meta"])

    def restore_meta(self, step: int | None = None) -> dict:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        return dict(self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_with_sharding(abstract_state: Any, sharding) -> Any:
    """ShapeDtypeStructs of `abstract_state` placed with `sharding` (one sharding or a matching tree)."""
    if not isinstance(sharding, jax.sharding.Sharding):
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, sharding)
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract_state)


def data_meta(position: str) -> dict:
    """The data-position entries of a checkpoint's `meta`; a collective, so every process calls it.

    `data` is process 0's grain iterator state (all a single-process run has). Each process of a
    multi-process run reads its own rows of every global batch and has its own state, so
    `data_by_process` then keeps them all, by process index, and each process resumes from its own.
    """
    positions = all_gather_text(position)
    meta = {"data": positions[0]}
    if len(positions) > 1:
        meta["data_by_process"] = positions
    return meta


def local_data_position(meta: dict) -> str | None:
    """This process's data position in a checkpoint's `meta`; the process count must be the saved one."""
    saved = meta.get("data_by_process") or ([meta["data"]] if meta.get("data") else None)
    if saved is None:
        return None
    if len(saved) != jax.process_count():
        raise ValueError(
            f"the checkpoint holds data positions of {len(saved)} process(es) but this run has "
            f"{jax.process_count()}: resume with --num_processes={len(saved)}"
        )
    return saved[jax.process_index()]
