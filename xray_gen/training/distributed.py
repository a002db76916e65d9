"""Multi-process (multi-host) runs: joining the run, and the few host-side collectives the loop needs.

Every process (one per TPU VM worker, GPU node or GPU) runs the same command. `initialize` joins
them with `jax.distributed.initialize`, from, in this order of precedence:
  * explicit values: `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` or the
    env vars JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID (local multi-process, k8s, ...);
  * a managed cluster that JAX detects itself: SLURM (run under `srun`), Open MPI, Cloud TPU VMs;
  * otherwise nothing: a single-process run, exactly as before.
It must run before anything touches a JAX device. See launch/ for the three launchers.
"""

from __future__ import annotations

import importlib.util
import os

import jax
import numpy as np
from absl import logging

ENV_VARS = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
            "process_id": "JAX_PROCESS_ID"}


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"env var {name}={value!r} is not an integer") from None


def cluster_hint() -> str | None:
    """The managed cluster this process runs in, whose coordinator and ids JAX finds itself (or None)."""
    env = os.environ
    slurm_tasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or "1"
    if "SLURM_JOB_ID" in env and slurm_tasks.isdigit() and int(slurm_tasks) > 1:
        return "slurm"
    if (_env_int("OMPI_COMM_WORLD_SIZE") or 1) > 1:
        return "open mpi"
    if importlib.util.find_spec("libtpu") is not None:  # jax[tpu] is installed: a Cloud TPU VM
        return "cloud tpu"
    return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, timeout_s: int = 300) -> bool:
    """Joins the multi-process run (see the module docstring); returns whether JAX is distributed.

    Arguments left None fall back to the env vars, then to the detected cluster. A timeout turns a
    coordinator that never answers (a wrong address, a process that did not start) into an error.
    """
    if jax.distributed.is_initialized():
        return True
    coordinator_address = coordinator_address or os.environ.get(ENV_VARS["coordinator_address"]) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_VARS["num_processes"])
    process_id = process_id if process_id is not None else _env_int(ENV_VARS["process_id"])
    explicit = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
    hint = cluster_hint()
    if all(v is None for v in explicit.values()) and hint is None:
        return False
    missing = [k for k, v in explicit.items() if v is None]
    if missing and hint is None:
        raise ValueError(
            "multi-process run needs all of --coordinator_address, --num_processes and --process_id "
            f"(or env {', '.join(ENV_VARS.values())}) outside SLURM/TPU clusters; missing: "
            + ", ".join(f"--{k} ({ENV_VARS[k]})" for k in missing)
        )
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"--num_processes={num_processes} must be at least 1")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"--process_id={process_id} must be in [0, --num_processes={num_processes})")
    logging.info("jax.distributed.initialize(%s) [cluster: %s]", explicit, hint or "none, explicit values")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=timeout_s)
    return True


def all_gather_text(text: str) -> list[str]:
    """Every process's `text`, indexed by process (a collective: all processes must call it)."""
    if jax.process_count() == 1:
        return [text]
    from jax.experimental import multihost_utils

    data = np.frombuffer(text.encode("utf-8"), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.array([len(data)], np.int32))).reshape(-1)
    padded = np.zeros(int(lengths.max()) or 1, np.uint8)
    padded[: len(data)] = data
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(lengths), -1)
    return [bytes(row[:n]).decode("utf-8") for row, n in zip(rows, lengths)]


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is True on any (a collective: all processes must call it)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.asarray(multihost_utils.process_allgather(np.array([int(bool(flag))], np.int32))).any())
