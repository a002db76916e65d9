"""Reading the files of a user's download: finding them, CSV rows, label cells, split lists.

Every builder reads a directory the user downloaded themselves (`manual_dir`; credentialed data is
never fetched). This module holds the record-level parsing they share; a malformed row is skipped
and counted in the `BuildSummary`, a file that is not what we expect raises. Images are read by
`image_reading`.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from pathlib import Path
from typing import Callable, Sequence

from xray_gen.data.builders.build_summary import BuildSummary
from xray_gen.data.builders.splits import canonical_split


def open_text(path: str | os.PathLike) -> io.TextIOBase:
    """Opens a text/CSV file, transparently gunzipping `*.gz`."""
    path = str(path)
    if path.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, "r", encoding="utf-8", newline="")


def find_file(root: str | os.PathLike, names: Sequence[str], max_depth: int = 3) -> Path | None:
    """First file named one of `names` (glob patterns allowed) at depth <= max_depth under root."""
    root = Path(root)
    for depth in range(max_depth + 1):
        for name in names:
            pattern = "/".join(["*"] * depth + [name])
            hits = sorted(p for p in root.glob(pattern) if p.is_file())
            if hits:
                return hits[0]
    return None


def resolve_option_path(manual_dir: Path, value: str | None) -> Path | None:
    """An option path: absolute, or relative to manual_dir."""
    if value is None or value == "":
        return None
    p = Path(value)
    return p if p.is_absolute() else manual_dir / p


def rel(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """Path relative to root where possible (for readable summaries)."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def csv_rows(path: Path, required: Sequence[str], summary: BuildSummary, root: Path):
    """Yields (line_no, row dict) of a CSV, checking the header and skipping malformed rows.

    A missing required column raises (the file is not what we expect). Rows with too few / too
    many fields or empty required fields are skipped and counted as "malformed CSV row".
    """
    with open_text(path) as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ValueError(f"{path}: empty CSV file") from None
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {missing}; found {header}. Is this the right file?"
            )
        for line_no, values in enumerate(reader, start=2):
            if not values or all(not v.strip() for v in values):
                continue
            where = f"{rel(path, root)}:{line_no}"
            if len(values) != len(header):
                summary.skip("malformed CSV row", where)
                continue
            row = dict(zip(header, (v.strip() for v in values)))
            if any(not row[c] for c in required):
                summary.skip("malformed CSV row", where)
                continue
            yield line_no, row


def parse_label_value(value: str) -> float:
    """CheXpert-style label cell: '' -> NaN, '1.0'/'0.0'/'-1.0' -> float; anything else raises."""
    value = value.strip()
    if value == "":
        return float("nan")
    v = float(value)
    if v not in (1.0, 0.0, -1.0):
        raise ValueError(f"label value {value!r} not in 1/0/-1/blank")
    return v


def read_split_file(path: Path, key_column: str, summary: BuildSummary, root: Path,
                    normalise: Callable[[str], str] = lambda s: s) -> dict[str, str]:
    """CSV `<key_column>,split` -> {normalised key: split}; bad split names are skipped+counted."""
    out = {}
    for line_no, row in csv_rows(path, (key_column, "split"), summary, root):
        split = canonical_split(row["split"])
        if split is None:
            summary.skip("malformed CSV row", f"{rel(path, root)}:{line_no}")
            continue
        out[normalise(row[key_column])] = split
    return out
