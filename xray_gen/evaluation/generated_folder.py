"""The generated side of the evaluator: a folder of PNGs (any nesting) and its optional
``metadata.csv``, read into a :class:`GeneratedSet`; and :func:`write_generated`, which the models'
``--mode=evaluate`` use to write their generated sets in that format.

It exists so that the input format has one owner: the column vocabulary and the clear
:class:`MetadataError` s for a malformed CSV, the image decoding that matches the data pipeline
(:data:`INPUT_RESIZE`), the counting of unreadable / unlisted / non-square files for the result's
``inputs`` summary, and the grouping of rows into studies (:class:`Unit`, by ``pair_id``). The format
itself is described in the docstring of :mod:`xray_gen.evaluate`.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from absl import logging

from xray_gen.data.schema import CHEXPERT_LABELS, FRONTAL_VIEWS, LATERAL_VIEWS, NUM_LABELS

VIEWS = ("frontal", "lateral")
METADATA_FILE = "metadata.csv"
BASE_COLUMNS = ("file", "id", "view", "report", "findings", "impression", "pair_id")
MAX_LISTED = 10  # unreadable files named in the result

INPUT_RESIZE = ("Pillow: 1 channel uint8 (RGB(A) -> ITU-R 601 luma, alpha dropped; >8-bit min-max "
                "scaled per image), bilinear resize to data.resolution x data.resolution (area-aware "
                "when shrinking, aspect ratio not kept), as the pipeline resizes real images")


class MetadataError(ValueError):
    """metadata.csv is malformed (unknown / missing column, bad value)."""


def read_image(path: str, resolution: int) -> Tuple[np.ndarray, bool]:
    """(uint8 (R, R) image, whether the file was square) of an image file; raises on unreadable."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            a = np.asarray(im, np.float64)
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
            im = Image.fromarray(np.round(a).astype(np.uint8))
        elif im.mode != "L":
            im = im.convert("L")
        square = im.size[0] == im.size[1]
        if im.size != (resolution, resolution):
            im = im.resize((resolution, resolution), Image.BILINEAR)
        return np.asarray(im, np.uint8).copy(), square


def _norm_name(name: str) -> str:
    return re.sub(r"\s+", " ", name.replace("_", " ").replace("-", " ")).strip().lower()


_LABEL_BY_NORM = {_norm_name(n): n for n in CHEXPERT_LABELS}


@dataclasses.dataclass
class Unit:
    """One generated study: a single image or a frontal+lateral pair, with its report/labels."""

    key: str
    id: str = ""
    frontal: Optional[int] = None  # row in GeneratedSet
    lateral: Optional[int] = None
    report: str = ""
    labels: Optional[np.ndarray] = None  # (14,) or None when unlabeled

    @property
    def first_row(self) -> int:
        """The frontal's row, else the lateral's."""
        return self.frontal if self.frontal is not None else self.lateral


@dataclasses.dataclass
class GeneratedSet:
    files: List[str]
    ids: List[str]
    views: List[str]
    images: np.ndarray  # (N, R, R) uint8
    labels: np.ndarray  # (N, 14) float32, NaN = blank
    labeled: np.ndarray  # (N,) bool: the row has at least one label value
    reports: List[str]
    pair_ids: List[str]
    units: List[Unit]
    report_section: str  # which reference text reports are compared with
    summary: Dict[str, Any]

    def rows(self, view: str) -> np.ndarray:
        return np.asarray([i for i, v in enumerate(self.views) if v == view], np.int64)

    def display_id(self, row: int) -> str:
        return self.ids[row] or self.files[row]

    @property
    def has_labels(self) -> bool:
        return bool(self.labeled.any())

    @property
    def has_reports(self) -> bool:
        return any(u.report for u in self.units)

    @property
    def compared_section(self) -> str:
        """The reference report section ('findings+impression', 'findings' or 'impression') that
        the generated reports are compared with."""
        section = self.report_section or "findings+impression"
        return "findings+impression" if section == "report" else section


def _parse_view(value: str, row: int) -> str:
    v = value.strip()
    if not v or v.lower() == "frontal" or v.upper() in FRONTAL_VIEWS:
        return "frontal"
    if v.lower() == "lateral" or v.upper() in LATERAL_VIEWS:
        return "lateral"
    raise MetadataError(f"metadata row {row}, column 'view': {value!r} is not frontal|lateral "
                        f"(or one of {', '.join(FRONTAL_VIEWS + LATERAL_VIEWS)})")


def _parse_label(value: str, column: str, row: int) -> float:
    v = value.strip().lower()
    if v in ("", "nan", "none", "na"):
        return float("nan")
    try:
        f = float(v)
    except ValueError:
        f = None
    if f not in (1.0, 0.0, -1.0):
        raise MetadataError(f"metadata row {row}, column {column!r}: {value!r} is not 1, 0, -1 or blank")
    return f


def read_metadata(path: str, ignore_columns: Sequence[str] = ()) -> Tuple[List[Dict[str, Any]], str]:
    """Rows of metadata.csv as dicts (file, id, view, report, pair_id, labels (14,)); the report
    section the CSV provides ('report', 'findings', 'impression', 'findings+impression' or '')."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise MetadataError(f"{path}: empty file (need a header with a 'file' column)") from None
        body = list(reader)
    ignore = {_norm_name(c) for c in ignore_columns}
    columns: Dict[str, int] = {}
    label_cols: Dict[int, int] = {}  # csv column -> label index
    for j, name in enumerate(header):
        norm = _norm_name(name)
        if norm in ignore:
            continue
        base = norm.replace(" ", "_")
        if base in BASE_COLUMNS:
            columns[base] = j
        elif norm in _LABEL_BY_NORM:
            label_cols[j] = CHEXPERT_LABELS.index(_LABEL_BY_NORM[norm])
        else:
            raise MetadataError(
                f"{path}: unknown column {name!r}. Valid columns: {', '.join(BASE_COLUMNS)} and the "
                f"label columns {', '.join(CHEXPERT_LABELS)} (case-insensitive, '_' for a space); "
                f"pass --ignore_columns={name} to ignore it")
    if "file" not in columns:
        raise MetadataError(f"{path}: required column 'file' is missing (columns: {', '.join(header)})")
    if "report" in columns:
        section = "report"
    else:
        section = "+".join(s for s in ("findings", "impression") if s in columns)

    def cell(r, name):
        j = columns.get(name)
        return r[j].strip() if j is not None and j < len(r) else ""

    rows = []
    for i, r in enumerate(body, start=2):  # line 1 is the header
        if not any(c.strip() for c in r):
            continue
        file = cell(r, "file")
        if not file:
            raise MetadataError(f"{path} row {i}, column 'file': empty")
        labels = np.full(NUM_LABELS, np.nan, np.float32)
        for j, c in label_cols.items():
            labels[c] = _parse_label(r[j] if j < len(r) else "", header[j], i)
        if section == "report":
            report = cell(r, "report")
        else:
            report = "\n".join(t for t in (cell(r, "findings"), cell(r, "impression")) if t)
        rows.append({"file": file, "id": cell(r, "id"), "view": _parse_view(cell(r, "view"), i),
                     "report": report, "pair_id": cell(r, "pair_id"), "labels": labels, "line": i})
    seen: Dict[str, int] = {}
    for row in rows:
        if row["file"] in seen:
            raise MetadataError(f"{path} row {row['line']}, column 'file': {row['file']!r} is listed "
                                f"twice (first on row {seen[row['file']]})")
        seen[row["file"]] = row["line"]
    return rows, section


def _find_pngs(directory: str) -> List[str]:
    out = []
    for root, _, names in os.walk(directory):
        for n in names:
            if n.lower().endswith(".png"):
                out.append(os.path.relpath(os.path.join(root, n), directory))
    return sorted(out)


def load_generated(directory: str, resolution: int, metadata: Optional[str] = None,
                   ignore_columns: Sequence[str] = ()) -> GeneratedSet:
    """The generated images of ``directory`` (format: :mod:`xray_gen.evaluate`), 1-channel uint8 at
    ``resolution``."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"--generated={directory}: not a directory")
    if metadata is None and os.path.isfile(os.path.join(directory, METADATA_FILE)):
        metadata = os.path.join(directory, METADATA_FILE)
    pngs = _find_pngs(directory)
    section = ""
    if metadata:
        rows, section = read_metadata(metadata, ignore_columns)
        listed = {os.path.normpath(r["file"]) for r in rows}
        unlisted = [p for p in pngs if os.path.normpath(p) not in listed]
    else:
        rows = [{"file": p, "id": "", "view": "frontal", "report": "", "pair_id": "",
                 "labels": np.full(NUM_LABELS, np.nan, np.float32)} for p in pngs]
        unlisted = []
    keep, images, unreadable, non_square = [], [], [], 0
    for r in rows:
        path = r["file"] if os.path.isabs(r["file"]) else os.path.join(directory, r["file"])
        try:
            image, square = read_image(path, resolution)
        except Exception as e:  # noqa: BLE001 - any decoder error means "unreadable"
            unreadable.append(f"{r['file']} ({type(e).__name__}: {str(e)[:80]})")
            continue
        non_square += not square
        keep.append(r)
        images.append(image)
    if unreadable:
        logging.warning("skipped %d unreadable image(s), e.g. %s", len(unreadable), "; ".join(unreadable[:3]))
    if unlisted:
        logging.warning("%d PNG(s) in %s are not listed in %s and were ignored", len(unlisted), directory, metadata)
    labels = (np.stack([r["labels"] for r in keep]) if keep else np.zeros((0, NUM_LABELS), np.float32))
    labeled = ~np.all(np.isnan(labels), axis=1)

    # Studies: rows sharing a pair_id, else one row each.
    units: Dict[str, Unit] = {}
    malformed = []
    for i, r in enumerate(keep):
        key = f"pair:{r['pair_id']}" if r["pair_id"] else f"row:{i}"
        u = units.setdefault(key, Unit(key=key))
        if getattr(u, r["view"]) is not None:
            malformed.append(r["pair_id"])
            continue
        setattr(u, r["view"], i)
        u.id = u.id or r["id"]
        u.report = u.report or r["report"]
        if u.labels is None and labeled[i]:
            u.labels = labels[i]
    views_count = {v: sum(r["view"] == v for r in keep) for v in VIEWS}
    summary = {
        "directory": os.path.abspath(directory),
        "metadata": os.path.abspath(metadata) if metadata else None,
        "png_files_found": len(pngs),
        "listed": len(rows),
        "loaded": len(keep),
        "unreadable": len(unreadable),
        "unreadable_files": unreadable[:MAX_LISTED],
        "unlisted_pngs_ignored": len(unlisted),
        "unlisted_examples": unlisted[:MAX_LISTED],
        "non_square_resized": non_square,
        "per_view": views_count,
        "labeled_images": int(labeled.sum()),
        "with_report": sum(bool(r["report"]) for r in keep),
        "pairs": sum(u.frontal is not None and u.lateral is not None for u in units.values()),
        "pair_ids_with_repeated_view": sorted(set(malformed))[:MAX_LISTED],
        "resolution": int(resolution),
    }
    return GeneratedSet(
        files=[r["file"] for r in keep], ids=[r["id"] for r in keep], views=[r["view"] for r in keep],
        images=np.stack(images) if images else np.zeros((0, resolution, resolution), np.uint8),
        labels=labels, labeled=labeled, reports=[r["report"] for r in keep],
        pair_ids=[r["pair_id"] for r in keep], units=list(units.values()), report_section=section,
        summary=summary)


_HEADER = re.compile(r"(?im)^\s*(findings|impression)\s*:\s*")


def strip_headers(text: str) -> str:
    """'FINDINGS: a\\nIMPRESSION: b' -> 'a\\nb' (generated reports may carry the usual headers)."""
    return _HEADER.sub("", str(text)).strip()


def _label_cell(value: float) -> str:
    return "" if np.isnan(value) else str(int(value))


def write_generated(directory: str, items: Sequence[Dict[str, Any]], report_column: str = "report") -> str:
    """Writes generated images and what they were made from as a folder the evaluator reads:
    ``NNNNN_<view>.png`` per item (files named by position, never by id) and ``metadata.csv``.

    Each item: ``image`` (uint8 (H, W[, 1]) or float in [-1, 1]), ``view``, and optionally ``id``
    (the study id it was generated for), ``pair_id``, ``report``, ``labels`` ((14,), NaN = blank).
    `report_column` ("report", "findings" or "impression"): which real report sections the
    evaluator compares the reports with. PNGs of an earlier call in `directory` are removed first.
    Returns the metadata path."""
    from PIL import Image

    from xray_gen.files import atomic_open
    from xray_gen.images import to_uint8

    os.makedirs(directory, exist_ok=True)
    for old in _find_pngs(directory):
        os.remove(os.path.join(directory, old))
    if report_column not in ("report", "findings", "impression"):
        raise ValueError(f"report_column={report_column!r} is not one of report, findings, impression")
    header = list(BASE_COLUMNS[:3]) + [report_column, "pair_id"] + list(CHEXPERT_LABELS)
    rows = []
    for i, item in enumerate(items):
        view = item["view"]
        if view not in VIEWS:
            raise ValueError(f"generated item {i}: view {view!r} is not one of {VIEWS}")
        image = np.asarray(item["image"])
        image = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
        if image.dtype != np.uint8:
            image = to_uint8(image)
        name = f"{i:05d}_{view}.png"
        Image.fromarray(image).save(os.path.join(directory, name))
        labels = item.get("labels")
        cells = ([""] * NUM_LABELS if labels is None else [_label_cell(float(v)) for v in np.asarray(labels)])
        rows.append([name, str(item.get("id", "")), view, str(item.get("report", "")), str(item.get("pair_id", ""))]
                    + cells)
    path = os.path.join(directory, METADATA_FILE)
    with atomic_open(path, "w", suffix=".csv.tmp") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path
