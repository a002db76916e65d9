"""Images and matplotlib plots of the HTML report, embedded as base64 PNG data URIs.

Separate from the page and the tables: everything that draws pixels (PIL for images, matplotlib's
Agg canvas without pyplot state for histograms, per-class bars and training curves) lives here,
together with :func:`guarded`, which turns a figure that fails to render into an error note.
"""

from __future__ import annotations

import base64
import io
import logging
import math
from typing import Any, Mapping, Sequence, Tuple

import numpy as np

from xray_gen.evaluation.html_report.values import escape, format_number

log = logging.getLogger(__name__)


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


def img_tag(uri: str, alt: str, cls: str) -> str:
    return f'<img class="{cls}" src="{uri}" alt="{escape(alt)}">'


def histogram_plot(name: str, spec: Mapping[str, Any]) -> str:
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
                   label=_mpl(f"{label} = {format_number(t)}"))
    ax.set_title(_mpl(name))
    ax.set_ylabel("count")
    if values.size or (ref is not None and ref.size) or thresholds:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
    return _figure_uri(fig)


def per_class_plot(metric: str, values: Mapping[str, Any]) -> str:
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


def curve_plot(name: str, points: Sequence[Tuple[int, float]]) -> str:
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


def guarded(what: str, fn, *args) -> str:
    """Renders one item; a failure becomes an error note instead of losing the whole report."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - a report with one broken plot beats no report
        log.warning("html_report: could not render %s: %s", what, exc)
        return f'<p class="error">could not render {escape(what)}: {escape(type(exc).__name__)}: {escape(exc)}</p>'
