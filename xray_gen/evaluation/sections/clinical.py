"""The ``clinical`` section of :mod:`xray_gen.evaluate`: do the generated frontals show the
findings they were conditioned on? The classifier's macro / per-class AUROC of the generated
frontals against their conditioning labels (bootstrap CI; real reference frontals as the baseline),
and label prevalence (conditioning vs reference labels; classifier-predicted on generated vs real).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from xray_gen.data.schema import CHEXPERT_LABELS
from xray_gen.evaluation.sections.context import Context, pos_mask, skipped


def _prevalence(labels_pos: np.ndarray, valid: np.ndarray) -> Dict[str, Optional[float]]:
    out = {}
    for c, name in enumerate(CHEXPERT_LABELS):
        n = valid[:, c].sum()
        out[name] = float(labels_pos[valid[:, c], c].mean()) if n else None
    return out


def clinical(ctx: Context) -> Dict[str, Any]:
    from xray_gen.evaluation.metrics import bootstrap_ci, multilabel_auroc

    uncertain_as = float(ctx.data_config.get("uncertain_as", 1.0))
    out: Dict[str, Any] = {}
    rows = ctx.gen.rows("frontal")
    ref_labels = ctx.ref.labels[ctx.ref.index["frontal"]]
    rt, rm = pos_mask(ref_labels, uncertain_as)
    gt, gm = pos_mask(ctx.gen.labels[rows], uncertain_as)
    prevalence: Dict[str, Any] = {
        "reference_labels": _prevalence(rt, rm) if rm.any() else skipped("reference has no labels"),
        "generated_conditioning_labels": (_prevalence(gt, gm) if gm.any()
                                          else skipped("no conditioning labels in the metadata")),
    }
    if ctx.classifier is None:
        out["auroc_generated"] = skipped("no --classifier_workdir")
        prevalence["predicted"] = skipped("no --classifier_workdir")
        out["prevalence"] = prevalence
        return out
    if len(rows) == 0:
        out["auroc_generated"] = skipped("no generated frontal images (the classifier reads frontals)")
        out["prevalence"] = prevalence
        return out
    _, gp = ctx.classified("gen", "frontal")
    _, rp = ctx.classified("ref", "frontal")
    thr = ctx.classifier.thresholds
    ones = np.ones_like(gp, bool)
    prevalence["predicted"] = {
        "thresholds": ctx.classifier.thresholds_source,
        "generated": _prevalence((gp >= thr).astype(float), ones),
        "reference": _prevalence((rp >= thr).astype(float), np.ones_like(rp, bool)) if len(rp) else None}
    out["prevalence"] = prevalence

    def auroc_block(t, p, m, n):
        a = multilabel_auroc(t, p, m, class_names=CHEXPERT_LABELS)
        block = {"macro": a["macro"], "per_class": {k: v for k, v in a.items() if k != "macro"}, "n": int(n)}
        if ctx.bootstrap:
            ci = bootstrap_ci(lambda t_, p_, m_: multilabel_auroc(t_, p_, m_)["macro"], t, p, m,
                              n=ctx.bootstrap, seed=ctx.seed)
            block["macro_ci"] = [ci[1], ci[2]]
        return block

    if not gm.any():
        out["auroc_generated"] = skipped("no conditioning labels in the metadata")
    else:
        keep = gm.any(axis=1)
        out["auroc_generated"] = auroc_block(gt[keep], gp[keep], gm[keep], keep.sum())
        ctx.per_class["AUROC generated"] = out["auroc_generated"]["per_class"]
    if rm.any() and len(rp):
        keep = rm.any(axis=1)
        out["auroc_reference"] = auroc_block(rt[keep], rp[keep], rm[keep], keep.sum())
        ctx.per_class["AUROC real"] = out["auroc_reference"]["per_class"]
    else:
        out["auroc_reference"] = skipped("reference has no labels")
    if isinstance(prevalence["generated_conditioning_labels"], dict):
        ctx.per_class["prevalence generated (conditioning)"] = prevalence["generated_conditioning_labels"]
    if isinstance(prevalence["reference_labels"], dict):
        ctx.per_class["prevalence real"] = prevalence["reference_labels"]
    return out
