"""Metric tables of the HTML report: a nested metric dict flattened into HTML tables.

Nested metric dicts become dotted names grouped by their top-level key; a dict of per-class
values (a dict whose values are dicts sharing the same keys, or a ``per_*``/``by_*`` dict of
plain values) and a list of records (dicts) become their own small tables. Separate from the
page: deciding the shape of a table from the shape of the data is its own job.
"""

from __future__ import annotations

import numbers
from typing import Any, List, Mapping, Sequence, Tuple

import numpy as np

from xray_gen.evaluation.html_report.values import (DASH, NOT_COMPUTED, escape, format_value,
                                                    is_number_or_none, plain_text)

_MAX_RECORD_ROWS = 25      # rows of a list-of-records table before "... n more"


def _is_leaf(v: Any) -> bool:
    if v is None or isinstance(v, (str, bool, numbers.Number, np.generic)):
        return True
    if isinstance(v, (list, tuple, np.ndarray)):
        return all(is_number_or_none(x) or isinstance(x, (str, np.generic)) for x in v)
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


def value_cell(v: Any, key: str = "") -> str:
    return f'<td class="num">{escape(format_value(v, key))}</td>'


def _matrix_table(title: str, d: Mapping[str, Mapping[str, Any]]) -> str:
    cols = list(next(iter(d.values())).keys())
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    rows = "".join(f"<tr><th>{escape(r)}</th>" + "".join(value_cell(v.get(c), str(c)) for c in cols) + "</tr>"
                   for r, v in d.items())
    return f"<h4>{escape(title)}</h4><table><tr><th></th>{head}</tr>{rows}</table>"


def _pairs_table(title: str, d: Mapping[str, Any], header: Tuple[str, str] = ("class", "value")) -> str:
    rows = "".join(f"<tr><th>{escape(k)}</th>{value_cell(v, str(k))}</tr>" for k, v in d.items())
    head = f"<tr><th>{escape(header[0])}</th><th>{escape(header[1])}</th></tr>"
    return f"<h4>{escape(title)}</h4><table>{head}{rows}</table>"


def _records_table(title: str, records: Sequence[Mapping[str, Any]]) -> str:
    cols: List[str] = []
    for r in records:
        for k in r:
            if k not in cols:
                cols.append(k)
    shown = records[:_MAX_RECORD_ROWS]
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    rows = "".join("<tr>" + "".join(value_cell(r.get(c), str(c)) for c in cols) + "</tr>" for r in shown)
    more = (f'<p class="meta">&hellip; {len(records) - len(shown)} more rows</p>'
            if len(records) > len(shown) else "")
    return f"<h4>{escape(title)}</h4><table><tr>{head}</tr>{rows}</table>{more}"


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
    out = [f"<h3>{escape(name)}</h3>"]
    if rows:
        out.append("<table><tr><th>metric</th><th>value</th></tr>" + "".join(
            f'<tr><td>{escape(k)}</td><td class="num">{escape(v)}</td></tr>' for k, v in rows) + "</table>")
    out.extend(tables)
    if not rows and not tables:
        out.append(NOT_COMPUTED)
    return "".join(out)


def metrics_section(metrics: Any) -> str:
    if not isinstance(metrics, Mapping) or not metrics:
        return NOT_COMPUTED
    groups = [(str(k), v) for k, v in metrics.items() if isinstance(v, Mapping)]
    loose = {str(k): v for k, v in metrics.items() if not isinstance(v, Mapping)}
    parts = []
    if loose:
        parts.append(_metric_group("summary", loose))
    parts.extend(_metric_group(k, v) for k, v in groups)
    return "".join(parts)


def definition_list(d: Any) -> str:
    if not isinstance(d, Mapping) or not d:
        return NOT_COMPUTED
    return "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(plain_text(v))}</dd>" for k, v in d.items()) + "</dl>"
