"""The ``reports`` section of :mod:`xray_gen.evaluate`: the generated reports as text.
:func:`xray_gen.evaluation.text_metrics.report_metrics` (NLG scores) against the reference reports of
the studies whose ids they carry, and the agreement of the labels read from each report with the
labels it was conditioned on.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from xray_gen.evaluation.generated_folder import strip_headers
from xray_gen.evaluation.sections.context import Context, skipped


def reports(ctx: Context) -> Dict[str, Any]:
    from xray_gen.evaluation import text_metrics

    if not ctx.gen.report_section:
        return {"status": skipped("no generated reports in the metadata (report / findings / impression)")}
    # Every study counts, a blank report as an empty one: a model is not scored on its easy cases only.
    units = ctx.gen.units
    ref_key = ctx.gen.compared_section
    out: Dict[str, Any] = {"n_reports": len(units), "n_empty": sum(not u.report for u in units),
                           "compared_section": ref_key}
    ref_index = {sid: i for i, sid in enumerate(ctx.ref.ids)}
    matched = [u for u in units if u.id and u.id in ref_index]
    out["n_matched_reference_ids"] = len(matched)
    if matched:
        gen = [strip_headers(u.report) for u in matched]
        refs = [ctx.ref.reports[ref_key][ref_index[u.id]] for u in matched]
        labels = None
        if all(u.labels is not None for u in matched):
            labels = np.stack([u.labels for u in matched])
        out["vs_reference"] = text_metrics.report_metrics(gen, refs, labels=labels,
                                                          n_bootstrap=ctx.report_bootstrap, seed=ctx.seed)
    else:
        out["vs_reference"] = skipped(f"no generated id matches a study id of {ctx.ref.name}")
    labeled = [u for u in units if u.labels is not None]
    if labeled:
        out["vs_conditioning_labels"] = dict(
            text_metrics.label_agreement([strip_headers(u.report) for u in labeled],
                                         np.stack([u.labels for u in labeled])), n=len(labeled))
    else:
        out["vs_conditioning_labels"] = skipped("no conditioning labels in the metadata")
    return out
