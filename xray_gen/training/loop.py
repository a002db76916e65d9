"""The generic training loop every model uses.

A model supplies a `Task` (pure `init` and `train_step`, a grain loader, the frozen networks its
step reads, optional evaluation); the loop owns everything else: mesh and shardings, jit with donation, device prefetch off the
critical path, resume from the latest orbax checkpoint (state + data position + host schedules),
clu logging with progress, a non-finite guard that names the step and term and refuses to
checkpoint a bad state, and SIGTERM -> checkpoint -> clean exit.

Multi-process runs (training/distributed.py) run this same loop in every process: each feeds its
rows of the global batch, only process 0 writes logs, all save and restore together (each with its
own data position), and a SIGTERM seen by any process stops all of them at the next log step.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import os
import queue
import signal
import threading
from typing import Any

import jax
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from xray_gen.training import distributed, records
from xray_gen.training.checkpoint import Checkpointer, abstract_with_sharding, data_meta, local_data_position
from xray_gen.training.sharding import batch_sharding, mesh_for, replicated, state_shardings_for, to_global


class NonFiniteLossError(FloatingPointError):
    """Raised when a training metric becomes NaN/inf; the message names the step and the term."""


@dataclasses.dataclass(frozen=True)
class Prerequisite:
    """A run a task depends on (e.g. XRayGAN's frozen VCN): the runner (xray_gen.runner) trains it
    as a run of its own in `directory` before the task, from `config` alone (`config.model` names
    its task), and records its config and weights' checksum in the dependent run."""

    name: str
    config: Any
    directory: str


class Task(abc.ABC):
    """What a model gives the loop. Subclasses override the methods they need.

    `init(rng) -> state` and `train_step(state, frozen, batch) -> (state, metrics)` must be pure
    and jittable; `state.step` must exist (the step's RNG is `fold_in(state.rng, state.step)`).
    `frozen` holds the variables of networks the step reads but does not train (XRayGAN's VCN,
    CXR-IRGen's autoencoder and CLIP): they reach the jitted step as an argument, never as a
    closure, so they are not constants of the compiled program and a new checkpoint of them does
    not recompile it.
    """

    name = "task"
    accumulates_gradients = False  # whether train_step averages train.grad_accum_steps microbatches

    def __init__(self, config, workdir: str | None = None):
        self.config = config
        self.workdir = workdir

    @abc.abstractmethod
    def init(self, rng):
        """Pure: the initial state pytree."""

    @abc.abstractmethod
    def train_step(self, state, frozen, batch):
        """Pure: (state, frozen variables, global batch) -> (state, scalar metrics)."""

    @abc.abstractmethod
    def train_loader(self):
        """A grain DataLoader over this process's share of the training data (infinite)."""

    def num_steps(self) -> int:
        """Steps of the whole run: `train.num_steps`, or a schedule's sum where the model derives it."""
        return int(self.config.train.num_steps)

    def prepare(self) -> None:
        """Host-side work before a fresh start only (e.g. statistics of the training labels)."""

    def prerequisites(self) -> list[Prerequisite]:
        """The runs this task reads (frozen networks, evaluation classifiers), trained before it."""
        return []

    def prerequisite_mismatch(self, prerequisite: Prerequisite, error: Exception) -> Exception:
        """The error to raise when a prerequisite's checkpoint does not fit the config it gets now."""
        return error

    # ---- frozen networks (read by the step, never trained by it) -------------------------------
    def frozen(self, phase: int = 0):
        """Host-side: the frozen variables the step of `phase` reads, loaded from their runs."""
        return {}

    def random_frozen(self, phase: int, rng):
        """Randomly initialised variables of the same structure as `frozen(phase)`: for benchmarks
        and lowering, whose cost does not depend on what the frozen networks learnt."""
        return {}

    def warm_start(self, state):
        """A fresh start's state after `init`: e.g. pretrained weights read from disk here, on the
        host, rather than baked into the jitted init as constants. Not called on resume."""
        return state

    # ---- training phases (e.g. XRayGAN's resolution stages); one phase unless overridden -------
    def phase(self, step: int) -> int:
        """The phase that step `step + 1` trains in; a pure function of the step (so resumable)."""
        return 0

    def phase_step(self, phase: int):
        """The pure step `(state, frozen, batch)` of `phase` (shapes may differ between phases: one jit each)."""
        return self.train_step

    def phase_loader(self, phase: int):
        """The loader of `phase` (batch size / resolution may differ); starts at its beginning."""
        return self.train_loader()

    def enter_phase(self, state, phase: int):
        """Host-side transition into `phase` (called when a run enters it, not on resume inside it)."""
        return state

    def evaluate(self, state, step: int) -> tuple[Any, dict[str, float]]:
        """Periodic evaluation; may return an updated state (e.g. a plateau-reduced learning rate)."""
        return state, {}

    def host_state(self) -> dict:
        """JSON-able host-side state (schedules, trackers) saved with each checkpoint."""
        return {}

    def load_host_state(self, host_state: dict) -> None:
        pass

    def write_summaries(self, writer, state, step: int) -> None:
        """Optional images/histograms at evaluation time."""


class _Preemption:
    """Turns SIGTERM into a flag the loop polls, so it can checkpoint and exit cleanly."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: will checkpoint and stop after this step")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class _DevicePrefetcher:
    """Pulls batches from a grain iterator in a thread and places them on the mesh ahead of use.

    Each batch travels with the iterator state *after* it, so a checkpoint records exactly the
    position of the last batch the step consumed, however far the prefetcher has run ahead.
    """

    _DONE = object()

    def __init__(self, iterator, mesh, size: int = 2):
        self._it, self._mesh = iterator, mesh
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, size))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            while not self._stop.is_set():
                batch = next(self._it)
                position = self._it.get_state().decode("utf-8")
                item = (to_global(batch, self._mesh), position)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # surfaced in the consumer thread
            self._queue.put((self._DONE, e))

    def __next__(self):
        batch, position = self._queue.get()
        if batch is self._DONE:
            if isinstance(position, StopIteration):
                raise RuntimeError("the training data ran out (set num_epochs=None for training loaders)")
            raise position
        return batch, position

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)


def _check_and_average(pending: list[tuple[int, dict]]) -> dict[str, float]:
    """Fetches buffered metrics in one transfer, raises on the first non-finite one, averages each
    metric over the steps that reported it (a window may span two phases with different metrics)."""
    steps = [s for s, _ in pending]
    host = jax.device_get([m for _, m in pending])
    for step, metrics in zip(steps, host):
        for name, value in metrics.items():
            if not np.all(np.isfinite(value)):
                raise NonFiniteLossError(
                    f"non-finite training metric {name!r} = {value} at step {step}; "
                    "no checkpoint was written after it (the last good checkpoint is kept)"
                )
    names = dict.fromkeys(k for m in host for k in m)
    return {k: float(np.mean([m[k] for m in host if k in m])) for k in names}


def train(task: Task, config, workdir: str):
    """Trains `task` to `task.num_steps()`, resuming from `workdir` if it holds checkpoints."""
    tc = config.train
    num_steps = task.num_steps()
    accum = tc.get("grad_accum_steps", 1)
    if accum != 1 and not task.accumulates_gradients:
        raise ValueError(f"train.grad_accum_steps={accum}: gradient accumulation is not implemented for "
                         f"{task.name}")
    mesh = mesh_for(config)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=tc.max_to_keep)
    rep = replicated(mesh)

    rng = jax.random.PRNGKey(config.seed)
    abstract = jax.eval_shape(task.init, rng)
    state_sh = state_shardings_for(config, mesh, abstract)  # replicated unless mesh.model > 1 (FSDP)
    meta = {}
    if ckpt.latest_step() is not None:
        # restored before the run records are written: a checkpoint that does not fit this config
        # (CheckpointMismatchError) leaves the workdir's config.json as the run that wrote it
        state, meta = ckpt.restore(abstract_with_sharding(abstract, state_sh))
        task.load_host_state(meta.get("task", {}))
        logging.info("Resumed %s from step %d in %s", task.name, ckpt.latest_step(), ckpt.directory)
        records.write_run_records(workdir, config)
    else:
        records.write_run_records(workdir, config)
        task.prepare()
        state = jax.jit(task.init, out_shardings=state_sh)(rng)
        state = jax.device_put(task.warm_start(state), state_sh)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    if not meta:
        writer.write_hparams({k: v for k, v in _flatten(config.to_dict()).items()})
    step = int(jax.device_get(state.step))
    phase = task.phase(step)
    resume_position = local_data_position(meta) if meta.get("phase", 0) == phase else None
    if meta and resume_position is None:  # the checkpoint closed the previous phase
        state = jax.device_put(task.enter_phase(state, phase), state_sh)

    def start_phase(p, position=None):
        """(prefetcher, jitted step with the phase's frozen variables bound as an argument) of phase
        `p`: one compilation per phase; `position` resumes its data."""
        jitted = jax.jit(task.phase_step(p), in_shardings=(state_sh, rep, batch_sharding(mesh)),
                         out_shardings=(state_sh, rep), donate_argnums=0)
        frozen = jax.device_put(task.frozen(p), rep)
        iterator = iter(task.phase_loader(p))
        if position:
            iterator.set_state(position.encode("utf-8"))
        return _DevicePrefetcher(iterator, mesh, size=config.data.prefetch), (lambda s, b: jitted(s, frozen, b))

    def save(position):
        ckpt.save(step, state, {**data_meta(position), "phase": phase, "task": task.host_state(),
                                "config": config.to_json_best_effort()})

    progress = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer, every_steps=tc.log_every)
    prefetcher, step_fn = start_phase(phase, resume_position)
    pending: list[tuple[int, dict]] = []
    position = None
    try:
        with _Preemption() as preemption:
            while step < num_steps:
                if task.phase(step) != phase:
                    prefetcher.close()
                    phase = task.phase(step)
                    logging.info("Step %d: entering phase %d", step, phase)
                    state = jax.device_put(task.enter_phase(state, phase), state_sh)
                    prefetcher, step_fn = start_phase(phase)
                batch, position = next(prefetcher)
                state, metrics = step_fn(state, batch)
                step += 1
                pending.append((step, metrics))
                progress(step)
                stop = _preempted(preemption, step, tc.log_every) or step == tc.get("stop_at_step", -1)
                eval_now = tc.eval_every > 0 and (step % tc.eval_every == 0 or step == num_steps)
                save_now = step % tc.checkpoint_every == 0 or step == num_steps or stop
                if pending and (step % tc.log_every == 0 or eval_now or save_now):
                    writer.write_scalars(step, {f"train/{k}": v for k, v in _check_and_average(pending).items()})
                    pending = []
                if eval_now and not stop:
                    state, eval_metrics = task.evaluate(state, step)
                    writer.write_scalars(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
                    task.write_summaries(writer, state, step)
                if save_now:
                    save(position)
                    if _due(config.eval.get("at_checkpoints_every", 0), step) and not stop:
                        _evaluate_checkpoint(task, state, step, workdir, writer)
                if stop:
                    logging.warning("Stopping at step %d (checkpoint saved)", step)
                    break
    finally:
        prefetcher.close()
        ckpt.close()
        writer.flush()
    return state


def _due(every: int, step: int) -> bool:
    return every > 0 and step % every == 0


def _evaluate_checkpoint(task: Task, state, step: int, workdir: str, writer) -> None:
    """The model's full `--mode=evaluate` on the checkpoint just saved, written to WORKDIR/eval/step_N
    and its numbers logged as `checkpoint_eval/...` scalars. A failure is logged and training goes on
    (the checkpoint is already safe)."""
    final_report = getattr(task, "final_report", None)
    if final_report is None:
        logging.warning("eval.at_checkpoints_every: %s has no evaluation to run", task.name)
        return
    try:
        result = final_report(state, workdir, checkpoint_step=step)
    except Exception as e:  # noqa: BLE001 - an evaluation bug must not end a training run
        logging.exception("evaluation at checkpoint %d failed (training continues): %s", step, e)
        return
    metrics = result.get("metrics", result) if isinstance(result, dict) else {}
    scalars = {f"checkpoint_eval/{k}": v for k, v in _flatten(metrics).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)}
    writer.write_scalars(step, scalars)
    logging.info("evaluated checkpoint %d: %d numbers logged", step, len(scalars))


def _preempted(preemption: _Preemption, step: int, sync_every: int) -> bool:
    """Whether to stop for a SIGTERM now. Processes may see the signal at different steps, so with
    several they agree every `sync_every` steps (one tiny all-gather beside the metrics' host sync)."""
    if jax.process_count() == 1:
        return preemption.requested
    return step % max(1, sync_every) == 0 and distributed.any_process(preemption.requested)


def restore_latest(task: Task, config, workdir: str, step: int | None = None):
    """(state, meta) of the latest (or given) checkpoint of a run, for evaluation and sampling."""
    mesh = mesh_for(config)
    abstract = jax.eval_shape(task.init, jax.random.PRNGKey(config.seed))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        state, meta = ckpt.restore(abstract_with_sharding(abstract, state_shardings_for(config, mesh, abstract)), step)
    finally:
        ckpt.close()
    task.load_host_state(meta.get("task", {}))
    return state, meta


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
    return out
