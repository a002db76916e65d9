"""PGGAN per resolution (compile time, FLOPs, steps/s, images/s, memory), latent class optimisation
(latents/s) and EMA generation throughput.

  python benchmarks/pggan.py                            # 'cpu' variant: 4..64 px, latent optimisation at 64 px
  python benchmarks/pggan.py --variant=256 --compile_only --phases=128px,256px
  python benchmarks/pggan.py --quick                    # smoke variant, last phase, rbg keys (the tests)

Training: `PGGANTask(config, workdir)` is built, `jax.jit(task.init)` once, and then for each phase
(one per level; `--phases` picks some by label such as `32px` or by index, -1 the last) in order the
host-side `task.enter_phase` runs and the phase's pure step `task.phase_step(phase)` is jitted as
`xray_gen.training.loop.train` does (`in_shardings=(replicated, batch_sharding)`, `donate_argnums=0`)
and fed one real batch of the phase's own loader (`task.phase_loader(phase)`, phantom frontal views
at the level's resolution) placed on the mesh before timing, so loading and host->device copies are
excluded. The state's step is set to the phase's first step, so levels above 0 time the fade-in; alpha
is a traced function of the step, so this one compile serves the whole fade-in and stable part of a level.

Latent class optimisation: `class_optimisation.make_optimiser` with the EMA generator at the last
level and an UNTRAINED DenseNet of the configured classifier variant (`pggan.classifier_variant` on
the PGGAN's data config, as `task.classifier()` builds it; freshly initialised, so the same FLOPs as a
trained one), over `archive.batch_size` truncated-normal latents with target logit +inf, so no latent
converges and every one of the `--opt_steps` + 1 iterations (generator + classifier forward and
backward, Adam) runs. Its compile time is the first call less the median call (`make_optimiser`
exposes no lowering). The same gradient jitted alone gives the FLOPs per iteration and a reference
time: on XLA:CPU convolutions run several times slower inside a while loop (jax-ml/jax#12868).
Generation: the jitted EMA generator at the last level, `--gen_batch` latents.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

try:  # run as `python benchmarks/pggan.py` or imported as `benchmarks.pggan`
    from benchmarks import common
    from benchmarks.xraygan import make_key
except ImportError:  # pragma: no cover
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # type: ignore
    from xraygan import make_key  # type: ignore


def phase_label(task, phase: int) -> str:
    from xray_gen.models.pggan.networks import resolution_of

    return f"{resolution_of(task.phases[phase][0])}px"


def select_phases(task, spec: str | None) -> list[int]:
    """Phase indices from `--phases` (labels such as 8px,64px, or indices, -1 the last); all by default."""
    return common.select_labels([phase_label(task, i) for i in range(len(task.phases))], spec)


def make_task(variant: str, workdir: str):
    from xray_gen.configs.pggan import get_config
    from xray_gen.models.pggan.task import PGGANTask

    config = get_config(variant)
    config.data.worker_count = 0  # one batch per phase is drawn: no worker processes to spawn
    return PGGANTask(config, workdir), config


def bench_phase(task, phase: int, holder: dict, mesh, args) -> dict:
    import jax
    import jax.numpy as jnp

    from xray_gen.models.pggan.networks import resolution_of
    from xray_gen.training.sharding import batch_sharding, replicated, to_global

    level, fade_steps, num_steps = task.phases[phase]
    batch_size = task.config.pggan.batch_sizes[level]
    rep = replicated(mesh)

    t0 = time.perf_counter()
    batch = to_global(next(iter(task.phase_loader(phase))), mesh)  # the phase's own features, exactly
    jax.block_until_ready(batch)
    batch_s = time.perf_counter() - t0

    # As the loop enters a level: fresh Adam moments, and the step count where the level starts.
    start = int(task.boundaries[phase - 1]) if phase > 0 else 0
    state = task.enter_phase(holder.pop("state"), phase)
    holder["state"] = state.replace(step=jax.device_put(jnp.int32(start), rep))

    step_fn = jax.jit(task.phase_step(phase), in_shardings=(rep, rep, batch_sharding(mesh)), out_shardings=(rep, rep),
                      donate_argnums=0)
    frozen = jax.device_put(task.frozen(phase), rep)
    stats = common.compile_stats(step_fn, holder["state"], frozen, batch)
    compiled = common.with_frozen(stats.pop("compiled"), frozen)  # run exactly what was compiled: no second compile
    label = phase_label(task, phase)
    print(f"phase {phase} {label} (batch {batch_size}): compiled in {stats['compile_total_s']:.1f} s, "
          f"{(stats['flops'] or 0) / 1e9:.2f} GFLOP/step", flush=True)
    row = {
        "phase": phase,
        "label": label,
        "level": level,
        "resolution": resolution_of(level),
        "batch": batch_size,
        "fade_steps": fade_steps,
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
        "images_per_s": batch_size / (timing["step_ms_median"] / 1e3),  # real images per step = batch
        "alpha": float(metrics["alpha"]),
        "g_loss": float(metrics["g_loss"]),
        "d_loss": float(metrics["d_loss"]),
    })
    return row


def untrained_classifier(task, key):
    """(logits function of float images as a Partial, classifier config) of the DenseNet that
    `task.classifier()` would train, freshly initialised; grey input as export.py feeds it."""
    import jax
    import jax.numpy as jnp

    cls_task = task.classifier().task  # the classifier variant on the PGGAN's data config; trains nothing
    cls_state = jax.jit(cls_task.init)(key)
    variables = {"params": cls_state.params, "batch_stats": cls_state.batch_stats}
    net = cls_task.net

    def logits_fn(v, images):
        grey = jnp.mean(images, axis=-1, keepdims=True) if images.shape[-1] != 1 else images
        return net.apply(v, grey, train=False)[0]

    return jax.tree_util.Partial(logits_fn, variables), cls_task.config


def bench_latent_optimisation(task, state, args) -> dict:
    """Adam ascent of an unreachable logit (+inf) over `archive.batch_size` latents: every iteration runs."""
    import jax
    import jax.numpy as jnp

    from xray_gen.data.schema import NUM_LABELS
    from xray_gen.models.pggan.class_optimisation import make_optimiser, truncated_normal_latents

    c, a = task.config, task.config.archive
    logits_fn, cls_config = untrained_classifier(task, make_key(c.seed + 1, args.prng))
    generate_fn = jax.tree_util.Partial(lambda g, z: task.generate(g, z), state.g_ema)
    run = make_optimiser(generate_fn, logits_fn, max_steps=args.opt_steps, learning_rate=a.learning_rate)
    n = a.batch_size
    z0 = truncated_normal_latents(make_key(a.seed, args.prng), n, c.pggan.latent_dim, a.truncation)
    target_class = jnp.arange(n, dtype=jnp.int32) % NUM_LABELS
    target_logit = jnp.full((n,), jnp.inf, jnp.float32)
    call = lambda: run(z0, target_class, target_logit)

    with common.Stopwatch() as first:
        z, converged, steps, _ = jax.block_until_ready(call())  # compile + one full run
    if bool(np.any(np.asarray(converged))) or not bool(np.all(np.asarray(steps) == args.opt_steps)):
        raise RuntimeError("a latent reached the +inf target: the loop stopped early and its timing would be short")
    row = {
        "latents": n,
        "resolution": c.data.resolution,
        "classifier_variant": c.pggan.classifier_variant,
        "classifier_blocks": list(cls_config.classifier.block_sizes),
        "opt_steps": args.opt_steps,
        "iterations": args.opt_steps + 1,  # each a generator + classifier forward/backward (the last takes no step)
        "first_call_s": first.seconds,
        "latent_finite": bool(np.isfinite(np.asarray(z)).all()),
    }

    # One iteration's gradient as a plain jitted function: its FLOPs (XLA's cost analysis counts a
    # while body once, whatever the trip count) and its time outside the loop, for comparison.
    def objective(fns, z, cls):
        gen, logits = fns
        return -jnp.sum(jnp.take_along_axis(logits(gen(z)), cls[:, None], axis=1))

    grad_args = ((generate_fn, logits_fn), z0, target_class)
    stats = common.compile_stats(jax.jit(jax.value_and_grad(objective, argnums=1)), *grad_args)
    grad = stats.pop("compiled")
    flops = stats["flops"]
    row["gflops_per_iteration"] = flops / 1e9 if flops else None
    if args.compile_only:
        return row
    t = common.time_fn(call, warmup=0, repeats=args.repeats)  # the first call was the warm-up
    call_s = t["median_s"]
    grad_s = common.time_fn(lambda: grad(*grad_args), warmup=1, repeats=args.repeats)["median_s"]
    row.update({
        "compile_s_est": max(first.seconds - call_s, 0.0),
        "call_ms_median": 1e3 * call_s,
        "call_ms_min": 1e3 * t["min_s"],
        "ms_per_iteration": 1e3 * call_s / row["iterations"],
        "iterations_per_s": row["iterations"] / call_s,
        "latents_per_s": n / call_s,
        "achieved_gflops_s": flops * row["iterations"] / call_s / 1e9 if flops else None,
        "grad_ms_median": 1e3 * grad_s,  # the same gradient, jitted alone (no while loop)
        "in_loop_slowdown": call_s / row["iterations"] / grad_s,
        # Every latent failing after archive.max_steps: the slowest an optimisation round can be.
        "archive_max_steps": a.max_steps,
        "latents_per_s_at_max_steps": n / (call_s / row["iterations"] * (a.max_steps + 1)),
        "repeats": t["repeats"],
    })
    print(f"latent optimisation: {row['latents_per_s']:.2f} latents/s ({row['iterations']} iterations of "
          f"{n} latents, {row['ms_per_iteration']:.1f} ms/iteration, {row['grad_ms_median']:.1f} ms for the same "
          f"gradient outside the loop), compile ~{row['compile_s_est']:.1f} s", flush=True)
    return row


def bench_generation(task, state, args) -> dict:
    """Images/s of the jitted EMA generator at the last level (what sampling and export run)."""
    import jax

    gen_batch = args.gen_batch
    generate = jax.jit(lambda g, z: task.generate(g, z))
    z = jax.random.normal(make_key(task.config.sample.seed, args.prng), (gen_batch, task.config.pggan.latent_dim))
    stats = common.compile_stats(generate, state.g_ema, z)
    compiled = stats.pop("compiled")
    row = {
        "batch": gen_batch,
        "resolution": task.config.data.resolution,
        "compile_total_s": stats["compile_total_s"],
        "gflops_per_batch": stats["flops"] / 1e9 if stats["flops"] else None,
        "footprint_mb": common.megabytes(stats["footprint_bytes"]),
    }
    if args.compile_only:
        return row
    t = common.time_fn(lambda: compiled(state.g_ema, z), warmup=max(1, args.warmup), repeats=args.repeats)
    row.update({
        "batch_ms_median": 1e3 * t["median_s"],
        "batch_ms_min": 1e3 * t["min_s"],
        "images_per_s": gen_batch / t["median_s"],
        "achieved_gflops_s": stats["flops"] / t["median_s"] / 1e9 if stats["flops"] else None,
        "repeats": t["repeats"],
    })
    print(f"generation: {row['images_per_s']:.1f} images/s (batch {gen_batch}), compiled in "
          f"{row['compile_total_s']:.1f} s", flush=True)
    return row


def run(args, workdir: str) -> tuple[list[dict], dict]:
    import jax

    from xray_gen.training.sharding import make_mesh, replicated

    task, config = make_task(args.variant, workdir)
    mesh = make_mesh(config.mesh.data)
    t0 = time.perf_counter()
    state = jax.jit(task.init, out_shardings=replicated(mesh))(make_key(config.seed, args.prng))
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0
    n_params = {k: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(v)) / 1e6
                for k, v in (("generator", state.g_params), ("critic", state.d_params))}
    print(f"pggan ({config.variant or 'paper'}): {len(task.phases)} levels up to {config.data.resolution} px, "
          f"init {init_s:.1f} s, params (M) {', '.join(f'{k} {v:.2f}' for k, v in n_params.items())}", flush=True)

    holder = {"state": state}
    rows = []
    for phase in select_phases(task, args.phases):
        row = bench_phase(task, phase, holder, mesh, args)
        row["variant"] = config.variant or "paper"
        rows.append(row)
    extra = {"peak_flops": args.peak_flops, "init_s": init_s, "params_M": n_params}
    if not args.no_latent_optimisation:
        extra["latent_optimisation"] = bench_latent_optimisation(task, holder["state"], args)
    extra["generation"] = bench_generation(task, holder["state"], args)
    return rows, extra


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", default="cpu", help="pggan config variant: '' (paper, 1024 px), '256', '64', 'official', 'cpu', 'smoke'")
    p.add_argument("--phases", default="", help="comma-separated phase labels (4px, 8px, ...) or indices (-1: the last); "
                                                "all by default (--quick: the last)")
    common.add_step_args(p, repeats_help="timed repeats per phase / latent optimisation / generation",
                         warmup_help="untimed steps (and generation calls) after compilation")
    p.add_argument("--opt_steps", type=int, default=10, help="latent-optimisation Adam steps per timed call (+1 final check)")
    p.add_argument("--no_latent_optimisation", action="store_true", help="skip the latent-optimisation measurement")
    p.add_argument("--gen_batch", type=int, default=64, help="latents per timed EMA-generator call")
    p.add_argument("--compile_only", action="store_true",
                   help="compile, FLOPs and memory only (latent optimisation: one call, compile included)")
    p.add_argument("--workdir", default=None, help="task workdir (nothing is trained into it); default a temp dir")
    p.add_argument("--quick", action="store_true", help="smoke variant, last phase, rbg keys, 2 timed steps (the tests)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/pggan_<variant>.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.variant, args.steps, args.repeats, args.warmup, args.opt_steps = "smoke", 1, 2, 1, 2
        args.prng = "rbg"
        args.phases = args.phases or "-1"
    for name in ("steps", "repeats", "opt_steps", "gen_batch"):
        if getattr(args, name) < (0 if name == "opt_steps" else 1):
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}")
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    if args.workdir:
        rows, extra = run(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="pggan_bench_") as workdir:
            rows, extra = run(args, workdir)
    columns = ["label", "batch", "compile_total_s", "step_ms_median", "step_ms_min", "steps_per_s", "images_per_s",
               "gflops_per_step", "achieved_gflops_s", "utilisation", "footprint_mb", "temp_memory_mb"]
    variant = rows[0]["variant"] if rows else args.variant
    common.print_table(rows, columns, title=f"pggan {variant} levels (peak {args.peak_flops:.3g} FLOP/s)")
    if "latent_optimisation" in extra:
        common.print_table([extra["latent_optimisation"]], title="latent class optimisation (target +inf)", columns=[
            "latents", "resolution", "classifier_variant", "iterations", "first_call_s", "compile_s_est",
            "call_ms_median", "ms_per_iteration", "grad_ms_median", "in_loop_slowdown", "iterations_per_s",
            "latents_per_s", "latents_per_s_at_max_steps", "gflops_per_iteration", "achieved_gflops_s"])
    common.print_table([extra["generation"]], title="EMA generation at the last level")
    name = "pggan_" + (args.variant or "paper")
    path = common.write_result(name, rows, {k: v for k, v in vars(args).items() if k != "workdir"}, out=args.out,
                               extra=extra)
    print(f"\nwrote {os.path.relpath(path)}")
    return path


if __name__ == "__main__":
    main()
