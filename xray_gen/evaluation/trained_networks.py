"""The trained networks the evaluator scores with, as two small callables with their provenance
(workdir, step, checksum): the in-domain classifier (:class:`Classifier`: penultimate features for
FID/KID/PRDC and privacy, probabilities with its validated thresholds for AUROC, prevalence and
image-report agreement) and the view-consistency net (:class:`VCN`). The sections see these and
never the training code; `xray_gen.models.restore` builds them from training workdirs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Tuple

import numpy as np

from xray_gen.data.schema import NUM_LABELS


@dataclasses.dataclass
class Classifier:
    extractor: Any  # FeatureExtractor of features ++ probabilities
    feature_dim: int
    thresholds: np.ndarray
    thresholds_source: str
    resolution: int
    step: int
    workdir: str
    history: list

    def __call__(self, images) -> Tuple[np.ndarray, np.ndarray]:
        """(features, probabilities) of uint8 images."""
        if len(images) == 0:
            return np.zeros((0, self.feature_dim), np.float32), np.zeros((0, NUM_LABELS), np.float32)
        out = self.extractor(images)
        return out[:, :self.feature_dim], out[:, self.feature_dim:]

    def features(self, images) -> np.ndarray:
        return self(images)[0]


@dataclasses.dataclass
class VCN:
    fn: Callable
    resolution: int
    weights_checksum: str
    workdir: str

    def __call__(self, frontal, lateral, batch: int = 64) -> np.ndarray:
        out = []
        for i in range(0, len(frontal), batch):
            f, l = frontal[i:i + batch], lateral[i:i + batch]
            m = len(f)
            if m < batch:  # one compiled shape
                f = np.concatenate([f, np.repeat(f[-1:], batch - m, 0)])
                l = np.concatenate([l, np.repeat(l[-1:], batch - m, 0)])
            out.append(np.asarray(self.fn(f, l))[:m])
        return np.concatenate(out) if out else np.zeros(0, np.float32)
