"""The real side of :mod:`xray_gen.evaluate`: the reference split (held in memory as a
:class:`RealSet`) and the whole training split (streamed, for the privacy checks), both opened with
:func:`xray_gen.data.pipeline.open_split` and resized / equalised exactly as the data pipeline does.

It exists so that every real image and report the evaluator compares with is prepared in one place,
the same way for the reference and for the training split.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np

from xray_gen.data.schema import NUM_LABELS
from xray_gen.evaluation.generated_folder import VIEWS


def parse_reference(reference: str) -> Tuple[str, str]:
    """(source, split) of a ``--reference`` such as ``phantom/test``; a clear error otherwise."""
    from xray_gen.data.pipeline import SOURCES, SPLITS

    source, sep, split = str(reference).partition("/")
    if not sep or source not in SOURCES or split not in SPLITS:
        raise ValueError(f"--reference={reference!r}: expected SOURCE/SPLIT with SOURCE one of "
                         f"{', '.join(SOURCES)} and SPLIT one of {', '.join(SPLITS)} (e.g. phantom/test)")
    return source, split


def _real_image(image, resolution: int, equalize: bool) -> np.ndarray:
    from xray_gen.data.pipeline import _resize, equalize_histogram

    image = np.asarray(image, np.uint8)
    if image.ndim == 3:
        image = image[..., 0]
    image = _resize(image, resolution)
    return equalize_histogram(image) if equalize else image


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def study_text(ex: Dict[str, Any], section: str = "findings+impression") -> str:
    """A study's report text for comparisons: the section(s) asked for, without headers."""
    if section == "findings":
        return _text(ex.get("findings", ""))
    if section == "impression":
        return _text(ex.get("impression", ""))
    return "\n".join(t for t in (_text(ex.get("findings", "")), _text(ex.get("impression", ""))) if t)


def _views_to_open(data_config, need_lateral: bool) -> Tuple[str, ...]:
    # The phantom renders only the views asked for; real builders would *require* laterals if asked,
    # dropping frontal-only studies, and return the lateral anyway when a study has one.
    if data_config.source == "phantom" and need_lateral:
        return VIEWS
    return ("frontal",)


@dataclasses.dataclass
class RealSet:
    name: str
    ids: List[str]
    patients: List[str]
    labels: np.ndarray  # (N, 14)
    reports: Dict[str, List[str]]  # section -> texts
    images: Dict[str, np.ndarray]  # view -> (n_view, R, R)
    index: Dict[str, np.ndarray]  # view -> study index of each image

    def __len__(self):
        return len(self.ids)


def load_reference(data_config, split: str, need_lateral: bool, num_examples: int = -1) -> RealSet:
    from xray_gen.data.pipeline import open_split

    source = open_split(data_config, split, views=_views_to_open(data_config, need_lateral))
    n = len(source) if num_examples is None or num_examples <= 0 else min(len(source), int(num_examples))
    res, eq = int(data_config.resolution), bool(data_config.get("equalize", False))
    ids, patients, labels = [], [], []
    reports = {s: [] for s in ("findings+impression", "findings", "impression", "report")}
    images = {v: [] for v in VIEWS}
    index = {v: [] for v in VIEWS}
    for i in range(n):
        ex = source[i]
        ids.append(_text(ex.get("study_id", i)))
        patients.append(_text(ex.get("patient_id", "")))
        labels.append(np.asarray(ex["labels"], np.float32))
        for s in reports:
            reports[s].append(study_text(ex, "findings+impression" if s == "report" else s))
        for v in VIEWS:
            img = np.asarray(ex.get(v, np.zeros((0, 0), np.uint8)))
            if ex.get(f"has_{v}", img.size > 0) and img.size > 0:
                images[v].append(_real_image(img, res, eq))
                index[v].append(i)
    return RealSet(
        name=f"{data_config.source}/{split}", ids=ids, patients=patients,
        labels=np.stack(labels) if labels else np.zeros((0, NUM_LABELS), np.float32), reports=reports,
        images={v: np.stack(images[v]) if images[v] else np.zeros((0, res, res), np.uint8) for v in VIEWS},
        index={v: np.asarray(index[v], np.int64) for v in VIEWS})


class TrainStream:
    """The images of one view of a whole split, as batches, read once per iteration; remembers
    which study each row came from (privacy indices count rows)."""

    def __init__(self, data_config, split: str, view: str, limit: int = -1, batch: int = 256):
        from xray_gen.data.pipeline import open_split

        self.source = open_split(data_config, split, views=_views_to_open(data_config, view == "lateral"))
        self.view, self.batch = view, batch
        self.n = len(self.source) if limit is None or limit <= 0 else min(limit, len(self.source))
        self.res, self.eq = int(data_config.resolution), bool(data_config.get("equalize", False))
        self.rows: List[int] = []

    def __iter__(self) -> Iterator[np.ndarray]:
        self.rows = []
        buf = []
        for i in range(self.n):
            img = np.asarray(self.source[i].get(self.view, np.zeros((0, 0), np.uint8)))
            if img.size == 0:
                continue
            buf.append(_real_image(img, self.res, self.eq))
            self.rows.append(i)
            if len(buf) == self.batch:
                yield np.stack(buf)
                buf = []
        if buf:
            yield np.stack(buf)

    def study(self, row: int) -> Tuple[str, np.ndarray]:
        ex = self.source[self.rows[row]]
        return _text(ex.get("study_id", self.rows[row])), _real_image(ex[self.view], self.res, self.eq)


def iter_train_reports(data_config, split: str, limit: int = -1, section: str = "findings+impression"):
    from xray_gen.data.pipeline import open_split

    source = open_split(data_config, split, views=("frontal",))
    n = len(source) if limit is None or limit <= 0 else min(limit, len(source))
    for i in range(n):
        if hasattr(source, "report"):  # the phantom writes a report without rendering images
            findings, impression = source.report(i)
            yield study_text({"findings": findings, "impression": impression}, section)
        else:
            yield study_text(source[i], section)
