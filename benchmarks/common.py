"""Helpers shared by the benchmark scripts: environment record, JSON results, tables, timing, XLA stats.

Every script writes one JSON file (default `benchmarks/results/<name>.json`, or `--out`) holding
`env` (device kind, backend, device count, jax/jaxlib/XLA-extension versions, CPU count, host
timestamp), `args` (the command's arguments) and `results` (a list of flat dicts, one per measured
setting), and prints the same rows as a markdown table.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Iterable, Sequence

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# ---- environment and results --------------------------------------------------------------------
def environment() -> dict[str, Any]:
    """What the numbers were measured on (no host names or paths)."""
    import jax
    import jax.extend  # noqa: F401  (backend platform_version)
    import jaxlib

    devices = jax.devices()
    env = {
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
        "jax_version": jax.__version__,
        "jaxlib_version": getattr(jaxlib, "__version__", "unknown"),
        "python_version": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:  # the XLA extension's own version number (bumped with each XLA/jaxlib change)
        from jax._src import lib as _lib

        env["xla_extension_version"] = int(getattr(_lib, "jaxlib_extension_version"))
    except Exception:  # private API: best effort only
        env["xla_extension_version"] = None
    try:
        env["platform_version"] = jax.extend.backend.get_backend().platform_version
    except Exception:
        env["platform_version"] = None
    return env


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no NaN/inf
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):  # numpy / jax scalars
        return _jsonable(value.item())
    return str(value)


def write_result(name: str, results: Sequence[dict], args: dict | None = None, out: str | None = None,
                 extra: dict | None = None) -> str:
    """Writes {'benchmark', 'env', 'args', 'results', ...extra} as JSON; returns the path."""
    path = out or os.path.join(RESULTS_DIR, f"{name}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    payload = {
        "benchmark": name,
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]) if sys.argv and sys.argv[0] else "",
        "env": environment(),
        "args": dict(args or {}),
        "results": list(results),
    }
    payload.update(extra or {})
    with open(path, "w") as f:
        json.dump(_jsonable(payload), f, indent=2, sort_keys=False)
        f.write("\n")
    return path


# ---- tables -------------------------------------------------------------------------------------
def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        a = abs(value)
        if a != 0 and (a >= 1e6 or a < 1e-3):
            return f"{value:.3g}"
        return f"{value:.4g}" if a < 100 else f"{value:.1f}"
    return str(value)


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A GitHub markdown table of `rows` (dicts); columns default to the union of keys in order."""
    if not rows:
        return "(no rows)"
    if columns is None:
        columns = []
        for row in rows:
            columns += [k for k in row if k not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def print_table(rows: Sequence[dict], columns: Sequence[str] | None = None, title: str | None = None) -> None:
    if title:
        print(f"\n### {title}\n")
    print(markdown_table(rows, columns), flush=True)


# ---- timing -------------------------------------------------------------------------------------
def time_fn(fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 5, number: int = 1) -> dict[str, float]:
    """Times `fn()` (blocking on its jax results) after `warmup` untimed calls.

    Each of `repeats` measurements times `number` back-to-back calls and blocks once at the end
    (so asynchronous dispatch overlaps as it does in a training loop); reported times are per call.
    Returns median_s, min_s, max_s, mean_s and the raw per-call times.
    """
    import jax

    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = None
        for _ in range(max(1, number)):
            out = fn()
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / max(1, number))
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "mean_s": statistics.fmean(times),
        "repeats": len(times),
        "number": max(1, number),
        "times_s": times,
    }


class Stopwatch:
    """`with Stopwatch() as sw: ...; sw.seconds`."""

    def __enter__(self):
        self._t0 = time.perf_counter()
        self.seconds = float("nan")
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._t0
        return False


# ---- XLA compile statistics ---------------------------------------------------------------------
def _cost_dict(cost) -> dict[str, float]:
    """Normalises `compiled.cost_analysis()` (a dict, a list of per-computation dicts, or None)."""
    if cost is None:
        return {}
    if isinstance(cost, dict):
        return cost
    if isinstance(cost, (list, tuple)):
        merged: dict[str, float] = {}
        for part in cost:
            for k, v in (part or {}).items():
                try:
                    merged[k] = merged.get(k, 0.0) + float(v)
                except (TypeError, ValueError):
                    pass
        return merged
    return {}


def _get_float(d: dict, *keys: str) -> float | None:
    for key in keys:
        if key in d:
            try:
                value = float(d[key])
            except (TypeError, ValueError):
                continue
            if math.isfinite(value) and value >= 0:
                return value
    return None


def compile_stats(jitted_fn, *args, **kwargs) -> dict[str, Any]:
    """Lowering and compile seconds plus XLA's cost and memory analysis of `jitted_fn(*args)`.

    Returns lower_s, compile_s, compile_total_s, flops, transcendentals, bytes_accessed (None
    where XLA's cost model does not say), the memory sizes `memory_analysis()` offers (peak where
    the backend reports it) and the `compiled` executable itself (callable with the same args;
    drop it before writing JSON); footprint_bytes is arguments + outputs - aliased + temporaries,
    an upper-bound-ish estimate of device memory one call needs. Compiling here does not warm jit's own cache, so time the first
    call separately if that matters.
    """
    t0 = time.perf_counter()
    lowered = jitted_fn.lower(*args, **kwargs)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    stats: dict[str, Any] = {"lower_s": t1 - t0, "compile_s": t2 - t1, "compile_total_s": t2 - t0}
    try:
        cost = _cost_dict(compiled.cost_analysis())
    except Exception:  # some backends raise instead of returning nothing
        cost = {}
    stats["flops"] = _get_float(cost, "flops")
    stats["transcendentals"] = _get_float(cost, "transcendentals")
    stats["bytes_accessed"] = _get_float(cost, "bytes accessed", "bytes_accessed")
    try:
        mem = compiled.memory_analysis()
    except Exception:
        mem = None
    for field in ("peak_memory_in_bytes", "temp_size_in_bytes", "argument_size_in_bytes",
                  "output_size_in_bytes", "alias_size_in_bytes", "generated_code_size_in_bytes"):
        value = getattr(mem, field, None) if mem is not None else None
        if value is None and isinstance(mem, dict):
            value = mem.get(field)
        stats[field.replace("_in_bytes", "_bytes")] = int(value) if value is not None else None
    # Live footprint of one call: inputs + outputs (less donated/aliased buffers) + XLA temporaries.
    # Reported beside XLA's own peak because the CPU backend's peak can be smaller than its temps.
    parts = [stats.get(k) for k in ("argument_size_bytes", "output_size_bytes", "temp_size_bytes")]
    if all(p is not None for p in parts):
        stats["footprint_bytes"] = sum(parts) - (stats.get("alias_size_bytes") or 0)
    else:
        stats["footprint_bytes"] = stats.get("peak_memory_bytes")
    stats["compiled"] = compiled
    return stats


def megabytes(n: float | None) -> float | None:
    return n / 2**20 if n is not None else None


def compile_columns(stats: dict) -> dict[str, Any]:
    """The table columns every step benchmark reports from `compile_stats` (GFLOP, GB, MB)."""
    return {
        "lower_s": stats["lower_s"],
        "compile_s": stats["compile_s"],
        "gflops_per_step": stats["flops"] / 1e9 if stats["flops"] else None,
        "gbytes_accessed_per_step": stats["bytes_accessed"] / 1e9 if stats["bytes_accessed"] else None,
        "footprint_mb": megabytes(stats["footprint_bytes"]),
        "xla_peak_memory_mb": megabytes(stats["peak_memory_bytes"]),
        "temp_memory_mb": megabytes(stats["temp_size_bytes"]),
    }


def with_frozen(compiled, frozen):
    """`(state, batch) -> compiled(state, frozen, batch)`: a loop step with its frozen variables bound
    as the argument they are (never a constant of the program), for `time_train_step`."""
    return lambda state, batch: compiled(state, frozen, batch)


def time_train_step(compiled, state, batch, *, warmup: int, repeats: int, steps: int,
                    flops: float | None, peak_flops: float) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Times `state, metrics = compiled(state, batch)` carried over steps; returns the last
    metrics (on the host), the final state and the timing columns (per-step ms, steps/s,
    achieved FLOP/s and its share of `peak_flops`, the timed step count and per-repeat times)."""
    import jax

    holder = {"state": state}

    def one_step():
        holder["state"], metrics = compiled(holder["state"], batch)
        return metrics

    t = time_fn(one_step, warmup=warmup, repeats=repeats, number=steps)
    metrics = jax.device_get(one_step())
    jax.block_until_ready(holder["state"])
    step_s = t["median_s"]
    achieved = flops / step_s if flops else None
    columns = {
        "step_ms_median": 1e3 * step_s,
        "step_ms_min": 1e3 * t["min_s"],
        "steps_per_s": 1.0 / step_s,
        "achieved_gflops_s": achieved / 1e9 if achieved else None,
        "utilisation": achieved / peak_flops if achieved else None,
        "timed_steps": t["repeats"] * t["number"],
        "step_times_s": t["times_s"],
    }
    return metrics, holder["state"], columns


def parse_csv_ints(text: str) -> list[int]:
    return [int(x) for x in str(text).split(",") if x.strip()]


def parse_csv(text: str) -> list[str]:
    return [x.strip() for x in str(text).split(",") if x.strip()]


def rate(count: float, seconds: float) -> float | None:
    return count / seconds if seconds and seconds > 0 else None


def strip_private(stats: dict, drop: Iterable[str] = ("compiled",)) -> dict:
    return {k: v for k, v in stats.items() if k not in set(drop)}


def select_labels(labels: Sequence[str], spec: str | None) -> list[int]:
    """Indices chosen by `--phases` (labels or indices, -1 = the last; all when empty), sorted."""
    if not spec:
        return list(range(len(labels)))
    chosen = []
    for item in parse_csv(spec):
        if item.lstrip("-").isdigit() and -len(labels) <= int(item) < len(labels):
            chosen.append(int(item) % len(labels))
        elif item in labels:
            chosen.append(list(labels).index(item))
        else:
            raise ValueError(f"unknown phase {item!r}; this variant has {', '.join(labels)} (or indices, -1 = the last)")
    return sorted(set(chosen))


def add_step_args(p, *, repeats_help: str, warmup_help: str) -> None:
    """The options every per-phase step benchmark shares (timing, peak, PRNG, output)."""
    p.add_argument("--steps", type=int, default=5, help="steps per timed repeat (dispatched back to back)")
    p.add_argument("--repeats", type=int, default=3, help=repeats_help)
    p.add_argument("--warmup", type=int, default=1, help=warmup_help)
    p.add_argument("--peak_flops", type=float, default=150e9, help="declared peak FLOP/s for utilisation")
    p.add_argument("--prng", default="threefry", choices=("threefry", "rbg", "unsafe_rbg"),
                   help="key implementation: threefry is what training uses; rbg compiles much faster on CPU "
                        "(--quick uses it), with different random streams")
