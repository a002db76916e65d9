"""What one built example looks like: the TFDS features and the example dict of a study.

Every real-dataset builder yields examples in the format of `Study.to_example()` plus a few
source-specific extras; `study_features` declares that format to TFDS and `make_example` fills it
for one study. Separate from the builder plumbing because the sources' `load()` use it directly.

Absent views are stored as a 1x1 zero image with `has_<view>` False; `Study.from_example` maps
them to None because it checks `has_<view>` first.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from xray_gen.data import schema


def study_features(extra: Mapping[str, Any] | None = None):
    """TFDS features mirroring `Study.to_example()`, plus source-specific `extra` features."""
    import tensorflow_datasets as tfds

    feats = {
        "patient_id": tfds.features.Text(),
        "study_id": tfds.features.Text(),
        "frontal": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
        "lateral": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
        "has_frontal": np.bool_,
        "has_lateral": np.bool_,
        "findings": tfds.features.Text(),
        "impression": tfds.features.Text(),
        "labels": tfds.features.Tensor(shape=(schema.NUM_LABELS,), dtype=np.float32),
        "frontal_view": tfds.features.Text(),
        "lateral_view": tfds.features.Text(),
        "source": tfds.features.Text(),
    }
    if extra:
        feats.update(extra)
    return tfds.features.FeaturesDict(feats)


def absent_image() -> np.ndarray:
    """Placeholder stored for a missing view (PNG cannot hold a 0x0 image); has_<view> is False."""
    return np.zeros((1, 1, 1), np.uint8)


def make_example(
    *,
    patient_id: str,
    study_id: str,
    frontal: np.ndarray | None,
    lateral: np.ndarray | None,
    findings: str = "",
    impression: str = "",
    labels: np.ndarray | None = None,
    frontal_view: str = "",
    lateral_view: str = "",
    source: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """One TFDS example; images are (H, W) or (H, W, 1) uint8 arrays or None."""
    labels = schema.empty_labels() if labels is None else np.asarray(labels, np.float32)
    if labels.shape != (schema.NUM_LABELS,):
        raise ValueError(f"study {study_id!r}: labels must have shape ({schema.NUM_LABELS},)")

    def img(x):
        if x is None:
            return absent_image()
        x = np.asarray(x, np.uint8)
        return x[..., None] if x.ndim == 2 else x

    ex = {
        "patient_id": patient_id,
        "study_id": study_id,
        "frontal": img(frontal),
        "lateral": img(lateral),
        "has_frontal": frontal is not None,
        "has_lateral": lateral is not None,
        "findings": findings or "",
        "impression": impression or "",
        "labels": labels,
        "frontal_view": frontal_view or "",
        "lateral_view": lateral_view or "",
        "source": source,
    }
    ex.update(extra)
    return ex
