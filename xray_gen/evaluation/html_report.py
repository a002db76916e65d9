"""One self-contained HTML file per evaluation.

:func:`write_html_report` renders an evaluation result (as written by
:func:`xray_gen.evaluation.protocol.write_result_json`) together with optional sample grids,
closest generated/training pairs, histograms, per-class bar plots and training curves into a
single HTML file that needs nothing else: images are base64 PNG data URIs, plots are made with
matplotlib (Agg, no pyplot state) and embedded the same way, the CSS is inline, and there is no
script. All text (metric names, captions, reports, ids, ...) is HTML-escaped, so a hostile
report cannot inject markup. A section without data says "not computed".

Metric formatting: nested metric dicts are flattened into dotted names grouped by their top-level
key; a list of 3 numbers is ``(point, lower, upper)`` -> ``0.912 [0.901, 0.925]``; a list of
2 numbers is ``(mean, std)`` -> ``1.23 ± 0.04`` (unless its key ends in ``ci``: then it is an
interval ``[lo, hi]``); ``None`` -> ``–``. A dict of per-class values (a dict whose values are
dicts sharing the same keys, or a ``per_*``/``by_*`` dict of plain values) and a list of records
(dicts) become their own small tables.

:func:`read_curves` reads the scalar curves a training workdir's TensorBoard event files hold
(clu's metric writers write tensor summaries; old-style simple values are read too).
"""

from __future__ import annotations

import base64
import fnmatch
import html
import io
import logging
import math
import numbers
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from xray_gen.files import atomic_open

__all__ = ["write_html_report", "render_html", "read_curves", "format_value", "image_data_uri"]

NOT_COMPUTED = '<p class="empty">not computed</p>'
DASH = "\u2013"
_MAX_RECORD_ROWS = 25      # rows of a list-of-records table before "... n more"
_MAX_INLINE_LIST = 8       # a longer list of numbers is summarised, not printed

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

log = logging.getLogger(__name__)


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


# ----------------------------------------------------------------------------------------------
# Value formatting
# ----------------------------------------------------------------------------------------------

def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Number) and not isinstance(x, bool)


def _num_or_none(x: Any) -> bool:
    return x is None or _is_number(x)


def _fmt_number(x: Any) -> str:
    if x is None:
        return DASH
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, numbers.Integral):
        return str(int(x))
    x = float(x)
    if math.isnan(x):
        return DASH
    if math.isinf(x):
        return "\u221e" if x > 0 else "-\u221e"
    if x == 0:
        return "0"
    if abs(x) >= 1e6 or abs(x) < 1e-3:
        return f"{x:.3g}"
    if abs(x) >= 100:
        return f"{x:.1f}"
    return f"{x:.3g}"


def format_value(value: Any, key: str = "") -> str:
    """Plain-text rendering of one metric value (not escaped).

    ``(point, lower, upper)`` -> ``"0.912 [0.901, 0.925]"``; ``(mean, std)`` -> ``"1.23 ± 0.04"``
    (``key`` ending in ``ci``: ``"[0.1, 0.2]"``); ``None``/NaN -> ``"–"``.
    """
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if value is None or _is_number(value) or isinstance(value, bool):
        return _fmt_number(value)
    if isinstance(value, (list, tuple)):
        if all(_num_or_none(v) for v in value):
            if len(value) == 3:
                p, lo, hi = value
                return f"{_fmt_number(p)} [{_fmt_number(lo)}, {_fmt_number(hi)}]"
            if len(value) == 2:
                a, b = value
                if key.lower().endswith("ci"):
                    return f"[{_fmt_number(a)}, {_fmt_number(b)}]"
                return f"{_fmt_number(a)} \u00b1 {_fmt_number(b)}"
            if len(value) > _MAX_INLINE_LIST:
                arr = np.array([np.nan if v is None else v for v in value], np.float64)
                fin = arr[np.isfinite(arr)]
                if fin.size == 0:
                    return f"{len(value)} values (none finite)"
                return (f"{len(value)} values (mean {_fmt_number(fin.mean())}, "
                        f"min {_fmt_number(fin.min())}, max {_fmt_number(fin.max())})")
            return "[" + ", ".join(_fmt_number(v) for v in value) + "]"
        if len(value) > _MAX_INLINE_LIST:
            return f"{len(value)} items"
        return ", ".join(format_value(v) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {format_value(v, str(k))}" for k, v in value.items())
    return str(value)


def _plain(value: Any) -> str:
    """Protocol / versions values: lists joined, dicts as ``k: v``, no interval interpretation."""
    if value is None:
        return DASH
    if isinstance(value, (list, tuple)):
        return ", ".join(_plain(v) for v in value) if value else DASH
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_plain(v)}" for k, v in value.items()) if value else DASH
    return str(value)


# ----------------------------------------------------------------------------------------------
# Images and plots
# ----------------------------------------------------------------------------------------------

def _to_uint8(image: Any) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[0] == 1 and arr.shape[-1] not in (3, 4):
        arr = arr[0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f"image must be HxW, HxWx1 or HxWx3, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        return np.clip(arr, 0, 255).astype(np.uint8)
    arr = np.nan_to_num(arr.astype(np.float64), nan=-1.0)
    return np.round((np.clip(arr, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def image_data_uri(image: Any) -> str:
    """``data:image/png;base64,...`` of an HxW / HxWx1 image (uint8, or float in [-1, 1])."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_to_uint8(image)).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas on savefig

    fig = Figure(figsize=(width, height), dpi=100)
    return fig, fig.subplots()


def _figure_uri(fig) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _mpl(text: Any) -> str:
    """Text for matplotlib without mathtext interpretation."""
    return str(text).replace("$", r"\$")


def _finite(values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    return arr[np.isfinite(arr)]


def _img(uri: str, alt: str, cls: str) -> str:
    return f'<img class="{cls}" src="{uri}" alt="{_e(alt)}">'


def _histogram_plot(name: str, spec: Mapping[str, Any]) -> str:
    values = _finite(spec.get("values", ()))
    ref = spec.get("reference_values")
    ref = _finite(ref) if ref is not None else None
    thresholds = {str(k): float(v) for k, v in (spec.get("thresholds") or {}).items()
                  if v is not None and math.isfinite(float(v))}
    fig, ax = _figure(6.4, 3.6)
    both = values if ref is None else np.concatenate([values, ref])
    bins = np.histogram_bin_edges(both, bins=40) if both.size else 10
    if values.size:
        ax.hist(values, bins=bins, alpha=0.6, color="C0", label=f"values (n={values.size})")
    if ref is not None and ref.size:
        ax.hist(ref, bins=bins, alpha=0.5, color="C1", label=f"reference (n={ref.size})")
    for i, (label, t) in enumerate(thresholds.items()):
        ax.axvline(t, color=f"C{(i + 2) % 10}", linestyle="--", linewidth=1.5,
                   label=_mpl(f"{label} = {_fmt_number(t)}"))
    ax.set_title(_mpl(name))
    ax.set_ylabel("count")
    if values.size or (ref is not None and ref.size) or thresholds:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
    return _figure_uri(fig)


def _per_class_plot(metric: str, values: Mapping[str, Any]) -> str:
    names = [str(k) for k in values]
    points, lows, highs = [], [], []
    for v in values.values():
        if isinstance(v, (list, tuple, np.ndarray)) and len(v) == 3:
            p, lo, hi = (np.nan if x is None else float(x) for x in v)
        else:
            p = np.nan if v is None else float(v)
            lo = hi = np.nan
        points.append(p)
        lows.append(lo)
        highs.append(hi)
    points, lows, highs = (np.asarray(a, np.float64) for a in (points, lows, highs))
    fig, ax = _figure(6.4, max(1.6, 0.28 * len(names) + 1.0))
    y = np.arange(len(names))
    shown = np.where(np.isfinite(points), points, 0.0)
    ax.barh(y, shown, color=np.where(np.isfinite(points), "C0", "#cccccc"))
    has_ci = np.isfinite(lows) & np.isfinite(highs) & np.isfinite(points)
    if has_ci.any():
        err = np.stack([np.where(has_ci, points - lows, 0), np.where(has_ci, highs - points, 0)])
        ax.errorbar(shown, y, xerr=np.clip(err, 0, None), fmt="none", ecolor="#333", capsize=2)
    for yi in y[~np.isfinite(points)]:
        ax.text(0, yi, " n/a", va="center", ha="left", fontsize=8, color="#777")
    ax.set_yticks(y)
    ax.set_yticklabels([_mpl(n) for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_title(_mpl(metric))
    ax.grid(axis="x", alpha=0.3)
    return _figure_uri(fig)


def _curve_plot(name: str, points: Sequence[Tuple[int, float]]) -> str:
    arr = np.asarray([(float(s), np.nan if v is None else float(v)) for s, v in points],
                     np.float64).reshape(-1, 2)
    arr = arr[np.isfinite(arr).all(axis=1)]
    arr = arr[np.argsort(arr[:, 0], kind="stable")]
    fig, ax = _figure(4.8, 3.0)
    if arr.shape[0]:
        ax.plot(arr[:, 0], arr[:, 1], marker="." if arr.shape[0] < 50 else None, linewidth=1.2)
    else:
        ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(_mpl(name), fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    return _figure_uri(fig)


def _guard(what: str, fn, *args) -> str:
    """Renders one item; a failure becomes an error note instead of losing the whole report."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - a report with one broken plot beats no report
        log.warning("html_report: could not render %s: %s", what, exc)
        return f'<p class="error">could not render {_e(what)}: {_e(type(exc).__name__)}: {_e(exc)}</p>'


# ----------------------------------------------------------------------------------------------
# Metric tables
# ----------------------------------------------------------------------------------------------

def _is_leaf(v: Any) -> bool:
    if v is None or isinstance(v, (str, bool, numbers.Number, np.generic)):
        return True
    if isinstance(v, (list, tuple, np.ndarray)):
        return all(_num_or_none(x) or isinstance(x, (str, np.generic)) for x in v)
    return False


def _is_matrix(d: Mapping[str, Any]) -> bool:
    """{row: {col: leaf}} with at least two rows sharing the same columns."""
    if len(d) < 2 or not all(isinstance(v, Mapping) and v for v in d.values()):
        return False
    keys = [tuple(v.keys()) for v in d.values()]
    return all(k == keys[0] for k in keys) and all(_is_leaf(x) for v in d.values() for x in v.values())


def _is_per_class(key: str, d: Mapping[str, Any]) -> bool:
    k = key.lower()
    named = k.startswith(("per_", "by_")) or k.endswith(("per_class", "per_pathology", "_by_class"))
    return named and len(d) > 0 and all(_is_leaf(v) for v in d.values())


def _value_cell(v: Any, key: str = "") -> str:
    return f'<td class="num">{_e(format_value(v, key))}</td>'


def _matrix_table(title: str, d: Mapping[str, Mapping[str, Any]]) -> str:
    cols = list(next(iter(d.values())).keys())
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    rows = "".join(f"<tr><th>{_e(r)}</th>" + "".join(_value_cell(v.get(c), str(c)) for c in cols) + "</tr>"
                   for r, v in d.items())
    return f"<h4>{_e(title)}</h4><table><tr><th></th>{head}</tr>{rows}</table>"


def _pairs_table(title: str, d: Mapping[str, Any], header: Tuple[str, str] = ("class", "value")) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th>{_value_cell(v, str(k))}</tr>" for k, v in d.items())
    return f"<h4>{_e(title)}</h4><table><tr><th>{_e(header[0])}</th><th>{_e(header[1])}</th></tr>{rows}</table>"


def _records_table(title: str, records: Sequence[Mapping[str, Any]]) -> str:
    cols: List[str] = []
    for r in records:
        for k in r:
            if k not in cols:
                cols.append(k)
    shown = records[:_MAX_RECORD_ROWS]
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    rows = "".join("<tr>" + "".join(_value_cell(r.get(c), str(c)) for c in cols) + "</tr>" for r in shown)
    more = (f'<p class="meta">&hellip; {len(records) - len(shown)} more rows</p>'
            if len(records) > len(shown) else "")
    return f"<h4>{_e(title)}</h4><table><tr>{head}</tr>{rows}</table>{more}"


def _walk(prefix: str, key: str, value: Any, rows: List[Tuple[str, str]], tables: List[str]) -> None:
    if isinstance(value, Mapping):
        if not value:
            rows.append((prefix, DASH))
        elif _is_matrix(value):
            tables.append(_matrix_table(prefix, value))
        elif _is_per_class(key, value):
            tables.append(_pairs_table(prefix, value))
        else:
            for k, v in value.items():
                _walk(f"{prefix}.{k}" if prefix else str(k), str(k), v, rows, tables)
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) for v in value):
        tables.append(_records_table(prefix, value))
    else:
        rows.append((prefix, format_value(value, key)))


def _metric_group(name: str, value: Any) -> str:
    rows: List[Tuple[str, str]] = []
    tables: List[str] = []
    if isinstance(value, Mapping) and not _is_matrix(value) and not _is_per_class(name, value):
        for k, v in value.items():
            _walk(str(k), str(k), v, rows, tables)
    else:
        _walk(name, name, value, rows, tables)
    out = [f"<h3>{_e(name)}</h3>"]
    if rows:
        out.append("<table><tr><th>metric</th><th>value</th></tr>" + "".join(
            f'<tr><td>{_e(k)}</td><td class="num">{_e(v)}</td></tr>' for k, v in rows) + "</table>")
    out.extend(tables)
    if not rows and not tables:
        out.append(NOT_COMPUTED)
    return "".join(out)


def _metrics_section(metrics: Any) -> str:
    if not isinstance(metrics, Mapping) or not metrics:
        return NOT_COMPUTED
    groups = [(str(k), v) for k, v in metrics.items() if isinstance(v, Mapping)]
    loose = {str(k): v for k, v in metrics.items() if not isinstance(v, Mapping)}
    parts = []
    if loose:
        parts.append(_metric_group("summary", loose))
    parts.extend(_metric_group(k, v) for k, v in groups)
    return "".join(parts)


def _definition_list(d: Any) -> str:
    if not isinstance(d, Mapping) or not d:
        return NOT_COMPUTED
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(_plain(v))}</dd>" for k, v in d.items()) + "</dl>"


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------

def _sample_card(sample: Mapping[str, Any]) -> str:
    images = list(sample.get("images") or ())
    captions = [str(c) for c in (sample.get("captions") or ())]
    figs = []
    for i, image in enumerate(images):
        cap = captions[i] if i < len(captions) else ""
        img = _guard(f"image {i}", lambda im=image, c=cap: _img(image_data_uri(im), c or "sample image", "xray"))
        figs.append(f"<figure>{img}<figcaption>{_e(cap)}</figcaption></figure>")
    body = f'<div class="views">{"".join(figs)}</div>' if figs else '<p class="empty">no images</p>'
    text = sample.get("text")
    if text:
        body += f'<pre class="report">{_e(text)}</pre>'
    return f'<div class="sample">{body}</div>'


def _samples_section(samples: Sequence[Mapping[str, Any]]) -> str:
    if not samples:
        return NOT_COMPUTED
    groups: Dict[str, List[Mapping[str, Any]]] = {}
    for s in samples:
        groups.setdefault(str(s.get("condition", "")), []).append(s)
    parts = []
    for cond, items in groups.items():
        parts.append(f"<h3>{_e(cond) if cond else '(no condition)'}</h3>")
        parts.append('<div class="samples">' + "".join(_sample_card(s) for s in items) + "</div>")
    return "".join(parts)


def _pair_card(pair: Mapping[str, Any]) -> str:
    gid, tid = pair.get("generated_id", ""), pair.get("training_id", "")
    figs = []
    for key, ident, label in (("generated", gid, "generated"), ("training", tid, "training")):
        img = _guard(f"{label} image", lambda k=key, lb=label: _img(image_data_uri(pair[k]), lb, "xray"))
        cap = f"{label}: {ident}" if ident != "" else label
        figs.append(f"<figure>{img}<figcaption>{_e(cap)}</figcaption></figure>")
    space = pair.get("space", "")
    dist = format_value(pair.get("distance"))
    label = f"{space} distance {dist}" if space else f"distance {dist}"
    return (f'<div class="pair"><div class="views">{"".join(figs)}</div>'
            f'<p class="distance">{_e(label)}</p></div>')


def _privacy_section(pairs: Sequence[Mapping[str, Any]]) -> str:
    if not pairs:
        return NOT_COMPUTED
    return '<div class="pairs">' + "".join(_pair_card(p) for p in pairs) + "</div>"


def _histograms_section(histograms: Optional[Mapping[str, Mapping[str, Any]]]) -> str:
    if not histograms:
        return NOT_COMPUTED
    parts = []
    for name, spec in histograms.items():
        plot = _guard(f"histogram {name}", lambda n=name, s=spec: _img(_histogram_plot(str(n), s),
                                                                       f"histogram {n}", "plot"))
        thr = spec.get("thresholds") or {}
        note = ("<p class=\"meta\">" + _e("; ".join(f"{k} = {format_value(v)}" for k, v in thr.items()))
                + "</p>") if thr else ""
        parts.append(f"<h3>{_e(name)}</h3>{plot}{note}")
    return "".join(parts)


def _per_class_section(per_class: Optional[Mapping[str, Mapping[str, Any]]]) -> str:
    if not per_class:
        return NOT_COMPUTED
    parts = []
    for metric, values in per_class.items():
        plot = _guard(f"per-class {metric}", lambda m=metric, v=values: _img(
            _per_class_plot(str(m), v), f"per-class {m}", "plot"))
        rows = "".join(f"<tr><th>{_e(k)}</th>{_value_cell(v, str(k))}</tr>" for k, v in (values or {}).items())
        table = (f"<details><summary>values</summary><table><tr><th>class</th><th>{_e(metric)}</th></tr>"
                 f"{rows}</table></details>") if rows else NOT_COMPUTED
        parts.append(f"<h3>{_e(metric)}</h3>{plot}{table}")
    return "".join(parts)


def _curves_section(curves: Optional[Mapping[str, Sequence[Tuple[int, float]]]]) -> str:
    if not curves:
        return NOT_COMPUTED
    plots = []
    for name, points in curves.items():
        plots.append("<figure>" + _guard(f"curve {name}", lambda n=name, p=points: _img(
            _curve_plot(str(n), list(p)), f"curve {n}", "plot")) + "</figure>")
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
            meta.append(f'<p class="meta">{_e(key)}: {_e(result[key])}</p>')
    bodies = {
        "metrics": _metrics_section(result.get("metrics")),
        "samples": _samples_section(list(samples or ())),
        "privacy": _privacy_section(list(privacy_pairs or ())),
        "histograms": _histograms_section(histograms),
        "per-class": _per_class_section(per_class),
        "curves": _curves_section(curves),
        "protocol": _definition_list(result.get("protocol")),
        "versions": _definition_list(result.get("versions")),
    }
    sections = [f'<section id="{sid}"><h2>{_e(name)}</h2>{bodies[sid]}</section>' for sid, name in _SECTIONS]
    if isinstance(result.get("extra"), Mapping) and result["extra"]:
        sections.append(f'<section id="extra"><h2>Extra</h2>{_definition_list(result["extra"])}</section>')
    nav = "<nav><ul>" + "".join(f'<li><a href="#{sid}">{_e(name)}</a></li>' for sid, name in _SECTIONS) + "</ul></nav>"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>"
            f"<h1>{_e(title)}</h1>{''.join(meta)}{nav}\n" + "\n".join(sections) + "\n</body></html>\n")


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


# ----------------------------------------------------------------------------------------------
# Training curves from TensorBoard event files
# ----------------------------------------------------------------------------------------------

def _event_dirs(workdir: str) -> List[str]:
    out = []
    for root, dirs, files in os.walk(workdir):
        dirs.sort()
        if any("tfevents" in f for f in files):
            out.append(root)
    return out


def _tag_wanted(tag: str, tags: Optional[Sequence[str]]) -> bool:
    return tags is None or any(tag == t or fnmatch.fnmatchcase(tag, t) for t in tags)


def read_curves(workdir: str, tags: Optional[Union[str, Iterable[str]]] = None) -> Dict[str, List[Tuple[int, float]]]:
    """Scalar curves ``{tag: [(step, value), ...]}`` (sorted by step) from a workdir's event files.

    Reads clu's tensor-summary scalars (``metric_writers.create_default_writer``) and old-style
    simple values, from ``workdir`` and its subdirectories (tags from ``workdir/sub`` are named
    ``sub/tag``). A step written twice (a resumed run) keeps the last value. ``tags``: names or
    glob patterns (``"train/*"``) to keep; ``None`` keeps all. An existing workdir without event
    files gives ``{}``.
    """
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.util import tensor_util

    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"read_curves: no such directory {workdir!r}")
    if isinstance(tags, str):
        tags = [tags]
    elif tags is not None:
        tags = list(tags)
    curves: Dict[str, Dict[int, float]] = {}
    for directory in _event_dirs(workdir):
        rel = os.path.relpath(directory, workdir)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        acc = ea.EventAccumulator(directory, size_guidance={ea.TENSORS: 0, ea.SCALARS: 0},
                                  purge_orphaned_data=False)
        acc.Reload()
        available = acc.Tags()
        for tag in available.get(ea.TENSORS, []):
            name = prefix + tag
            if not _tag_wanted(name, tags):
                continue
            plugin = acc.SummaryMetadata(tag).plugin_data.plugin_name
            if plugin not in ("scalars", ""):
                continue
            points = {}
            for event in acc.Tensors(tag):
                arr = tensor_util.make_ndarray(event.tensor_proto)
                if arr.size != 1 or not np.issubdtype(arr.dtype, np.number):
                    points = None
                    break
                points[int(event.step)] = float(arr.reshape(()))
            if points:
                curves.setdefault(name, {}).update(points)
        for tag in available.get(ea.SCALARS, []):
            name = prefix + tag
            if _tag_wanted(name, tags):
                curves.setdefault(name, {}).update({int(e.step): float(e.value) for e in acc.Scalars(tag)})
    return {name: sorted(points.items()) for name, points in sorted(curves.items())}
