"""Label vectors a user asks for when sampling a label-conditioned model (`--labels`, `--labels_file`).

`--labels="Cardiomegaly, Pleural Effusion"` asks for those findings; `name=0` states a finding is
absent and `name=-1` (or `name=u`) that it is uncertain; findings not named stay NaN (not
mentioned), which a model may read as negative (EMIXER) or leave out of its prompt (CXR-IRGen).
Names match CHEXPERT_LABELS case-insensitively with '_' for a space; an unknown name fails listing
the valid ones (and the closest, for a typo).
"""

from __future__ import annotations

import csv
import difflib

import numpy as np

from xray_gen.data.schema import CHEXPERT_LABELS, UNCERTAIN, empty_labels

_BY_NORM = {name.lower(): i for i, name in enumerate(CHEXPERT_LABELS)}
_VALUES = {"1": 1.0, "0": 0.0, "-1": UNCERTAIN, "u": UNCERTAIN, "": np.nan}


def label_index(name: str) -> int:
    norm = " ".join(name.replace("_", " ").split()).lower()
    if norm not in _BY_NORM:
        close = difflib.get_close_matches(norm, list(_BY_NORM), n=1)
        hint = f" (did you mean {CHEXPERT_LABELS[_BY_NORM[close[0]]]!r}?)" if close else ""
        raise ValueError(f"unknown label {name.strip()!r}{hint}; valid labels: {', '.join(CHEXPERT_LABELS)}")
    return _BY_NORM[norm]


def _value(text: str, where: str) -> float:
    key = text.strip().lower()
    if key not in _VALUES:
        raise ValueError(f"{where}: value {text!r} must be 1, 0, -1 (or u: uncertain), or empty (not mentioned)")
    return _VALUES[key]


def parse_labels(text: str) -> np.ndarray:
    """'Cardiomegaly, Edema=0, Pneumonia=-1' -> (14,) float32: 1, 0, -1 (uncertain), NaN elsewhere."""
    labels = empty_labels()
    items = [item for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError(f"--labels={text!r} names no label; valid labels: {', '.join(CHEXPERT_LABELS)}")
    for item in items:
        name, _, value = item.partition("=")
        labels[label_index(name)] = _value(value, f"--labels item {item.strip()!r}") if value.strip() else 1.0
    return labels


def read_label_file(path: str) -> tuple[list[str], np.ndarray]:
    """A CSV with one row per sample: label-name columns (1, 0, -1/u or empty) and an optional
    `id` column -> (ids, (N, 14) float32). Errors name the file, row and column."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{path}: empty (need a header of label names, e.g. Cardiomegaly,Edema)")
    header = [h.strip() for h in rows[0]]
    columns = {}
    for j, name in enumerate(header):
        if name.lower() == "id":
            continue
        try:
            columns[j] = label_index(name)
        except ValueError as e:
            raise ValueError(f"{path} header, column {j + 1}: {e}") from None
    id_col = next((j for j, h in enumerate(header) if h.lower() == "id"), None)
    ids, out = [], []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        labels = empty_labels()
        for j, c in columns.items():
            labels[c] = _value(row[j] if j < len(row) else "", f"{path} row {line}, column {header[j]!r}")
        ids.append(row[id_col].strip() if id_col is not None and id_col < len(row) and row[id_col].strip()
                   else f"row{line}")
        out.append(labels)
    if not out:
        raise ValueError(f"{path}: no rows of labels")
    return ids, np.stack(out)
