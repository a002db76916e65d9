"""Compile time, steps/s, images/s, FLOPs and utilisation of the jitted `train_step` of each task.

  python benchmarks/train_step.py                       # classifier + vcn, 'cpu' variants
  python benchmarks/train_step.py --variant=''          # paper variants (slow on a CPU)
  python benchmarks/train_step.py --models=vcn --variant=cpu --resolution=128 --batch_size=16
  python benchmarks/train_step.py --models=emixer       # EMIXER's joint step (2 D steps + 1 G/F step)
  python benchmarks/train_step.py --models=cxr_irgen,cxr_irgen_unet   # the latent denoiser's step
  python benchmarks/train_step.py --quick               # smoke variants, a few steps (the tests)
  python benchmarks/train_step.py --models=cxr_irgen --width_multipliers=0.5,1,2 --batch_sizes=8,16,32
                                                        # a scaling sweep: one row per (width, batch)

The state is built with `jax.jit(task.init, out_shardings=replicated)` and the step is jitted
exactly as `xray_gen.training.loop.train` does (`in_shardings=(replicated, batch_sharding)`,
`donate_argnums=0`). Batches are synthetic, built once by the task's own `ToModelInputs` transform
from random studies and placed on the mesh before timing, so data loading and host->device copies
are excluded: this measures the step alone. CXR-IRGen's step (frozen autoencoder and CLIP encoders,
then the U-ViT or U-Net denoiser's loss and update) runs with randomly initialised stages and a
report tokenizer trained in a temporary directory: its cost does not depend on trained weights. FLOPs per step are XLA's cost-analysis estimate of
the compiled step; utilisation is achieved FLOP/s over `--peak_flops` (default 150e9: this
benchmark machine's 2 vCPUs at 2.6 GHz x 32 fp32 FLOP/cycle of 256-bit FMA, about 166e9, less
some clock droop under vector load; pass your device's peak elsewhere, e.g. ~989e12 dense bf16 on
an H100 SXM, ~67e12 fp32).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

try:  # run as `python benchmarks/train_step.py` or imported as `benchmarks.train_step`
    from benchmarks import common
except ImportError:  # pragma: no cover
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # type: ignore

MODELS = ("classifier", "vcn", "emixer", "cxr_irgen", "cxr_irgen_unet")


# The width fields each model's sweep multiplies, with the multiple each must stay on (group norms,
# attention heads, the sinusoidal time token): (dotted key, quantum).
WIDTH_KEYS = {
    "classifier": [("classifier.growth_rate", 4), ("classifier.init_features", 8)],
    "vcn": [("vcn.widths", 8)],
    "emixer": [("emixer.g_ch", 8), ("emixer.d_ch", 8), ("emixer.joint_ch", 8)],
    "cxr_irgen": [("cxr_irgen.uvit.width", None)],  # quantum: twice the size's heads
    "cxr_irgen_unet": [("cxr_irgen.unet.block_out_channels", None)],  # quantum: the group-norm groups
}


def _scaled(value, multiplier: float, quantum: int):
    """An int (or tuple of ints) times `multiplier`, rounded to a positive multiple of `quantum`."""
    one = lambda v: max(quantum, int(round(v * multiplier / quantum)) * quantum)
    return tuple(one(v) for v in value) if isinstance(value, (tuple, list)) else one(value)


def scale_widths(model: str, config, multiplier: float) -> dict:
    """Multiplies the model's width fields in `config` in place; returns {key: new value}."""
    if multiplier == 1.0:
        return {}
    changed = {}
    for key, quantum in WIDTH_KEYS[model]:
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        value = node[leaf]
        if key == "cxr_irgen.uvit.width":
            from xray_gen.nn.uvit import UVIT_SIZES

            size = UVIT_SIZES[node["size"]]
            value, quantum = value or size["width"], 2 * size["num_heads"]
        elif key == "cxr_irgen.unet.block_out_channels":
            quantum = int(np.lcm(node["norm_num_groups"], node["num_heads"]))
        node[leaf] = changed[key] = _scaled(value, multiplier, quantum)
    return changed


def get_task(model: str, variant: str, overrides: dict, width_multiplier: float = 1.0):
    """(task, config) for `model` with `variant`, dotted-key overrides (e.g. data.resolution) and
    its width fields times `width_multiplier`."""
    if model == "classifier":
        from xray_gen.configs.classifier import get_config
        from xray_gen.models.classifier.task import ClassifierTask as Task
    elif model == "vcn":
        from xray_gen.configs.vcn import get_config
        from xray_gen.models.vcn.task import VCNTask as Task
    elif model == "emixer":
        from xray_gen.configs.emixer import get_config
        from xray_gen.models.emixer.task import EmixerTask as Task
    elif model.startswith("cxr_irgen"):
        from xray_gen.configs.cxr_irgen import get_config
        from xray_gen.models.cxr_irgen.task import CxrIRGenTask as Task
    else:
        raise ValueError(f"unknown model {model!r}; valid: {', '.join(MODELS)}")
    config = get_config(variant)
    for key, value in overrides.items():
        if value is None:
            continue
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = type(node[leaf])(value)
    if model.startswith("cxr_irgen"):
        config.cxr_irgen.backbone = "unet" if model.endswith("_unet") else "uvit"
    scale_widths(model, config, width_multiplier)
    if not model.startswith("cxr_irgen"):
        return Task(config), config
    import tempfile

    import jax

    task = Task(config, tempfile.mkdtemp(prefix="bench_cxr_irgen_"))  # the tokenizer is trained there
    task.use_random_stages(jax.random.PRNGKey(config.seed))
    return task, config


def emixer_batch(config, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """EMIXER's model inputs (image, labels and their masks, hierarchical report ids) at random: its
    transform needs a trained tokenizer, which a benchmark has no reason to build."""
    e, res = config.emixer, config.data.resolution
    rng = np.random.default_rng(seed)
    n = batch_size
    return {
        "frontal": rng.integers(0, 256, (n, res, res, 1), dtype=np.uint8),
        "targets": rng.integers(0, 2, (n, 14)).astype(np.float32),
        "label_mask": np.ones((n, 14), np.float32),
        "labeled_mask": np.ones((n,), np.float32),
        "report_ids": rng.integers(1, e.vocab_size, (n, e.max_sentences, e.max_words)).astype(np.int32),
        "report_mask": np.ones((n, e.max_sentences, e.max_words), np.float32),
    }


def cxr_irgen_batch(config, vocab_size: int, batch_size: int, seed: int = 0,
                    prompt_len: int | None = None) -> dict[str, np.ndarray]:
    """CXR-IRGen's denoiser inputs at random: image, label-prompt ids, reference image and flag.
    `prompt_len` None: cxr_irgen.prompt_len (a pretrained CLIP's is its own: `task.prompt_len`)."""
    res, length = config.data.resolution, prompt_len or config.cxr_irgen.prompt_len
    rng = np.random.default_rng(seed)
    n = batch_size
    lengths = rng.integers(4, length + 1, n)
    return {
        "frontal": rng.integers(0, 256, (n, res, res, 1), dtype=np.uint8),
        "prompt_ids": rng.integers(4, vocab_size, (n, length)).astype(np.int32),
        "prompt_mask": (np.arange(length)[None] < lengths[:, None]).astype(np.float32),
        "reference": rng.integers(0, 256, (n, res, res, 1), dtype=np.uint8),
        "reference_flag": np.ones((n,), np.float32),
    }


def synthetic_batch(task, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A host batch with exactly the pipeline's features (the task's transform on random studies)."""
    if task.config.model == "emixer":
        return emixer_batch(task.config, batch_size, seed)
    if task.config.model == "cxr_irgen":
        return cxr_irgen_batch(task.config, task.clip.text.vocab_size, batch_size, seed, task.prompt_len)
    transform = task.transform()  # the same ToModelInputs the task's loaders use
    res = task.config.data.resolution
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(batch_size):
        labels = rng.choice(np.array([1.0, 0.0, -1.0, np.nan], np.float32), size=14)
        example = {
            "study_id": f"s{i}",
            "patient_id": f"p{i}",
            "labels": labels,
            **{view: rng.integers(0, 256, (res, res), dtype=np.uint8) for view in transform.views},
            **{f"has_{view}": True for view in transform.views},
        }
        rows.append(transform.map(example))
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def calibrate_matmul(n: int = 1024, repeats: int = 5) -> float:
    """Achieved fp32 FLOP/s of one jitted n x n matmul (a rough ceiling for dense work here)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    t = common.time_fn(lambda: f(a), warmup=2, repeats=repeats)
    return 2.0 * n**3 / t["min_s"]


def param_count(state) -> int:
    """Trainable parameters: every array under a `params` attribute or key (EMIXER keeps several
    networks' variables in dicts; EMA copies and optimiser moments are not counted)."""
    import jax

    def named_params(path) -> bool:
        return any(getattr(k, "name", getattr(k, "key", None)) == "params" for k in path)

    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return sum(int(np.prod(x.shape)) for path, x in leaves if named_params(path))


def bench_model(model: str, args, batch_size: int | None = None, width_multiplier: float = 1.0) -> dict:
    import jax

    from xray_gen.training.sharding import batch_sharding, check_batch_size, make_mesh, replicated, to_global

    task, config = get_task(model, args.variant, {"data.resolution": args.resolution,
                                                  "train.batch_size": batch_size or args.batch_size}, width_multiplier)
    mesh = make_mesh(config.mesh.data)
    global_batch = config.train.batch_size
    local_batch = check_batch_size(global_batch, mesh)
    rep = replicated(mesh)

    t0 = time.perf_counter()
    state = jax.jit(task.init, out_shardings=rep)(jax.random.PRNGKey(config.seed))
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0
    n_params = param_count(state)

    batch = to_global(synthetic_batch(task, local_batch, seed=args.seed), mesh)
    jax.block_until_ready(batch)
    step_fn = jax.jit(task.train_step, in_shardings=(rep, rep, batch_sharding(mesh)), out_shardings=(rep, rep),
                      donate_argnums=0)
    frozen = jax.device_put(task.frozen(0), rep)  # CXR-IRGen: its random stages (make_task)

    stats = common.compile_stats(step_fn, state, frozen, batch)
    compiled = common.with_frozen(stats.pop("compiled"), frozen)  # the executable we timed the compile of
    print(f"{model} ({config.variant or 'paper'}, {config.data.resolution} px, batch {global_batch}, "
          f"width x{width_multiplier:g}): compiled in "
          f"{stats['compile_s']:.1f} s, {(stats['flops'] or 0) / 1e9:.2f} GFLOP/step", flush=True)
    views = 1 if model == "emixer" or model.startswith("cxr_irgen") else len(task.transform().views)
    row = {
        "model": model,
        "variant": config.variant or "paper",
        "resolution": config.data.resolution,
        "batch": global_batch,
        "width_multiplier": width_multiplier,
        "views": views,
        "devices": mesh.devices.size,
        "params_M": n_params / 1e6,
        "init_s": init_s,
        **common.compile_columns(stats),
    }
    if args.compile_only:
        return row

    metrics, _, timing = common.time_train_step(
        compiled, state, batch, warmup=args.warmup, repeats=args.repeats, steps=args.steps,
        flops=stats["flops"], peak_flops=args.peak_flops)
    step_s = timing["step_ms_median"] / 1e3
    row.update({
        **timing,
        "examples_per_s": global_batch / step_s,
        "images_per_s": global_batch * views / step_s,
        "final_loss": float(metrics["loss"] if "loss" in metrics else metrics["g_loss"]),
    })
    return row


def sweep_row(model: str, args, batch_size: int | None, width_multiplier: float) -> dict:
    """One sweep point; a setting the model cannot take (or the machine cannot hold) is a row saying so."""
    try:
        return {**bench_model(model, args, batch_size, width_multiplier), "status": "ok"}
    except Exception as e:  # noqa: BLE001 - one failed point must not end the sweep
        print(f"{model} batch {batch_size} width x{width_multiplier:g} failed: {e}", file=sys.stderr, flush=True)
        return {"model": model, "batch": batch_size, "width_multiplier": width_multiplier,
                "status": f"failed: {type(e).__name__}: {str(e)[:200]}"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="classifier,vcn", help=f"comma-separated subset of {', '.join(MODELS)}")
    p.add_argument("--variant", default="cpu", help="config variant: '' (paper), 'cpu' or 'smoke'")
    p.add_argument("--resolution", type=int, default=None, help="override data.resolution")
    p.add_argument("--batch_size", type=int, default=None, help="override train.batch_size (global)")
    p.add_argument("--batch_sizes", default="", help="scaling sweep: comma-separated global batch sizes")
    p.add_argument("--width_multipliers", default="",
                   help="scaling sweep: comma-separated multipliers of each model's widths (WIDTH_KEYS)")
    p.add_argument("--steps", type=int, default=5, help="steps per timed repeat (dispatched back to back)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the median and min are reported")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    p.add_argument("--peak_flops", type=float, default=150e9, help="declared peak FLOP/s for utilisation")
    p.add_argument("--compile_only", action="store_true",
                   help="init, compile and cost analysis only (no steps run): for big variants on small machines")
    p.add_argument("--calibrate", action="store_true", help="also measure a 1024^3 fp32 matmul's FLOP/s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke variants, 1 warm-up, 2 x 2 steps (tests)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/train_step[_<variant>].json)")
    args = p.parse_args(argv)
    if args.quick:
        args.variant, args.steps, args.repeats, args.warmup = "smoke", 2, 2, 1
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    batches = common.parse_csv_ints(args.batch_sizes) or [None]
    widths = [float(w) for w in common.parse_csv(args.width_multipliers)] or [1.0]
    sweep = len(batches) * len(widths) > 1
    rows = [sweep_row(m, args, b, w) if sweep else bench_model(m, args)
            for m in common.parse_csv(args.models) for w in widths for b in batches]
    extra = {"peak_flops": args.peak_flops}
    if args.calibrate:
        extra["matmul_fp32_flops_s"] = calibrate_matmul()
    columns = ["model", "variant", "resolution", "batch"] + (["width_multiplier"] if sweep else []) + ["params_M", "compile_s", "step_ms_median", "steps_per_s",
               "images_per_s", "gflops_per_step", "achieved_gflops_s", "utilisation", "footprint_mb"] + (["status"] if sweep else [])
    common.print_table(rows, columns, title=f"train_step (peak {args.peak_flops:.3g} FLOP/s)")
    if "matmul_fp32_flops_s" in extra:
        print(f"\n1024^3 fp32 matmul: {extra['matmul_fp32_flops_s'] / 1e9:.1f} GFLOP/s")
    name = ("train_step_sweep" if sweep else "train_step") + (f"_{args.variant}" if args.variant else "_paper")
    path = common.write_result(name, rows, vars(args), out=args.out, extra=extra)
    print(f"\nwrote {os.path.relpath(path)}")
    return path


if __name__ == "__main__":
    main()
