"""The PGGAN paper's evaluation of synthetic CXRs (its Results tables), as functions of arrays.

- Table 1: FID per dataset split. `per_class_fid` (each class's positives vs the No Finding
  baseline: can the feature space tell pathologies apart?) and `stratified_split_fid` (two
  patient-disjoint stratified halves of one real set: the "near 0" floor); `fid_table` lays them out.
- Fig. 6: label prevalence real vs generated with 95% bootstrap intervals (`prevalence_table`,
  `prevalence_plot`).
- Table 2: `utility_table` sets the per-class AUROC of a classifier trained only on a synthetic
  archive (GAN-train, `xray_gen.models.utility.gan_train`) beside the real-trained one's.

Every table is a dict with "columns" and "rows" (plus details), written by `write_tables` as JSON
and markdown.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from xray_gen.data.schema import CHEXPERT_LABELS, binarize
from xray_gen.evaluation.fid import fid_between
from xray_gen.evaluation.protocol import to_jsonable
from xray_gen.files import atomic_open


def _positives(labels, uncertain_as: float, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(positive (N, C) bool, known (N, C) bool): NaN is unknown, -1 maps to `uncertain_as`."""
    labels = np.asarray(labels, np.float32)
    if labels.ndim != 2 or labels.shape[1] != n_classes:
        raise ValueError(f"labels must be (N, {n_classes}) to match class_names, got {labels.shape}")
    bad = ~(np.isnan(labels) | np.isin(labels, (0.0, 1.0, -1.0)))
    if bad.any():
        raise ValueError(f"labels must be 1, 0, -1 (uncertain) or NaN (unknown); found {np.unique(labels[bad])[:5]}")
    targets, mask = binarize(labels, uncertain_as)
    known = (mask > 0) & ~np.isnan(labels)
    return (targets > 0.5) & known, known


# ------------------------------------------------------------------------------------------------
# Prevalence (Fig. 6)
# ------------------------------------------------------------------------------------------------


def _bootstrap_prevalence(k: np.ndarray, n: np.ndarray, n_boot: int, rng, alpha: float):
    """Point and percentile interval per class of k/n, resampling the n known rows n_boot times.

    Resampling n Bernoulli rows with replacement gives a positive count ~ Binomial(n, k/n)
    exactly, so one binomial draw per resample replaces an (n_boot, n) index matrix.
    """
    point = np.where(n > 0, k / np.maximum(n, 1), np.nan)
    draws = rng.binomial(n[:, None], np.nan_to_num(point)[:, None], size=(len(n), n_boot)) / np.maximum(n, 1)[:, None]
    lo, hi = np.percentile(draws, (100 * alpha / 2, 100 * (1 - alpha / 2)), axis=1)
    return point, np.where(n > 0, lo, np.nan), np.where(n > 0, hi, np.nan)


def prevalence_table(real_labels, generated_labels, n_boot: int = 10_000, seed: int = 0,
                     class_names: Sequence[str] = CHEXPERT_LABELS, uncertain_as: float = 1.0,
                     alpha: float = 0.05) -> dict:
    """Per class: prevalence among the images whose label is known, real and generated, with a
    (1-alpha) percentile bootstrap interval (per-class marginal of resampling rows, NaN excluded)."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"columns": ["class", "real", "real 95% CI", "generated", "generated 95% CI", "n real",
                                       "n generated"], "rows": [], "per_class": {}, "n_boot": int(n_boot),
                           "alpha": alpha, "uncertain_as": uncertain_as}
    stats = {}
    for name, labels in (("real", real_labels), ("generated", generated_labels)):
        pos, known = _positives(labels, uncertain_as, len(class_names))
        k, n = pos.sum(0), known.sum(0)
        stats[name] = (*_bootstrap_prevalence(k, n, n_boot, rng, alpha), n)
    for c, cls in enumerate(class_names):
        entry = {name: {"prevalence": stats[name][0][c], "ci95": [stats[name][1][c], stats[name][2][c]],
                        "n": int(stats[name][3][c])} for name in stats}
        out["per_class"][cls] = entry
        out["rows"].append([cls, entry["real"]["prevalence"], entry["real"]["ci95"], entry["generated"]["prevalence"],
                            entry["generated"]["ci95"], entry["real"]["n"], entry["generated"]["n"]])
    return to_jsonable(out)


def prevalence_plot(path: str, table: Mapping) -> str:
    """Grouped bars (real vs generated prevalence per class) with 95% interval whiskers -> PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(table["per_class"])
    x = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(classes)), 4.0))
    for offset, name, color in ((-0.2, "real", "tab:blue"), (0.2, "generated", "tab:orange")):
        values = np.array([np.nan if table["per_class"][c][name]["prevalence"] is None
                           else table["per_class"][c][name]["prevalence"] for c in classes], float)
        ci = np.array([[np.nan if v is None else v for v in table["per_class"][c][name]["ci95"]]
                       for c in classes], float)
        err = np.nan_to_num(np.abs(np.stack([values - ci[:, 0], ci[:, 1] - values])))
        ax.bar(x + offset, np.nan_to_num(values), width=0.4, yerr=err, capsize=2, label=name, color=color)
    ax.set_xticks(x)
    ax.set_xticklabels(classes, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("prevalence (95% bootstrap CI)")
    ax.legend()
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------
# FID per split (Table 1)
# ------------------------------------------------------------------------------------------------


def per_class_fid(features, labels, baseline: str = "No Finding", min_count: int = 2,
                  class_names: Sequence[str] = CHEXPERT_LABELS, uncertain_as: float = 1.0) -> dict:
    """{class: {"fid": FID(images positive for it, baseline class's images) or None, "count": n}}.

    A class with fewer than `min_count` (>= 2, a covariance needs two) positives gets None.
    """
    features = np.asarray(features, np.float64)
    pos, _ = _positives(labels, uncertain_as, len(class_names))
    if features.ndim != 2 or len(features) != len(pos):
        raise ValueError(f"features must be (N, d) with N = {len(pos)} labelled images, got {features.shape}")
    if baseline not in class_names:
        raise ValueError(f"baseline {baseline!r} is not a class; valid: {', '.join(class_names)}")
    min_count = max(2, int(min_count))
    base = pos[:, list(class_names).index(baseline)]
    if base.sum() < min_count:
        raise ValueError(f"baseline {baseline!r} has {int(base.sum())} positive images (< {min_count}): "
                         "no FID possible")
    out = {}
    for c, cls in enumerate(class_names):
        n = int(pos[:, c].sum())
        out[cls] = {"fid": fid_between(features[pos[:, c]], features[base]) if n >= min_count else None, "count": n}
    return out


def stratified_split_fid(features, labels, patient_ids, seed: int = 0) -> dict:
    """FID between two patient-disjoint halves stratified on the patients' average labels: what
    FID reads for 'the same distribution' at this sample size (the paper's 0.53)."""
    from xray_gen.data.stratify import stratified_patient_split

    features = np.asarray(features, np.float64)
    fold = stratified_patient_split(patient_ids, labels, (0.5, 0.5), seed)
    a, b = features[fold == 0], features[fold == 1]
    if min(len(a), len(b)) < 2:
        raise ValueError(f"stratified halves of {len(a)} and {len(b)} images: need >= 2 each")
    patients = np.asarray(patient_ids)
    return {"fid": fid_between(a, b), "sizes": [len(a), len(b)],
            "patients": [len(np.unique(patients[fold == 0])), len(np.unique(patients[fold == 1]))]}


def fid_table(per_class: Mapping[str, Mapping], stratified: Mapping | None = None,
              extra: Mapping[str, float] | None = None) -> dict:
    """Table 1 layout (split | FID | images): the stratified floor, each class vs the baseline,
    then `extra` rows (e.g. {"Synthetic": FID real vs generated})."""
    rows = []
    if stratified is not None:
        rows.append(["Stratified", stratified["fid"], int(sum(stratified["sizes"]))])
    rows += [[cls, v["fid"], v["count"]] for cls, v in per_class.items()]
    rows += [[name, value, None] for name, value in (extra or {}).items()]
    return to_jsonable({"columns": ["split", "FID", "images"], "rows": rows, "per_class": per_class,
                        "stratified": stratified})


def utility_table(real_auroc: Mapping[str, float], generated_auroc: Mapping[str, float]) -> dict:
    """Table 2 layout (class | generated | real): per-class test AUROC of the synthetic-trained and
    the real-trained classifier, and their macro averages as the last row."""
    classes = [c for c in CHEXPERT_LABELS if c in real_auroc or c in generated_auroc]
    classes += [c for c in {**real_auroc, **generated_auroc} if c not in classes and c != "macro"]
    rows = [[c, generated_auroc.get(c), real_auroc.get(c)] for c in classes]
    rows.append(["Average (macro)", generated_auroc.get("macro"), real_auroc.get("macro")])
    return to_jsonable({"columns": ["class", "generated", "real"], "rows": rows})


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    return str(value).replace("|", "\\|")


def write_tables(out_dir: str, tables: Mapping[str, Mapping]) -> tuple[str, str]:
    """Writes `out_dir/tables.json` (every table in full) and `out_dir/tables.md` (one section per
    table, from its "columns" and "rows"); returns both paths."""
    tables = to_jsonable(dict(tables))
    sections = []
    for name, table in tables.items():
        if not isinstance(table, dict) or "columns" not in table or "rows" not in table:
            raise ValueError(f"table {name!r} needs 'columns' and 'rows' (use prevalence_table, fid_table, "
                             "utility_table)")
        columns = table["columns"]
        lines = [f"## {name}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in table["rows"]:
            if len(row) != len(columns):
                raise ValueError(f"table {name!r}: row {row!r} has {len(row)} cells for {len(columns)} columns")
            lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
        sections.append("\n".join(lines))
    json_path, md_path = os.path.join(out_dir, "tables.json"), os.path.join(out_dir, "tables.md")
    with atomic_open(json_path) as f:
        json.dump(tables, f, indent=2, allow_nan=False)
    with atomic_open(md_path) as f:
        f.write("\n\n".join(sections) + "\n")
    return json_path, md_path
