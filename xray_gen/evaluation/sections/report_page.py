"""The evaluator's HTML page (:mod:`xray_gen.evaluation.evaluator`): sample grids (each generated study next to the real
study of the same id) plus the material the sections collected in the :class:`Context` (per-class
bars, histograms, closest privacy pairs) and the classifier's training curve, rendered by
:func:`xray_gen.evaluation.html_report.write_html_report` when that module is installed.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from absl import logging

from xray_gen.data.schema import CHEXPERT_LABELS
from xray_gen.evaluation.generated_folder import VIEWS
from xray_gen.evaluation.sections.context import Context

SAMPLES_IN_HTML = 8


def _samples(ctx: Context) -> List[Dict[str, Any]]:
    """The first generated studies, each with the real study of the same id when there is one."""
    out = []
    ref_index = {sid: i for i, sid in enumerate(ctx.ref.ids)}
    pos = {v: {s: k for k, s in enumerate(ctx.ref.index[v])} for v in VIEWS}
    for u in ctx.gen.units[:SAMPLES_IN_HTML]:
        images, captions = [], []
        for v in VIEWS:
            row = getattr(u, v)
            if row is not None:
                images.append(ctx.gen.images[row])
                captions.append(f"generated {v}")
        if u.id in ref_index:
            s = ref_index[u.id]
            for v in VIEWS:
                if s in pos[v]:
                    images.append(ctx.ref.images[v][pos[v][s]])
                    captions.append(f"real {v} ({u.id})")
        if u.labels is None:
            condition = "unlabeled"
        else:
            condition = ", ".join(n for n, x in zip(CHEXPERT_LABELS, u.labels) if x == 1) or "no positive label"
        out.append({"condition": f"{ctx.gen.display_id(u.first_row)}: {condition}", "images": images,
                    "captions": captions, "text": u.report})
    return out


def write_html(path: str, record: Dict[str, Any], ctx: Context, curves: Optional[Dict[str, Any]] = None,
               title: Optional[str] = None) -> Optional[str]:
    """Writes the page to `path` (with the classifier's validation curve and `curves`, e.g. the
    model's training losses); `path`, or None when html_report is not installed."""
    try:
        from xray_gen.evaluation.html_report import write_html_report
    except ImportError as e:
        logging.warning("xray_gen.evaluation.html_report is not available (%s): wrote the JSON only", e)
        return None
    curves = dict(curves or {})
    if ctx.classifier is not None and ctx.classifier.history:
        curves["classifier validation macro AUROC"] = [(int(s), float(v)) for s, v in ctx.classifier.history]
    write_html_report(path, record, title=title or "xray_gen evaluation", samples=_samples(ctx),
                      privacy_pairs=ctx.privacy_pairs, histograms=ctx.histograms, per_class=ctx.per_class,
                      curves=curves)
    logging.info("evaluate: wrote %s", path)
    return path
