"""The ``privacy`` section of :mod:`xray_gen.evaluate`: are generated images or reports copies of
training data? :func:`xray_gen.evaluation.privacy.image_privacy` per view against the whole
training split (pixel space, plus classifier feature space), calibrated on the reference split, and
:func:`xray_gen.evaluation.privacy.report_privacy`; the closest pairs and distance histograms go to
the HTML report.
"""

from __future__ import annotations

import time
from typing import Any, Dict

from xray_gen.evaluation.generated_folder import strip_headers
from xray_gen.evaluation.real_splits import TrainStream, iter_train_reports
from xray_gen.evaluation.sections.context import Context, skipped

PAIRS_IN_HTML = 8


def privacy(ctx: Context) -> Dict[str, Any]:
    from xray_gen.evaluation.privacy import image_privacy, report_privacy

    out: Dict[str, Any] = {}
    for view, g, r in ctx.views_on_both_sides(out, reference_note=" to calibrate on"):
        train = TrainStream(ctx.data_config, ctx.train_split, view, ctx.train_examples)
        kwargs = {}
        if ctx.classifier is not None:
            kwargs = dict(generated_features=ctx.classified("gen", view)[0],
                          reference_features=ctx.classified("ref", view)[0],
                          feature_fn=ctx.classifier.features)
        t0 = time.time()
        res = image_privacy(g, r, train, key=None, percentile=ctx.percentile, top_k=len(g),
                            n_boot=ctx.bootstrap, seed=ctx.seed, **kwargs)
        res["seconds"] = time.time() - t0
        res["train_split"] = ctx.train_split
        rows = ctx.gen.rows(view)
        if "feature" not in res:
            res["feature"] = skipped("no --classifier_workdir (pixel space only)")
        for space in ("pixel", "feature"):
            if not isinstance(res[space], dict):
                continue
            block = res[space]
            allpairs = block["closest_pairs"]
            nc = block["near_copy"]
            ctx.histograms[f"nearest-train distance {view}/{space}"] = {
                "values": [p["distance"] for p in allpairs],
                "reference_values": block.pop("reference_distances"),  # kept out of the JSON (one per image)
                "thresholds": {"near-copy threshold (reference p{:g})".format(nc["percentile"]): nc["threshold"],
                               "reference p5": nc["reference"]["p5"],
                               "reference median": nc["reference"]["median"]}}
            block["closest_pairs"] = [dict(p, generated_id=ctx.gen.display_id(int(rows[p["generated"]])))
                                      for p in allpairs[:16]]
            for p in allpairs[:PAIRS_IN_HTML]:
                tid, timg = train.study(p["train"])
                ctx.privacy_pairs.append({
                    "generated": g[p["generated"]], "training": timg, "distance": p["distance"],
                    "space": f"{view}/{space}", "generated_id": ctx.gen.display_id(int(rows[p["generated"]])),
                    "training_id": tid})
        out[view] = res
    units = [u for u in ctx.gen.units if u.report]
    if not units:
        out["reports"] = skipped("no generated reports")
    else:
        section = ctx.gen.compared_section
        res = report_privacy([strip_headers(u.report) for u in units],
                             iter_train_reports(ctx.data_config, ctx.train_split, ctx.train_examples, section),
                             ctx.ref.reports[section], key=None, n_boot=ctx.bootstrap, seed=ctx.seed)
        for p in res.get("closest_pairs", []):
            u = units[p["generated"]]
            p["generated_id"] = u.id or ctx.gen.display_id(u.first_row)
        out["reports"] = res
    return out
