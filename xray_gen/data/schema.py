"""The one record every data source yields: a `Study`.

Sources (phantom, Open-i, MIMIC-CXR, ChestX-ray14, CheXpert) never know about models; models ask
the pipeline for what they need from Studies. Label values follow CheXpert: 1 positive, 0 negative,
-1 uncertain, NaN not mentioned.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
NUM_LABELS = len(CHEXPERT_LABELS)
LABEL_INDEX: dict[str, int] = {name: i for i, name in enumerate(CHEXPERT_LABELS)}

POSITIVE = 1.0
NEGATIVE = 0.0
UNCERTAIN = -1.0
NOT_MENTIONED = float("nan")

FRONTAL_VIEWS = ("PA", "AP", "AP_SUPINE")
LATERAL_VIEWS = ("LATERAL", "LL", "RL")


def empty_labels() -> np.ndarray:
    """A label vector with every observation 'not mentioned'."""
    return np.full((NUM_LABELS,), np.nan, dtype=np.float32)


def labels_from_dict(values: Mapping[str, float]) -> np.ndarray:
    """Label vector from {observation name: value}; unknown names raise naming the valid ones."""
    out = empty_labels()
    for name, value in values.items():
        if name not in LABEL_INDEX:
            raise KeyError(f"unknown observation {name!r}; valid: {', '.join(CHEXPERT_LABELS)}")
        out[LABEL_INDEX[name]] = value
    return out


def labels_to_dict(labels: np.ndarray) -> dict[str, float]:
    """{observation: value} for the mentioned observations only."""
    return {n: float(v) for n, v in zip(CHEXPERT_LABELS, labels) if not np.isnan(v)}


def binarize(labels: np.ndarray, uncertain_as: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Targets and a validity mask for training a classifier.

    Uncertain (-1) maps to `uncertain_as` (the 'U-Ones' policy by default; NaN to ignore it),
    not mentioned maps to 0 (CheXpert's convention: unmentioned observations are negative).
    """
    labels = np.asarray(labels, dtype=np.float32)
    target = np.where(np.isnan(labels), 0.0, labels)
    target = np.where(target == UNCERTAIN, uncertain_as, target)
    mask = ~np.isnan(target)
    return np.nan_to_num(target).astype(np.float32), mask.astype(np.float32)


@dataclasses.dataclass
class Study:
    """One radiology study: images, report sections, labels and view metadata.

    Images are greyscale uint8 arrays of shape (H, W) (None when the view is absent); resizing and
    normalisation happen in the pipeline, not in sources.
    """

    patient_id: str
    study_id: str
    frontal: np.ndarray | None
    lateral: np.ndarray | None
    findings: str
    impression: str
    labels: np.ndarray
    frontal_view: str = ""
    lateral_view: str = ""
    source: str = ""
    extra_labels: dict[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.float32)
        if self.labels.shape != (NUM_LABELS,):
            raise ValueError(
                f"study {self.study_id!r}: labels must have shape ({NUM_LABELS},), got {self.labels.shape}"
            )
        for view in ("frontal", "lateral"):
            image = getattr(self, view)
            if image is not None and (image.ndim != 2 or image.dtype != np.uint8):
                raise ValueError(
                    f"study {self.study_id!r}: {view} image must be a 2-D uint8 array, "
                    f"got shape {image.shape} dtype {image.dtype}"
                )

    @property
    def report(self) -> str:
        """The report as one text, with the usual section headers."""
        parts = []
        if self.findings:
            parts.append(f"FINDINGS: {self.findings}")
        if self.impression:
            parts.append(f"IMPRESSION: {self.impression}")
        return "\n".join(parts)

    def to_example(self) -> dict[str, Any]:
        """Flat dict of numpy values / strings, the format pipelines and TFDS builders use.

        Missing images become (0, 0) arrays with `has_<view>` False, so every example has the same
        keys and dtypes.
        """
        empty = np.zeros((0, 0), np.uint8)
        return {
            "patient_id": self.patient_id,
            "study_id": self.study_id,
            "frontal": self.frontal if self.frontal is not None else empty,
            "lateral": self.lateral if self.lateral is not None else empty,
            "has_frontal": self.frontal is not None,
            "has_lateral": self.lateral is not None,
            "findings": self.findings,
            "impression": self.impression,
            "labels": self.labels,
            "frontal_view": self.frontal_view,
            "lateral_view": self.lateral_view,
            "source": self.source,
        }

    @classmethod
    def from_example(cls, ex: Mapping[str, Any]) -> "Study":
        """Inverse of `to_example`; accepts bytes for strings and (H, W, 1) images (TFDS)."""

        def text(key):
            v = ex.get(key, "")
            return v.decode("utf-8") if isinstance(v, bytes) else str(v)

        def image(key):
            if not bool(ex.get(f"has_{key}", True)):
                return None
            img = np.asarray(ex[key])
            if img.ndim == 3 and img.shape[-1] == 1:
                img = img[..., 0]
            return img.astype(np.uint8) if img.size else None

        return cls(
            patient_id=text("patient_id"),
            study_id=text("study_id"),
            frontal=image("frontal"),
            lateral=image("lateral"),
            findings=text("findings"),
            impression=text("impression"),
            labels=np.asarray(ex["labels"], np.float32),
            frontal_view=text("frontal_view"),
            lateral_view=text("lateral_view"),
            source=text("source"),
        )
