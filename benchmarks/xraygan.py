"""XRayGAN per training phase: compile time, FLOPs, FLOP/s, steps/s, images/s, memory; sampling latency.

  python benchmarks/xraygan.py                          # 'cpu' variant (warm-up if any, 32 and 64 px)
  python benchmarks/xraygan.py --variant=''             # paper: stages 32/64/128/256 px (slow on a CPU)
  python benchmarks/xraygan.py --variant='' --compile_only --phases=gan_256
  python benchmarks/xraygan.py --quick                  # smoke variant, 2 timed steps (the tests)

The task is `XRayGANTask(config, workdir)` (it trains its report tokenizer into `--workdir`, by
default a temporary directory). For every phase in `task.phases` (optional MSE warm-up, then one
GAN phase per stage) the phase's pure step `task.phase_step(phase)` is jitted exactly as
`xray_gen.training.loop.train` does (`in_shardings=(replicated, batch_sharding)`, `donate_argnums=0`)
and fed one *real* batch of that phase's own loader (`task.phase_loader(phase)`: tokenised reports
+ both views at the stage's resolution), placed on the mesh before timing, so data loading and
host->device copies are excluded. The frozen VCN the GAN phases read is *not* trained: `task.vcn`
is replaced by a function returning a freshly initialised network of the same config
(`task.vcn_config(resolution)`), which costs the same FLOPs as a trained one; it is built on first
use, so only for the stages benchmarked. One state runs through the phases in order, as in training.

`--quick` (the tests) runs the smoke variant's last phase only, with rbg keys instead of threefry
(threefry's kernels are slow to compile on CPU), 2 timed steps: it checks the script, not speed.

Sampling latency is that of `task.sample`'s jitted generation (all stages of both views, batch of
one report tokenised by `sampling.encode_report`), median over repeats after a warm-up call.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

try:  # run as `python benchmarks/xraygan.py` or imported as `benchmarks.xraygan`
    from benchmarks import common
except ImportError:  # pragma: no cover
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # type: ignore

SAMPLE_REPORT = {
    "id": "benchmark",
    "findings": "The heart size is normal. The lungs are clear. There is no pleural effusion or pneumothorax.",
    "impression": "No acute cardiopulmonary process.",
}


def phase_label(kind: str, stage: int) -> str:
    from xray_gen.models.xraygan.steps import stage_resolution

    return f"{kind}_{stage_resolution(stage)}"


def select_phases(task, spec: str | None) -> list[int]:
    """Phase indices from `--phases` (indices or labels such as warmup_32, gan_64); all by default."""
    return common.select_labels([phase_label(kind, stage) for kind, stage, _ in task.phases], spec)


def make_key(seed: int, prng: str):
    """A PRNG key as training makes it (`jax.random.PRNGKey`: threefry), or a typed rbg key."""
    import jax

    return jax.random.PRNGKey(seed) if prng == "threefry" else jax.random.key(seed, impl=prng)


def make_task(variant: str, workdir: str, prng: str = "threefry"):
    """(task, config) with a data pipeline that loads in-process and untrained frozen VCNs."""
    import jax

    from xray_gen.configs.xraygan import get_config
    from xray_gen.models.vcn.task import VCNTask
    from xray_gen.models.xraygan.steps import stage_resolution
    from xray_gen.models.xraygan.task import XRayGANTask

    config = get_config(variant)
    config.data.worker_count = 0  # one batch per phase is drawn: no worker processes to spawn
    task = XRayGANTask(config, workdir)

    def untrained_vcn(stage: int):
        """What `task.vcn(stage)` restores from a trained workdir, freshly initialised instead (same
        network and config, so the same FLOPs); built on first use, only for the stages benchmarked."""
        if stage not in task._vcn:
            vcn_task = VCNTask(task.vcn_config(stage_resolution(stage)))
            vcn_state = jax.jit(vcn_task.init)(make_key(config.seed + stage, prng))
            task._vcn[stage] = (vcn_task.net, {"params": vcn_state.params, "batch_stats": vcn_state.batch_stats})
        return task._vcn[stage]

    task.vcn = untrained_vcn
    return task, config


def bench_phase(task, phase: int, holder: dict, mesh, args) -> dict:
    import jax

    from xray_gen.models.xraygan.steps import VIEWS, stage_resolution
    from xray_gen.training.sharding import batch_sharding, replicated, to_global

    kind, stage, num_steps = task.phases[phase]
    x = task.config.xraygan
    rep = replicated(mesh)
    batch_size = x.batch_sizes[stage]

    t0 = time.perf_counter()
    batch = to_global(next(iter(task.phase_loader(phase))), mesh)  # the phase's own features, exactly
    jax.block_until_ready(batch)
    batch_s = time.perf_counter() - t0

    step_fn = jax.jit(task.phase_step(phase), in_shardings=(rep, rep, batch_sharding(mesh)), out_shardings=(rep, rep),
                      donate_argnums=0)
    frozen = jax.device_put(task.frozen(phase), rep)  # the loop's argument: the phase's (untrained) VCN
    stats = common.compile_stats(step_fn, holder["state"], frozen, batch)
    compiled = common.with_frozen(stats.pop("compiled"), frozen)  # run exactly what was compiled: no second compile
    label = phase_label(kind, stage)
    print(f"phase {phase} {label} (batch {batch_size}): compiled in {stats['compile_total_s']:.1f} s, "
          f"{(stats['flops'] or 0) / 1e9:.2f} GFLOP/step", flush=True)
    row = {
        "phase": phase,
        "label": label,
        "kind": kind,
        "stage": stage,
        "resolution": stage_resolution(stage),
        "batch": batch_size,
        "views": len(VIEWS),
        "phase_steps": num_steps,
        "first_batch_s": batch_s,
        "compile_total_s": stats["compile_total_s"],
        **common.compile_columns(stats),
    }
    if args.compile_only:
        return row

    metrics, holder["state"], timing = common.time_train_step(
        compiled, holder["state"], batch, warmup=args.warmup, repeats=args.repeats, steps=args.steps,
        flops=stats["flops"], peak_flops=args.peak_flops)
    row.update({
        **timing,
        "images_per_s": batch_size * len(VIEWS) / (timing["step_ms_median"] / 1e3),
        "g_loss": float(metrics["g_loss"]),
        "d_loss": float(metrics["d_loss"]) if "d_loss" in metrics else None,
    })
    return row


def bench_sampling(task, state, args) -> dict:
    """Latency of generating every stage of both views for one report (batch of 1), as `task.sample` does."""
    import jax

    from xray_gen.models.xraygan import generate as sampling
    from xray_gen.models.xraygan.steps import stage_resolution

    x = task.config.xraygan
    last = x.num_stages - 1
    inputs, notes = sampling.encode_report(task.tokenizer, SAMPLE_REPORT, x.max_sentences, x.max_words)
    if inputs is None:
        raise RuntimeError(f"the benchmark report was skipped: {notes}")
    generate = jax.jit(lambda g_params, batch, rng: task.generate_stages(g_params, batch, rng, last))
    rng = make_key(task.config.sample.seed, args.prng)
    stats = common.compile_stats(generate, state.g_params, inputs, rng)
    compiled = stats.pop("compiled")
    t = common.time_fn(lambda: compiled(state.g_params, inputs, rng), warmup=max(1, args.warmup),
                       repeats=max(args.sample_repeats, 1))
    row = {
        "reports": 1,
        "resolution": stage_resolution(last),
        "stages": x.num_stages,
        "compile_total_s": stats["compile_total_s"],
        "latency_ms_median": 1e3 * t["median_s"],
        "latency_ms_min": 1e3 * t["min_s"],
        "reports_per_s": 1.0 / t["median_s"],
        "gflops_per_report": stats["flops"] / 1e9 if stats["flops"] else None,
        "footprint_mb": common.megabytes(stats["footprint_bytes"]),
        "repeats": t["repeats"],
    }
    print(f"sampling: {row['latency_ms_median']:.1f} ms/report (median of {t['repeats']}), compiled in "
          f"{row['compile_total_s']:.1f} s", flush=True)
    return row


def run(args, workdir: str) -> tuple[list[dict], dict]:
    import jax

    from xray_gen.training.sharding import make_mesh, replicated

    t0 = time.perf_counter()
    task, config = make_task(args.variant, workdir, args.prng)
    setup_s = time.perf_counter() - t0
    mesh = make_mesh(config.mesh.data)
    t0 = time.perf_counter()
    state = jax.jit(task.init, out_shardings=replicated(mesh))(make_key(config.seed, args.prng))
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0
    n_params = {k: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(v)) / 1e6
                for k, v in (("encoder", state.g_params["encoder"]), ("generator", state.g_params["generator"]),
                             ("critics", state.d_params))}
    print(f"xraygan ({config.variant or 'paper'}): task + tokenizer {setup_s:.1f} s, init {init_s:.1f} s, "
          f"params (M) {', '.join(f'{k} {v:.2f}' for k, v in n_params.items())}", flush=True)

    holder = {"state": state}
    rows = []
    for phase in select_phases(task, args.phases):
        row = bench_phase(task, phase, holder, mesh, args)
        row["variant"] = config.variant or "paper"
        rows.append(row)
    extra = {"peak_flops": args.peak_flops, "setup_s": setup_s, "init_s": init_s, "params_M": n_params}
    if not args.no_sampling and not args.compile_only:
        extra["sampling"] = bench_sampling(task, holder["state"], args)
    return rows, extra


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", default="cpu", help="xraygan config variant: '' (paper), 'cpu', 'smoke', ablations")
    p.add_argument("--phases", default="", help="comma-separated phase labels (warmup_32, gan_64, ...) or indices (-1: the last); all by default "
                        "(--quick: the last)")
    common.add_step_args(p, repeats_help="timed repeats per phase; the median and min are reported",
                         warmup_help="untimed steps (and sampling calls) after compilation")
    p.add_argument("--sample_repeats", type=int, default=10, help="timed sampling calls (batch of 1 report)")
    p.add_argument("--no_sampling", action="store_true", help="skip the sampling-latency measurement")
    p.add_argument("--compile_only", action="store_true", help="compile, FLOPs and memory only (no steps run)")
    p.add_argument("--workdir", default=None, help="task workdir (its tokenizer is reused if present); default a temp dir")
    p.add_argument("--quick", action="store_true", help="smoke variant, last phase, rbg keys, 2 timed steps (the tests)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/xraygan_<variant>.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.variant, args.steps, args.repeats, args.warmup, args.sample_repeats = "smoke", 1, 2, 1, 3
        args.prng = "rbg"  # threefry's sampling kernels are slow to compile on CPU
        args.phases = args.phases or "-1"  # the last GAN phase only (VCN reward, critics, every stage)
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    if args.workdir:
        rows, extra = run(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="xraygan_bench_") as workdir:
            rows, extra = run(args, workdir)
    columns = ["label", "resolution", "batch", "compile_total_s", "step_ms_median", "steps_per_s", "images_per_s",
               "gflops_per_step", "achieved_gflops_s", "utilisation", "footprint_mb", "temp_memory_mb"]
    common.print_table(rows, columns, title=f"xraygan {rows[0]['variant'] if rows else ''} phases "
                                            f"(peak {args.peak_flops:.3g} FLOP/s)")
    if "sampling" in extra:
        common.print_table([extra["sampling"]], title="sampling (batch of 1 report, all stages)")
    name = "xraygan_" + (args.variant or "paper")
    path = common.write_result(name, rows, {k: v for k, v in vars(args).items() if k != "workdir"}, out=args.out,
                               extra=extra)
    print(f"\nwrote {os.path.relpath(path)}")
    return path


if __name__ == "__main__":
    main()
