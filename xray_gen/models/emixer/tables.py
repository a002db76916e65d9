"""EMIXER's limited-label table (paper Table 3) from evaluated runs.

Each run is a workdir trained with a label fraction (`configs/emixer.py:cpu,labels=0.3` ...) and
evaluated with `--mode=evaluate` (eval/emixer_<split>.json). Runs evaluated under different protocols
(split, count, resolution, classifier weights) are flagged: their numbers do not compare.

    python -m xray_gen.models.emixer.tables --workdirs=W100,W30 --out=DIR
"""

from __future__ import annotations

import glob
import json
import math
import os

from xray_gen.files import atomic_open

COLUMNS = (  # (path in the evaluation's metrics, header, format)
    ("fidelity.frontal.fid", "FID ↓", "{:.2f}"),
    ("clinical.auroc_generated.macro", "Image AUROC ↑", "{:.3f}"),
    ("reports.vs_conditioning_labels.micro.f1", "Report F1 ↑", "{:.3f}"),
    ("pairs.image_report_agreement.generated.micro.f1", "Image-report F1 ↑", "{:.3f}"),
    ("reports.vs_reference.bleu_4", "BLEU-4 ↑", "{:.3f}"),
    ("reports.vs_reference.cider", "CIDEr ↑", "{:.3f}"),
    ("report_f_on_real.bleu_4", "BLEU-4 (F on real) ↑", "{:.3f}"),
)
PROTOCOL_FACTS = ("split", "num_generated", "resolution")


def _get(metrics: dict, path: str):
    for key in path.split("."):
        metrics = metrics.get(key) if isinstance(metrics, dict) else None
    return metrics


def compare_label_fractions(workdirs, split: str = "test", out_dir: str | None = None) -> dict:
    """The limited-label table from evaluated runs (each `eval/emixer_<split>.json`), sorted by
    label fraction: {"rows", "warnings", "markdown"}; with `out_dir`, also written there as
    label_fractions.json / .md. Runs evaluated under different protocols (split, count,
    resolution, classifier weights) are flagged: their numbers are not directly comparable."""
    from xray_gen.evaluation.protocol import read_result_json

    rows, warnings = [], []
    for w in workdirs:
        path = os.path.join(w, "eval", f"emixer_{split}.json")
        if not os.path.isfile(path):
            have = sorted(os.path.basename(p) for p in glob.glob(os.path.join(w, "eval", "emixer_*.json")))
            raise FileNotFoundError(f"{w}: no {path} (has: {', '.join(have) or 'no EMIXER evaluation'}); "
                                    "run --mode=evaluate on it first")
        record = read_result_json(path)
        m = record["metrics"]
        if "label_fraction" not in m:
            raise ValueError(f"{path}: not an EMIXER evaluation (no metrics.label_fraction)")
        rows.append({"workdir": w, "label_fraction": m["label_fraction"],
                     "values": {k: _get(m, k) for k, _, _ in COLUMNS},
                     "protocol": {**{k: m.get(k) for k in PROTOCOL_FACTS},
                                  "weights_checksum": record["protocol"].get("weights_checksum")}})
    rows.sort(key=lambda r: r["label_fraction"])
    for fact in (*PROTOCOL_FACTS, "weights_checksum"):
        values = {r["workdir"]: r["protocol"][fact] for r in rows}
        if len({json.dumps(v) for v in values.values()}) > 1:
            warnings.append(f"protocol differs in {fact}: " + ", ".join(f"{k}: {v}" for k, v in values.items()))
    fmt = lambda v, f: f.format(v) if isinstance(v, (int, float)) and math.isfinite(v) else "–"
    lines = ["| Labels | " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|--:|" + "--:|" * len(COLUMNS)]
    for r in rows:
        cells = [f"{r['label_fraction']:.0%}"] + [fmt(r["values"][k], f) for k, _, f in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"> **Warning:** {w}" for w in warnings]
    report = {"split": split, "rows": rows, "warnings": warnings, "markdown": "\n".join(lines) + "\n"}
    if out_dir:
        with atomic_open(os.path.join(out_dir, "label_fractions.json")) as f:
            json.dump(report, f, indent=2, allow_nan=False)
        with atomic_open(os.path.join(out_dir, "label_fractions.md")) as f:
            f.write(report["markdown"])
    return report


def main(argv=None) -> int:
    """`python -m xray_gen.models.emixer.tables --workdirs=W100,W30 --out=DIR`: the Table 3 comparison."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m xray_gen.models.emixer.tables",
                                     description="EMIXER limited-label table (paper Table 3) from evaluated workdirs: "
                                                 "writes OUT/label_fractions.json and .md and prints the markdown.")
    parser.add_argument("--workdirs", required=True, help="comma-separated workdirs, each run with --mode=evaluate")
    parser.add_argument("--split", default="test", help="which eval/emixer_<split>.json to read")
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args(argv)
    try:
        report = compare_label_fractions([w for w in args.workdirs.split(",") if w.strip()], args.split, args.out)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report["markdown"], end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
