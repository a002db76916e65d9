"""XRayGAN ablation table (paper Table 2) from evaluated workdirs.

Each run is a workdir trained with a variant of ``configs/xraygan.py`` ('' paper, 'official',
'wo_vcn', 'wo_mscgan', 'wo_hae', ...) and evaluated with ``--mode=evaluate``, which writes
``<workdir>/eval/xraygan_<split>.json``. This module reads those files plus each workdir's
``config.json``, labels every run from its config (``xraygan.use_vcn``/``vc_weight`` -> VCN,
``xraygan.generator`` cascade|oneshot -> MSCGAN, ``xraygan.encoder`` hae|flat -> HAE) as
'XRayGAN', 'w/o VCN', 'w/o MSCGAN', 'w/o HAE' or a combination ('w/o VCN + HAE'), adds a 'Real'
reference row (VC and clinical AUROC of the real images, from the first run that has them), and
writes the table as JSON and markdown.

Numbers are only comparable when the runs were evaluated under the same protocol: split,
number of reports, resolution, feature extractor and its weights checksum, reference data. A
difference does not fail: it is listed in the JSON (``comparable``, ``mismatches``) and as a
warning line under the markdown table.

CLI::

    python -m xray_gen.models.xraygan.tables --workdirs=DIR1,DIR2,... [--names=a,b,...] \\
        [--split=validation] --out=DIR

writes ``DIR/ablation.json`` and ``DIR/ablation.md`` and prints the markdown. Without
``--split`` each workdir must hold exactly one ``eval/xraygan_*.json``.

Python::

    from xray_gen.models.xraygan import tables
    report = tables.build_report(["runs/full", "runs/wo_vcn"], split="validation")
    tables.write_report(report, "runs/ablation")   # ablation.json + ablation.md
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import math
import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from xray_gen.evaluation.protocol import SCHEMA as RESULT_SCHEMA
from xray_gen.files import atomic_open

__all__ = [
    "AblationError", "SCHEMA", "COLUMNS", "find_eval_json", "ablation_label", "load_run", "load_rows",
    "check_protocols", "build_report", "to_markdown", "write_json", "write_markdown", "write_report",
    "main",
]

SCHEMA = "xray_gen.models.xraygan.tables.v1"
DASH = "–"
PREFIX = "xraygan_"

# (path in the evaluation's metrics, markdown header, format). Arrows: which direction is better.
COLUMNS: Tuple[Tuple[str, str, str], ...] = (
    ("fidelity.frontal.fid", "FID frontal ↓", "{:.2f}"),
    ("fidelity.lateral.fid", "FID lateral ↓", "{:.2f}"),
    ("matched.frontal.ssim", "SSIM frontal ↑", "{:.3f}"),
    ("matched.lateral.ssim", "SSIM lateral ↑", "{:.3f}"),
    ("pairs.view_consistency.generated", "VC ↑", "{:.3f}"),
    ("pairs.view_consistency.mismatched_generated", "VC mismatched ↓", "{:.3f}"),
    ("clinical.auroc_generated.macro", "Clinical AUROC ↑", "{:.3f}"),
)
# The 'Real' row: the same columns filled from the real images' metrics.
REAL_COLUMNS = {"pairs.view_consistency.generated": "pairs.view_consistency.real",
                "clinical.auroc_generated.macro": "clinical.auroc_reference.macro"}

# Protocol facts compared across runs: name -> (section of the eval JSON, key).
PROTOCOL_KEYS: Tuple[Tuple[str, str, str], ...] = (
    ("split", "metrics", "split"),
    ("num_reports", "metrics", "num_reports"),
    ("resolution", "metrics", "resolution"),
    ("extractor", "protocol", "extractor"),
    ("weights_checksum", "protocol", "weights_checksum"),
    ("reference", "protocol", "reference"),
)

# Real-image metrics that depend on the run's own VCN / classifier: warn when they differ.
REAL_TOLERANCE = 1e-6


class AblationError(ValueError):
    """A workdir cannot be used in the table (no or malformed evaluation JSON, bad arguments)."""


# ---------------------------------------------------------------------------------------------
# Reading one run


def find_eval_json(workdir: str, split: Optional[str] = None) -> str:
    """``<workdir>/eval/xraygan_<split>.json``; without `split`, the single such file there."""
    if not os.path.isdir(workdir):
        raise AblationError(f"{workdir}: workdir does not exist")
    eval_dir = os.path.join(workdir, "eval")
    found = sorted(glob.glob(os.path.join(eval_dir, f"{PREFIX}*.json")))
    splits = [os.path.basename(p)[len(PREFIX):-len(".json")] for p in found]
    hint = "run `python -m xray_gen.main --config=configs/xraygan.py[:variant] --workdir=DIR --mode=evaluate`"
    if split is not None:
        path = os.path.join(eval_dir, f"{PREFIX}{split}.json")
        if not os.path.isfile(path):
            have = f"it has split(s) {', '.join(splits)}" if splits else "it has no eval/xraygan_*.json"
            raise AblationError(f"{workdir}: no evaluation JSON for split {split!r} ({path}); {have}; {hint}")
        return path
    if not found:
        raise AblationError(f"{workdir}: no evaluation JSON ({os.path.join(eval_dir, PREFIX + '*.json')}); {hint}")
    if len(found) > 1:
        raise AblationError(f"{workdir}: several evaluation JSONs (splits {', '.join(splits)}); choose one with split=")
    return found[0]


def _read_json(workdir: str, path: str, what: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise AblationError(f"{workdir}: malformed {what} {path}: {e}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise AblationError(f"{workdir}: cannot read {what} {path}: {e}") from e


def _value(workdir: str, path: str, metrics: Mapping[str, Any], key: str) -> Optional[float]:
    """The metric at dotted `key`: a finite number, or None (absent, null for NaN, or a metric the
    evaluator recorded as "skipped: ..." / "error: ..."); anything else is a malformed file."""
    value: Any = metrics
    walked = []
    for part in key.split("."):
        if not isinstance(value, Mapping):
            raise AblationError(f"{workdir}: malformed evaluation JSON {path}: metrics.{'.'.join(walked)} is "
                                f"{type(value).__name__} {value!r}, expected an object")
        walked.append(part)
        value = value.get(part)
        if value is None:
            return None
    if isinstance(value, str) and value.startswith(("skipped: ", "error: ")):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AblationError(f"{workdir}: malformed evaluation JSON {path}: metrics.{key} is "
                            f"{type(value).__name__} {value!r}, expected a number or null")
    value = float(value)
    return value if math.isfinite(value) else None


def _column_values(workdir: str, path: str, metrics: Mapping[str, Any]) -> Dict[str, Any]:
    """{column path: value} of the table's columns and of the 'Real' row's sources."""
    keys = [k for k, _, _ in COLUMNS] + list(REAL_COLUMNS.values())
    return {k: _value(workdir, path, metrics, k) for k in keys}


def read_eval_json(workdir: str, path: str) -> Dict[str, Any]:
    """The evaluation record at `path`, checked enough that the table can be built from it."""
    record = _read_json(workdir, path, "evaluation JSON")
    if not isinstance(record, dict):
        raise AblationError(f"{workdir}: malformed evaluation JSON {path}: top level is "
                            f"{type(record).__name__}, expected an object")
    if record.get("schema") != RESULT_SCHEMA:
        raise AblationError(f"{workdir}: malformed evaluation JSON {path}: schema {record.get('schema')!r}, "
                            f"expected {RESULT_SCHEMA!r}")
    for section in ("metrics", "protocol"):
        if not isinstance(record.get(section), dict):
            raise AblationError(f"{workdir}: malformed evaluation JSON {path}: {section!r} missing or not an object")
    return record


def ablation_label(config: Optional[Mapping[str, Any]]) -> Tuple[str, Dict[str, Any]]:
    """('XRayGAN' | 'w/o VCN' | 'w/o MSCGAN' | 'w/o HAE' | 'w/o VCN + HAE' | ..., the facts used).

    A VC loss other than the paper's (weight 1, form 'paper') is noted: 'XRayGAN (VC official ×0.1)'.
    """
    x = (config or {}).get("xraygan")
    if not isinstance(x, Mapping):
        return "XRayGAN (config unknown)", {}
    facts = {k: x.get(k) for k in ("use_vcn", "vc_weight", "vc_form", "generator", "encoder")}
    weight = facts["vc_weight"]
    use_vcn = facts["use_vcn"] is not False and not (isinstance(weight, (int, float)) and weight == 0)
    removed = []
    if not use_vcn:
        removed.append("VCN")
    if facts["generator"] == "oneshot":
        removed.append("MSCGAN")
    if facts["encoder"] == "flat":
        removed.append("HAE")
    label = "w/o " + " + ".join(removed) if removed else "XRayGAN"
    form = facts["vc_form"] or "paper"
    if use_vcn and (form != "paper" or (isinstance(weight, (int, float)) and weight != 1.0)):
        label += f" (VC {form} ×{weight:g})" if isinstance(weight, (int, float)) else f" (VC {form})"
    unknown = [k for k in ("generator", "encoder") if facts[k] not in (None, "cascade", "oneshot", "hae", "flat")]
    if unknown:
        label += " (" + ", ".join(f"{k}={facts[k]}" for k in unknown) + ")"
    return label, facts


def load_run(workdir: str, name: Optional[str] = None, split: Optional[str] = None) -> Dict[str, Any]:
    """One table row: the run's label (from config.json), metrics (flattened) and protocol facts."""
    path = find_eval_json(workdir, split)
    record = read_eval_json(workdir, path)
    warnings: List[str] = []
    config_path = os.path.join(workdir, "config.json")
    config = None
    if os.path.isfile(config_path):
        config = _read_json(workdir, config_path, "config.json")
        if not isinstance(config, dict):
            raise AblationError(f"{workdir}: malformed config.json {config_path}: expected an object")
        if config.get("model") not in (None, "xraygan"):
            warnings.append(f"{workdir}: config.json is for model {config.get('model')!r}, not xraygan")
    else:
        warnings.append(f"{workdir}: no config.json; the run's ablation cannot be read from its config")
    label, facts = ablation_label(config)
    metrics = _column_values(workdir, path, record["metrics"])
    protocol = {}
    for key, section, field in PROTOCOL_KEYS:
        value = record[section].get(field)
        protocol[key] = list(value) if isinstance(value, tuple) else value
    return {
        "name": name,
        "label": label,
        "workdir": workdir,
        "eval_json": path,
        "timestamp": record.get("timestamp"),
        "variant": (config or {}).get("variant"),
        "ablation": facts,
        "metrics": metrics,
        "protocol": protocol,
        "warnings": warnings,
    }


def load_rows(workdirs: Sequence[str], names: Optional[Sequence[str]] = None,
              split: Optional[str] = None) -> List[Dict[str, Any]]:
    """Rows for `workdirs`, in order. Display names default to the label, disambiguated with the
    workdir's basename when two runs have the same label."""
    workdirs = [w for w in workdirs if w]
    if not workdirs:
        raise AblationError("no workdirs given")
    if names is not None and len(names) != len(workdirs):
        raise AblationError(f"{len(names)} names for {len(workdirs)} workdirs: "
                            f"names={list(names)}, workdirs={list(workdirs)}")
    rows = [load_run(w, names[i] if names is not None else None, split) for i, w in enumerate(workdirs)]
    labels = [r["label"] for r in rows]
    for r in rows:
        if r["name"] is None:
            r["name"] = r["label"]
            if labels.count(r["label"]) > 1:
                r["name"] = f"{r['label']} ({os.path.basename(os.path.normpath(r['workdir']))})"
    return rows


# ---------------------------------------------------------------------------------------------
# Comparing and summarising


def check_protocols(rows: Sequence[Mapping[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """{fact: {run name: value}} for every protocol fact that differs between runs (runs that do
    not record a fact, e.g. an older file without weights_checksum, are left out of its check)."""
    mismatches: Dict[str, Dict[str, Any]] = {}
    for key, _, _ in PROTOCOL_KEYS:
        values = {r["name"]: r["protocol"].get(key) for r in rows if r["protocol"].get(key) is not None}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            mismatches[key] = values
    return mismatches


def _short(value: Any) -> str:
    """Checksums shortened to 12 hex digits; everything else as is."""
    s = str(value)
    return s[:12] + "…" if len(s) >= 40 and all(ch in "0123456789abcdef" for ch in s.lower()) else s


def build_report(workdirs: Sequence[str], names: Optional[Sequence[str]] = None,
                 split: Optional[str] = None) -> Dict[str, Any]:
    """Rows, the 'Real' reference row, the protocol check and warnings, as one JSON-able dict."""
    rows = load_rows(workdirs, names, split)
    mismatches = check_protocols(rows)
    warnings = [w for r in rows for w in r["warnings"]]
    for key, values in mismatches.items():
        warnings.append(f"protocol differs in {key}: " + ", ".join(f"{n}: {_short(v)}" for n, v in values.items()))
    if "weights_checksum" in mismatches:
        warnings.append("different feature-extractor weights: FID, KID and clinical AUROC are not directly "
                        "comparable between those runs")

    real: Dict[str, Any] = {"name": "Real", "metrics": {}, "source": {}}
    for col, real_key in REAL_COLUMNS.items():
        have = [(r["name"], r["metrics"].get(real_key)) for r in rows if r["metrics"].get(real_key) is not None]
        if not have:
            continue
        real["metrics"][col] = have[0][1]
        real["source"][col] = have[0][0]
        if max(v for _, v in have) - min(v for _, v in have) > REAL_TOLERANCE:
            warnings.append(f"{real_key} differs between runs (own VCN/classifier per run): "
                            + ", ".join(f"{n}: {v:.3f}" for n, v in have) + f"; the Real row shows {have[0][0]}'s")

    first = rows[0]["protocol"]
    return {
        "schema": SCHEMA,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "split": first.get("split") if "split" not in mismatches else None,
        "num_reports": first.get("num_reports") if "num_reports" not in mismatches else None,
        "resolution": first.get("resolution") if "resolution" not in mismatches else None,
        "comparable": not mismatches,
        "mismatches": mismatches,
        "warnings": warnings,
        "columns": [{"key": k, "header": h} for k, h, _ in COLUMNS],
        "rows": rows,
        "real": real,
    }


# ---------------------------------------------------------------------------------------------
# Writing


def _fmt(value: Any, fmt: str) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return DASH
    return fmt.format(value)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(report: Mapping[str, Any]) -> str:
    """The table in the paper's shape (runs, then 'Real'), a warning line per protocol problem,
    and the runs' workdirs."""
    rows = report["rows"]
    with_config = any(r["name"] != r["label"] for r in rows)
    heads = ["Model"] + (["Config"] if with_config else []) + [h for _, h, _ in COLUMNS]
    setting = []
    if report.get("split") is not None:
        setting.append(f"split {report['split']}")
    if report.get("num_reports") is not None:
        setting.append(f"{report['num_reports']} reports")
    if isinstance(report.get("resolution"), int):
        setting.append(f"{report['resolution']} px")
    lines = ["## XRayGAN ablation" + (f" ({', '.join(setting)})" if setting else ""), ""]
    lines.append("| " + " | ".join(heads) + " |")
    lines.append("|" + "|".join([":--"] * (2 if with_config else 1) + ["--:"] * len(COLUMNS)) + "|")
    for r in rows:
        cells = [_cell(r["name"])] + ([_cell(r["label"])] if with_config else [])
        cells += [_fmt(r["metrics"].get(k), f) for k, _, f in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    real = report.get("real") or {}
    if real.get("metrics"):
        cells = ["Real"] + ([""] if with_config else [])
        cells += [_fmt(real["metrics"].get(k), f) for k, _, f in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if report.get("comparable", True):
        lines.append("All runs were evaluated under the same protocol (split, reports, resolution, extractor, "
                     "weights checksum, reference).")
    for w in report.get("warnings", ()):
        lines.append(f"> **Warning:** {_cell(w)}  ")
    lines += ["", "VC: mean VCN probability that the generated frontal and lateral images belong together; "
              "VC mismatched: the generated frontal with another report's generated lateral. "
              "Clinical AUROC: the evaluation classifier's macro AUROC for the report's labels on frontal "
              "images. Real: the real image pairs of the same reports. " + DASH + ": not available.", ""]
    for r in rows:
        variant = f" (variant {r['variant']!r})" if r.get("variant") is not None else ""
        lines.append(f"- {_cell(r['name'])}: `{r['workdir']}`{variant}, {os.path.basename(r['eval_json'])}"
                     + (f", evaluated {r['timestamp']}" if r.get("timestamp") else ""))
    return "\n".join(lines) + "\n"


def write_json(report: Mapping[str, Any], path: str) -> None:
    with atomic_open(path, "w", suffix=".json.tmp") as f:
        json.dump(report, f, indent=2, allow_nan=False, ensure_ascii=False)
        f.write("\n")


def write_markdown(report: Mapping[str, Any], path: str) -> str:
    text = to_markdown(report)
    with atomic_open(path, "w", suffix=".md.tmp") as f:
        f.write(text)
    return text


def write_report(report: Mapping[str, Any], out_dir: str) -> Tuple[str, str, str]:
    """Writes ``out_dir/ablation.json`` and ``out_dir/ablation.md``; returns (json path, md path, markdown)."""
    json_path, md_path = os.path.join(out_dir, "ablation.json"), os.path.join(out_dir, "ablation.md")
    write_json(report, json_path)
    text = write_markdown(report, md_path)
    return json_path, md_path, text


def _split_list(value: Optional[str]) -> Optional[List[str]]:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xray_gen.models.xraygan.tables",
        description="XRayGAN ablation table (paper Table 2) from evaluated workdirs: writes "
                    "OUT/ablation.json and OUT/ablation.md and prints the markdown.")
    parser.add_argument("--workdirs", required=True, help="comma-separated workdirs, each evaluated "
                        "with --mode=evaluate (eval/xraygan_<split>.json)")
    parser.add_argument("--names", default=None, help="comma-separated display names, one per workdir")
    parser.add_argument("--split", default=None, help="which eval/xraygan_<split>.json to read "
                        "(default: the single one in each workdir)")
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args(argv)
    try:
        report = build_report(_split_list(args.workdirs), _split_list(args.names), args.split)
        _, _, text = write_report(report, args.out)
    except (AblationError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
