"""One runner over every model's benchmark: one table of compile time, FLOPs, steps/s, images/s,
utilisation against a declared peak and memory, for every model and training phase.

  python benchmarks/run.py                      # 'cpu' variants of every model on this machine
  python benchmarks/run.py --quick              # smoke variants, a step or two each (the tests)
  python benchmarks/run.py --variant='' --compile_only --peak_flops=989e12   # paper sizes on an H100
  python benchmarks/run.py --models=pggan,xraygan --out=results.json
  python benchmarks/run.py --models=classifier,emixer,cxr_irgen --width_multipliers=0.5,1,2 --batch_sizes=8,32
                                                # scaling sweep (the train_step.py models)

Each model's own script (`train_step.py` for the classifier, VCN, EMIXER and CXR-IRGen's denoiser (U-ViT
and U-Net), `xraygan.py`, `pggan.py`) runs in
its own process, so one model's compilation cache and memory do not colour another's numbers; the
runner passes the shared options through, reads the JSON each writes, and puts one row per measured
phase into a combined JSON (`benchmarks/results/all_<variant>.json`) and a markdown table
(`.md` beside it). A script that fails is reported in the table and the JSON (its stderr tail),
and the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

try:
    from benchmarks import common
except ImportError:  # pragma: no cover - run as a script
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import common  # type: ignore

HERE = os.path.dirname(os.path.abspath(__file__))
# model -> (script, extra arguments): the classifier and the VCN share train_step.py.
SCRIPTS = {
    "classifier": ("train_step.py", ["--models=classifier"]),
    "vcn": ("train_step.py", ["--models=vcn"]),
    "xraygan": ("xraygan.py", []),
    "pggan": ("pggan.py", []),
    "emixer": ("train_step.py", ["--models=emixer"]),
    "cxr_irgen": ("train_step.py", ["--models=cxr_irgen,cxr_irgen_unet"]),
}
SWEEPABLE = ("classifier", "vcn", "emixer", "cxr_irgen")  # the models benchmarked by train_step.py
COLUMNS = ["model", "phase", "resolution", "batch", "width_multiplier", "compile_s", "gflops_per_step", "step_ms_median", "steps_per_s",
           "images_per_s", "achieved_gflops_s", "utilisation", "footprint_mb", "status"]


def _phase_rows(model: str, payload: dict) -> list[dict]:
    """The common columns from one script's JSON (each names a few of them differently)."""
    rows = []
    for r in payload.get("results", []):
        rows.append({
            "model": model,
            "phase": r.get("label") or r.get("model") or "",
            "resolution": r.get("resolution"),
            "batch": r.get("batch"),
            "width_multiplier": r.get("width_multiplier"),
            "compile_s": r.get("compile_total_s", r.get("compile_s")),
            "gflops_per_step": r.get("gflops_per_step"),
            "step_ms_median": r.get("step_ms_median"),
            "steps_per_s": r.get("steps_per_s"),
            "images_per_s": r.get("images_per_s"),
            "achieved_gflops_s": r.get("achieved_gflops_s"),
            "utilisation": r.get("utilisation"),
            "footprint_mb": r.get("footprint_mb"),
            "status": r.get("status", "ok"),
        })
    return rows


def run_model(model: str, args, out_dir: str) -> tuple[list[dict], dict]:
    """Runs one model's script in a subprocess; (table rows, its full JSON or the failure)."""
    script, extra = SCRIPTS[model]
    out = os.path.join(out_dir, f"{model}.json")
    cmd = [sys.executable, os.path.join(HERE, script), f"--out={out}", f"--peak_flops={args.peak_flops}", *extra]
    if args.quick:
        cmd.append("--quick")
    else:
        cmd.append(f"--variant={args.variant}")
    if args.compile_only:
        cmd.append("--compile_only")
    if model in SWEEPABLE:
        cmd += [f"--width_multipliers={args.width_multipliers}", f"--batch_sizes={args.batch_sizes}"]
    print(f"== {model}: {' '.join(os.path.basename(c) if c.endswith('.py') else c for c in cmd[1:])}", flush=True)
    proc = subprocess.run(cmd, cwd=os.path.dirname(HERE), capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0 or not os.path.isfile(out):
        tail = (proc.stderr or proc.stdout)[-2000:]
        print(f"   {model} failed (exit {proc.returncode}):\n{tail}", flush=True)
        return [{"model": model, "status": f"failed (exit {proc.returncode})"}], {"error": tail,
                                                                                  "exit": proc.returncode}
    with open(out) as f:
        payload = json.load(f)
    return _phase_rows(model, payload), payload


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(SCRIPTS), help=f"comma-separated subset of {', '.join(SCRIPTS)}")
    p.add_argument("--variant", default="cpu", help="config variant for every model: '' (paper), 'cpu'")
    p.add_argument("--quick", action="store_true", help="each script's --quick mode (smoke variants; the tests)")
    p.add_argument("--compile_only", action="store_true", help="compile time, FLOPs and memory only")
    p.add_argument("--peak_flops", type=float, default=150e9,
                   help="declared peak FLOP/s of the device for utilisation (150e9: this 2-core CPU's fp32 matmul)")
    p.add_argument("--width_multipliers", default="",
                   help=f"scaling sweep over width multipliers (models {', '.join(SWEEPABLE)})")
    p.add_argument("--batch_sizes", default="", help="scaling sweep over global batch sizes (the same models)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per model script")
    p.add_argument("--out", default=None, help="combined JSON path (default benchmarks/results/all_<variant>.json)")
    args = p.parse_args(argv)
    if swept(args) and not any(m in SWEEPABLE for m in common.parse_csv(args.models)):
        p.error(f"--width_multipliers/--batch_sizes apply to {', '.join(SWEEPABLE)} only")
    unknown = [m for m in common.parse_csv(args.models) if m not in SCRIPTS]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; valid: {', '.join(SCRIPTS)}")
    return args


def swept(args) -> bool:
    return bool(args.width_multipliers or args.batch_sizes)


def main(argv=None) -> str:
    args = parse_args(argv)
    rows, details = [], {}
    with tempfile.TemporaryDirectory(prefix="bench_run_") as tmp:
        for model in common.parse_csv(args.models):
            model_rows, details[model] = run_model(model, args, tmp)
            rows.extend(model_rows)
    label = ("quick" if args.quick else (args.variant or "paper")) + ("_sweep" if swept(args) else "")
    common.print_table(rows, COLUMNS, title=f"all models, {label} (peak {args.peak_flops:.3g} FLOP/s)")
    out = args.out or os.path.join(common.RESULTS_DIR, f"all_{label}.json")
    path = common.write_result(f"all_{label}", rows, vars(args), out=out, extra={"per_model": details})
    with open(os.path.splitext(path)[0] + ".md", "w") as f:
        f.write(common.markdown_table(rows, COLUMNS) + "\n")
    print(f"\nwrote {os.path.relpath(path)} and its .md table")
    failed = [r["model"] for r in rows if r.get("status", "ok") != "ok"]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return path


if __name__ == "__main__":
    main()
