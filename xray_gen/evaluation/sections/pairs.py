"""The ``pairs`` section of :mod:`xray_gen.evaluate`: does what belongs to one study agree?
View consistency of generated frontal+lateral pairs (VCN; real pairs and mismatched generated
pairs as reference points), and image-report agreement (the classifier's labels of the frontal vs
the rule-based labeler's labels of its report; real studies as the baseline, and a chance level:
the reports shuffled across the generated images).
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from xray_gen.evaluation.generated_folder import strip_headers
from xray_gen.evaluation.sections.context import Context, skipped

CHANCE_PERMUTATIONS = 5


def pairs(ctx: Context) -> Dict[str, Any]:
    from xray_gen.data.labeler import label_reports
    from xray_gen.evaluation import text_metrics
    from xray_gen.evaluation.metrics import bootstrap_ci, multilabel_auroc

    out: Dict[str, Any] = {}
    gp = [u for u in ctx.gen.units if u.frontal is not None and u.lateral is not None]
    ref_pairs = np.intersect1d(ctx.ref.index["frontal"], ctx.ref.index["lateral"])
    if ctx.vcn is None:
        out["view_consistency"] = skipped("no --vcn_workdir")
    elif not gp:
        out["view_consistency"] = skipped("no generated frontal+lateral pairs (metadata pair_id)")
    else:
        f = ctx.gen.images[[u.frontal for u in gp]]
        l = ctx.gen.images[[u.lateral for u in gp]]
        p = ctx.vcn(f, l)
        vc: Dict[str, Any] = {"n_pairs": len(gp), "generated": float(p.mean())}
        if ctx.bootstrap:
            vc["generated_ci"] = list(bootstrap_ci(lambda x: float(np.mean(x)), p, n=ctx.bootstrap,
                                                     seed=ctx.seed)[1:])
        if len(gp) >= 2:
            pm = ctx.vcn(f, np.roll(l, 1, axis=0))
            vc["mismatched_generated"] = float(pm.mean())
            vc["auroc_matched_vs_mismatched_generated"] = multilabel_auroc(
                np.concatenate([np.ones_like(p), np.zeros_like(pm)])[:, None],
                np.concatenate([p, pm])[:, None])["macro"]
        else:
            vc["mismatched_generated"] = skipped("needs at least 2 generated pairs")
        if len(ref_pairs):
            pos_f = {s: k for k, s in enumerate(ctx.ref.index["frontal"])}
            pos_l = {s: k for k, s in enumerate(ctx.ref.index["lateral"])}
            rf = ctx.ref.images["frontal"][[pos_f[s] for s in ref_pairs]]
            rl = ctx.ref.images["lateral"][[pos_l[s] for s in ref_pairs]]
            pr = ctx.vcn(rf, rl)
            vc["real"] = float(pr.mean())
            if len(ref_pairs) >= 2:
                patients = np.asarray([ctx.ref.patients[s] for s in ref_pairs])
                other = patients != np.roll(patients, 1)
                prm = ctx.vcn(rf, np.roll(rl, 1, axis=0))[other]
                vc["mismatched_real"] = float(prm.mean()) if prm.size else None
            ctx.histograms["view consistency p(same)"] = {
                "values": p.tolist(), "reference_values": pr.tolist(), "thresholds": {"0.5": 0.5}}
        else:
            vc["real"] = skipped(f"{ctx.ref.name} has no frontal+lateral pairs")
        vc["vcn"] = {"workdir": ctx.vcn.workdir, "resolution": ctx.vcn.resolution,
                     "weights_checksum": ctx.vcn.weights_checksum}
        out["view_consistency"] = vc

    # With a report column every study has a report (a blank one is empty, and counts).
    with_report = [u for u in ctx.gen.units if u.frontal is not None and ctx.gen.report_section]
    if ctx.classifier is None:
        out["image_report_agreement"] = skipped("no --classifier_workdir")
    elif not with_report:
        out["image_report_agreement"] = skipped("no generated frontal image with a report")
    else:
        thr = ctx.classifier.thresholds
        _, probs = ctx.classifier(ctx.gen.images[[u.frontal for u in with_report]])
        image_labels = (probs >= thr).astype(np.float64)
        report_labels = label_reports([strip_headers(u.report) for u in with_report]).astype(np.float64)
        agreement = text_metrics.label_agreement(image_labels, report_labels)
        rng = np.random.default_rng(ctx.seed)
        chance = [text_metrics.label_agreement(image_labels, report_labels[rng.permutation(len(report_labels))])
                  ["micro"]["f1"] for _ in range(CHANCE_PERMUTATIONS)] if len(report_labels) >= 2 else []
        chance = [v for v in chance if v is not None]
        block = {"generated": dict(agreement, n=len(with_report)),
                 "chance_micro_f1": float(np.mean(chance)) if chance else None,
                 "definition": "classifier labels of the frontal as predictions, the rule-based "
                               "labeler's labels of its report as truth",
                 "thresholds": ctx.classifier.thresholds_source}
        rows = ctx.ref.index["frontal"]
        texts = [ctx.ref.reports["findings+impression"][s] for s in rows]
        keep = [k for k, t in enumerate(texts) if t]
        if keep:
            _, rp = ctx.classified("ref", "frontal")
            block["real"] = dict(text_metrics.label_agreement(
                (rp[keep] >= thr).astype(np.float64), [texts[k] for k in keep]), n=len(keep))
        out["image_report_agreement"] = block
    return out
