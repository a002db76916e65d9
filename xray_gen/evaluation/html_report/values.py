"""Metric values as text for the HTML report: number formatting, intervals, escaping.

Separate from the tables, figures and page that use it: how one value reads (``0.912 [0.901,
0.925]``, ``1.23 ± 0.04``, ``–``) is decided in one place, for every part of the report.
"""

from __future__ import annotations

import html
import math
import numbers
from typing import Any, Mapping

import numpy as np

NOT_COMPUTED = '<p class="empty">not computed</p>'
DASH = "\u2013"
_MAX_INLINE_LIST = 8       # a longer list of numbers is summarised, not printed


def escape(x: Any) -> str:
    """``str(x)`` escaped for HTML text and attribute values."""
    return html.escape(str(x), quote=True)


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Number) and not isinstance(x, bool)


def is_number_or_none(x: Any) -> bool:
    return x is None or _is_number(x)


def format_number(x: Any) -> str:
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
        return format_number(value)
    if isinstance(value, (list, tuple)):
        if all(is_number_or_none(v) for v in value):
            if len(value) == 3:
                p, lo, hi = value
                return f"{format_number(p)} [{format_number(lo)}, {format_number(hi)}]"
            if len(value) == 2:
                a, b = value
                if key.lower().endswith("ci"):
                    return f"[{format_number(a)}, {format_number(b)}]"
                return f"{format_number(a)} \u00b1 {format_number(b)}"
            if len(value) > _MAX_INLINE_LIST:
                arr = np.array([np.nan if v is None else v for v in value], np.float64)
                fin = arr[np.isfinite(arr)]
                if fin.size == 0:
                    return f"{len(value)} values (none finite)"
                return (f"{len(value)} values (mean {format_number(fin.mean())}, "
                        f"min {format_number(fin.min())}, max {format_number(fin.max())})")
            return "[" + ", ".join(format_number(v) for v in value) + "]"
        if len(value) > _MAX_INLINE_LIST:
            return f"{len(value)} items"
        return ", ".join(format_value(v) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {format_value(v, str(k))}" for k, v in value.items())
    return str(value)


def plain_text(value: Any) -> str:
    """Protocol / versions values: lists joined, dicts as ``k: v``, no interval interpretation."""
    if value is None:
        return DASH
    if isinstance(value, (list, tuple)):
        return ", ".join(plain_text(v) for v in value) if value else DASH
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {plain_text(v)}" for k, v in value.items()) if value else DASH
    return str(value)
