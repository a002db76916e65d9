"""Size of every model's lowered programs at a config's sizes, without allocating any weights.

  python benchmarks/lowering.py --variant='' --out=lowering_paper.json     # the paper sizes
  python benchmarks/lowering.py --variant=smoke --models=xraygan,cxr_irgen

Each model's training step (every phase: XRayGAN's stages, PGGAN's levels, EMIXER's F warm-up and
joint step) and the sampling functions of XRayGAN, PGGAN and CXR-IRGen are jitted as the loop and
the samplers jit them and lowered over shape structs (`jax.ShapeDtypeStruct`) of the state, the
frozen networks and one batch: nothing is initialised, trained or compiled. Per entry:
`hlo_bytes` (the StableHLO text), `largest_constant_bytes` (the biggest literal in it),
`frozen_param_bytes` (the frozen networks the function reads as an argument), `state_bytes` and
`lower_s`. A function that closed over weights instead of taking them as an argument would carry
them as constants: `hlo_bytes` would grow with `frozen_param_bytes` (at paper size, by gigabytes).

Batch shapes come from one batch of the model's own loader (phantom studies rendered once), so the
lowered program is the one training runs. Tokenizers are trained in a temporary directory.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import tempfile
import time

import numpy as np

try:  # run as `python benchmarks/lowering.py` or imported as `benchmarks.lowering`
    from benchmarks import common
except ImportError:  # pragma: no cover
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # type: ignore

MODELS = ("classifier", "vcn", "xraygan", "pggan", "emixer", "cxr_irgen", "cxr_irgen_unet")
HLO_LIMIT_BYTES = 50 * 2**20  # issue 20: every entry's program stays below this at paper size
# A hexadecimal literal in the StableHLO text: `dense<"0x0000803F...">` (2 characters a byte).
_HEX_CONSTANT = re.compile(r'dense<"0x([0-9A-Fa-f]*)">')


def make_task(model: str, variant: str, workdir: str, configure=None):
    """(task, config) of `model` at `variant` with in-process data loading; `configure(config)`
    may change the config first (the tests widen the frozen networks with it)."""
    from xray_gen import main

    config_name = "cxr_irgen" if model.startswith("cxr_irgen") else model
    config = importlib.import_module(f"xray_gen.configs.{config_name}").get_config(variant)
    config.data.worker_count = 0
    if model.startswith("cxr_irgen"):
        config.cxr_irgen.backbone = "unet" if model.endswith("_unet") else "uvit"
    if configure is not None:
        configure(config)
    return main.make_task(config, workdir), config


def train_phases(task) -> list[int]:
    """The phases a run of the task trains in (in order), from its phase schedule."""
    if hasattr(task, "phases"):
        return list(range(len(task.phases)))
    if hasattr(task, "f_pretrain_steps"):
        return [0, 1] if task.f_pretrain_steps else [1]
    return [0]


def structs(tree):
    import jax

    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def tree_bytes(tree) -> int:
    import jax

    return int(sum(np.prod(x.shape, dtype=np.int64) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def lowered_size(fn, *args) -> dict:
    """hlo_bytes, largest_constant_bytes and lower_s of `jax.jit(fn)` lowered over `args` (structs)."""
    import jax

    t0 = time.perf_counter()
    text = jax.jit(fn).lower(*args).as_text()
    constants = [len(m) // 2 for m in _HEX_CONSTANT.findall(text)]
    return {"hlo_bytes": len(text.encode("utf-8")), "largest_constant_bytes": max(constants, default=0),
            "lower_s": time.perf_counter() - t0}


def entries(model: str, task, config) -> list[tuple[str, object, tuple, object]]:
    """(label, pure function, argument structs, frozen structs) of every program to lower."""
    import jax

    key = jax.random.PRNGKey(0)
    state = jax.eval_shape(task.init, key)
    out = []
    for phase in train_phases(task):
        frozen = jax.eval_shape(lambda k, p=phase: task.random_frozen(p, k), key)
        loader = task.phase_loader(phase) if hasattr(task, "phase_loader") else task.train_loader()
        batch = structs(next(iter(loader)))
        out.append((f"train_phase_{phase}", task.phase_step(phase), (state, frozen, batch), frozen))
    if model == "xraygan":
        last = config.xraygan.num_stages - 1
        one = {k: jax.ShapeDtypeStruct((1,) + v.shape[1:], v.dtype) for k, v in batch.items()
               if k.endswith(("_ids", "_mask")) and k.split("_")[0] in ("findings", "impression")}
        generate = lambda g_params, b, rng: task.generate_stages(g_params, b, rng, last)
        out.append(("sample", generate, (state.g_params, one, structs(key)), {}))
    elif model == "pggan":
        z = jax.ShapeDtypeStruct((64, config.pggan.latent_dim), np.float32)  # sample_images' batch
        out.append(("sample", lambda g, z: task.generate(g, z), (state.g_ema, z), {}))
    elif model.startswith("cxr_irgen"):
        from xray_gen.models.cxr_irgen import generate

        frozen = jax.eval_shape(lambda k: task.random_frozen(0, k), key)
        n, r = int(config.sample.batch_size), config.data.resolution
        rows = {k: jax.ShapeDtypeStruct((n,) + v.shape[1:], v.dtype) for k, v in batch.items()
                if k in ("prompt_ids", "prompt_mask", "reference_flag")}
        rows["reference"] = jax.ShapeDtypeStruct((n, r, r, 1), np.uint8)
        rows["seed"] = jax.ShapeDtypeStruct((n,), np.uint32)
        out.append(("sample", generate.pair_fn(task), (state, frozen, rows), frozen))
    return out


def measure(model: str, variant: str, workdir: str, configure=None) -> list[dict]:
    task, config = make_task(model, variant, workdir, configure)
    rows = []
    for label, fn, args, frozen in entries(model, task, config):
        row = {"model": model, "variant": variant or "paper", "function": label, **lowered_size(fn, *args),
               "frozen_param_bytes": tree_bytes(frozen), "state_bytes": tree_bytes(args[0])}
        row["hlo_mb"] = row["hlo_bytes"] / 2**20
        row["frozen_mb"] = row["frozen_param_bytes"] / 2**20
        print(f"{model} {label}: {row['hlo_mb']:.2f} MB of HLO, frozen {row['frozen_mb']:.1f} MB, "
              f"largest constant {row['largest_constant_bytes']} B, lowered in {row['lower_s']:.1f} s", flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="", help="config variant ('' = the paper's)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/lowering_<variant>.json)")
    args = p.parse_args(argv)
    rows = []
    for model in common.parse_csv(args.models):
        if model not in MODELS:
            raise SystemExit(f"unknown model {model!r}; valid: {', '.join(MODELS)}")
        with tempfile.TemporaryDirectory(prefix=f"lowering_{model}_") as workdir:
            rows.extend(measure(model, args.variant, workdir))
    columns = ["model", "function", "hlo_mb", "largest_constant_bytes", "frozen_mb", "lower_s"]
    common.print_table(rows, columns, title=f"lowered programs ({args.variant or 'paper'})")
    over = [f"{r['model']} {r['function']}" for r in rows if r["hlo_bytes"] >= HLO_LIMIT_BYTES]
    if over:
        print(f"over {HLO_LIMIT_BYTES / 2**20:.0f} MB: {', '.join(over)}", flush=True)
    return common.write_result(f"lowering_{args.variant or 'paper'}", rows, vars(args), args.out)


if __name__ == "__main__":
    main()
