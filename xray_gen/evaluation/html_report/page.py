"""The HTML report page: its sections, their order, the CSS, and writing the file.

Assembles the metric tables (:mod:`.tables`), images and plots (:mod:`.figures`) and formatted
values (:mod:`.values`) into one self-contained page; this module decides what the page shows
and in which order, the others how each piece looks.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from xray_gen.evaluation.html_report.figures import (curve_plot, guarded, histogram_plot,
                                                     image_data_uri, img_tag, per_class_plot)
from xray_gen.evaluation.html_report.tables import definition_list, metrics_section, value_cell
from xray_gen.evaluation.html_report.values import NOT_COMPUTED, escape, format_value
from xray_gen.files import atomic_open

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0 auto;max-width:1200px;
 padding:1em 2em;color:#222;background:#fff;line-height:1.4}
h1{border-bottom:2px solid #444;padding-bottom:.2em}
h2{border-bottom:1px solid #bbb;margin-top:1.8em;padding-bottom:.1em}
h3{margin:1.2em 0 .4em}
h4{margin:.8em 0 .3em;font-size:1em;color:#444}
p.meta{color:#555;margin:.2em 0}
p.empty{color:#888;font-style:italic}
p.error{color:#a00}
table{border-collapse:collapse;margin:.4em 0 1em;font-size:.92em}
th,td{border:1px solid #ccc;padding:.2em .6em;text-align:left;vertical-align:top}
th{background:#f0f0f0}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
dl{display:grid;grid-template-columns:max-content auto;gap:.15em 1.2em;font-size:.92em}
dt{font-weight:600}
dd{margin:0;word-break:break-all}
nav ul{columns:3;font-size:.92em}
.samples{display:flex;flex-wrap:wrap;gap:1.2em}
.sample{border:1px solid #ddd;border-radius:4px;padding:.5em;max-width:100%}
.sample .report{max-width:1060px}
.views{display:flex;gap:.5em}
figure{margin:0;text-align:center}
figcaption{font-size:.85em;color:#444;word-break:break-word;max-width:256px}
img.xray{width:256px;height:auto;image-rendering:pixelated;background:#000}
.report{white-space:pre-wrap;font-family:Menlo,Consolas,monospace;font-size:.82em;background:#f7f7f7;
 padding:.4em;margin:.4em 0 0;max-height:18em;overflow:auto}
.pairs{display:flex;flex-wrap:wrap;gap:1.2em}
.pair{border:1px solid #ddd;border-radius:4px;padding:.5em}
.pair .distance{font-weight:600;text-align:center;margin:.3em 0 0}
.plots{display:flex;flex-wrap:wrap;gap:1em}
img.plot{max-width:100%;height:auto}
"""

_SECTIONS = [("metrics", "Metrics"), ("samples", "Samples"), ("privacy", "Privacy: closest pairs"),
             ("histograms", "Distributions"), ("per-class", "Per-class metrics"),
             ("curves", "Training curves"), ("protocol", "Protocol"), ("versions", "Versions")]


def _sample_card(sample: Mapping[str, Any]) -> str:
    images = list(sample.get("images") or ())
    captions = [str(c) for c in (sample.get("captions") or ())]
    figs = []
    for i, image in enumerate(images):
        cap = captions[i] if i < len(captions) else ""
        img = guarded(f"image {i}", lambda im=image, c=cap: img_tag(image_data_uri(im), c or "sample image", "xray"))
        figs.append(f"<figure>{img}<figcaption>{escape(cap)}</figcaption></figure>")
    body = f'<div class="views">{"".join(figs)}</div>' if figs else '<p class="empty">no images</p>'
    text = sample.get("text")
    if text:
        body += f'<pre class="report">{escape(text)}</pre>'
    return f'<div class="sample">{body}</div>'


def _samples_section(samples: Sequence[Mapping[str, Any]]) -> str:
    if not samples:
        return NOT_COMPUTED
    groups: Dict[str, List[Mapping[str, Any]]] = {}
    for s in samples:
        groups.setdefault(str(s.get("condition", "")), []).append(s)
    parts = []
    for cond, items in groups.items():
        parts.append(f"<h3>{escape(cond) if cond else '(no condition)'}</h3>")
        parts.append('<div class="samples">' + "".join(_sample_card(s) for s in items) + "</div>")
    return "".join(parts)


def _pair_card(pair: Mapping[str, Any]) -> str:
    gid, tid = pair.get("generated_id", ""), pair.get("training_id", "")
    figs = []
    for key, ident, label in (("generated", gid, "generated"), ("training", tid, "training")):
        img = guarded(f"{label} image", lambda k=key, lb=label: img_tag(image_data_uri(pair[k]), lb, "xray"))
        cap = f"{label}: {ident}" if ident != "" else label
        figs.append(f"<figure>{img}<figcaption>{escape(cap)}</figcaption></figure>")
    space = pair.get("space", "")
    dist = format_value(pair.get("distance"))
    label = f"{space} distance {dist}" if space else f"distance {dist}"
    return (f'<div class="pair"><div class="views">{"".join(figs)}</div>'
            f'<p class="distance">{escape(label)}</p></div>')


def _privacy_section(pairs: Sequence[Mapping[str, Any]]) -> str:
    if not pairs:
        return NOT_COMPUTED
    return '<div class="pairs">' + "".join(_pair_card(p) for p in pairs) + "</div>"


def _histograms_section(histograms: Optional[Mapping[str, Mapping[str, Any]]]) -> str:
    if not histograms:
        return NOT_COMPUTED
    parts = []
    for name, spec in histograms.items():
        plot = guarded(f"histogram {name}", lambda n=name, s=spec: img_tag(histogram_plot(str(n), s),
                                                                       f"histogram {n}", "plot"))
        thr = spec.get("thresholds") or {}
        note = ("<p class=\"meta\">" + escape("; ".join(f"{k} = {format_value(v)}" for k, v in thr.items()))
                + "</p>") if thr else ""
        parts.append(f"<h3>{escape(name)}</h3>{plot}{note}")
    return "".join(parts)


def _per_class_section(per_class: Optional[Mapping[str, Mapping[str, Any]]]) -> str:
    if not per_class:
        return NOT_COMPUTED
    parts = []
    for metric, values in per_class.items():
        plot = guarded(f"per-class {metric}", lambda m=metric, v=values: img_tag(
            per_class_plot(str(m), v), f"per-class {m}", "plot"))
        rows = "".join(f"<tr><th>{escape(k)}</th>{value_cell(v, str(k))}</tr>" for k, v in (values or {}).items())
        table = (f"<details><summary>values</summary><table><tr><th>class</th><th>{escape(metric)}</th></tr>"
                 f"{rows}</table></details>") if rows else NOT_COMPUTED
        parts.append(f"<h3>{escape(metric)}</h3>{plot}{table}")
    return "".join(parts)


def _curves_section(curves: Optional[Mapping[str, Sequence[Tuple[int, float]]]]) -> str:
    if not curves:
        return NOT_COMPUTED
    plots = []
    for name, points in curves.items():
        plots.append("<figure>" + guarded(f"curve {name}", lambda n=name, p=points: img_tag(
            curve_plot(str(n), list(p)), f"curve {n}", "plot")) + "</figure>")
    return '<div class="plots">' + "".join(plots) + "</div>"


def render_html(result: Optional[Mapping[str, Any]], *, title: str = "xray_gen evaluation",
                samples: Sequence[Mapping[str, Any]] = (), privacy_pairs: Sequence[Mapping[str, Any]] = (),
                histograms: Optional[Mapping[str, Mapping[str, Any]]] = None,
                per_class: Optional[Mapping[str, Mapping[str, float]]] = None,
                curves: Optional[Mapping[str, Sequence[Tuple[int, float]]]] = None) -> str:
    """The report as an HTML string (see :func:`write_html_report`)."""
    result = result or {}
    meta = []
    for key in ("timestamp", "schema"):
        if result.get(key):
            meta.append(f'<p class="meta">{escape(key)}: {escape(result[key])}</p>')
    bodies = {
        "metrics": metrics_section(result.get("metrics")),
        "samples": _samples_section(list(samples or ())),
        "privacy": _privacy_section(list(privacy_pairs or ())),
        "histograms": _histograms_section(histograms),
        "per-class": _per_class_section(per_class),
        "curves": _curves_section(curves),
        "protocol": definition_list(result.get("protocol")),
        "versions": definition_list(result.get("versions")),
    }
    sections = [f'<section id="{sid}"><h2>{escape(name)}</h2>{bodies[sid]}</section>' for sid, name in _SECTIONS]
    if isinstance(result.get("extra"), Mapping) and result["extra"]:
        sections.append(f'<section id="extra"><h2>Extra</h2>{definition_list(result["extra"])}</section>')
    nav = ("<nav><ul>" + "".join(f'<li><a href="#{sid}">{escape(name)}</a></li>' for sid, name in _SECTIONS)
           + "</ul></nav>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{_CSS}</style></head>\n<body>"
            f"<h1>{escape(title)}</h1>{''.join(meta)}{nav}\n" + "\n".join(sections) + "\n</body></html>\n")


def write_html_report(path: str, result: dict, *, title: str = "xray_gen evaluation",
                      samples: Sequence[dict] = (), privacy_pairs: Sequence[dict] = (),
                      histograms: Optional[Mapping[str, dict]] = None,
                      per_class: Optional[Mapping[str, Mapping[str, float]]] = None,
                      curves: Optional[Mapping[str, Sequence[Tuple[int, float]]]] = None) -> str:
    """Writes one self-contained HTML report to ``path`` (atomically) and returns ``path``.

    ``result``: the dict of ``protocol.write_result_json``/``read_result_json``.
    ``samples``: ``{"condition", "images": [HxW(x1) uint8 or float in [-1, 1]], "captions", "text"}``
    (grouped by condition; a sample's images side by side, e.g. frontal and lateral).
    ``privacy_pairs``: ``{"generated", "training", "distance", "space", "generated_id", "training_id"}``.
    ``histograms``: name -> ``{"values", "thresholds": {label: x}, "reference_values"?}``.
    ``per_class``: metric -> {class: value or (point, lo, hi)} -> horizontal bar plot.
    ``curves``: name -> [(step, value)] -> line plot (see :func:`read_curves`).
    """
    text = render_html(result, title=title, samples=samples, privacy_pairs=privacy_pairs,
                       histograms=histograms, per_class=per_class, curves=curves)
    with atomic_open(path, "wb", suffix=".html.tmp") as f:
        f.write(text.encode("utf-8"))
    return path
