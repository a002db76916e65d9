"""What every metric section of :mod:`xray_gen.evaluate` shares: the :class:`Context` it reads
(generated and reference sets, networks, settings, a cache of classifier outputs) and writes HTML
material into, and the ``"skipped: reason"`` convention for a metric whose inputs are missing
(:func:`skipped` writes one, :func:`collect_skips` lists them all for the result).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from xray_gen.data.schema import binarize
from xray_gen.evaluation.generated_folder import VIEWS, GeneratedSet
from xray_gen.evaluation.real_splits import RealSet
from xray_gen.evaluation.trained_networks import VCN, Classifier

SKIPPED = "skipped: "


def skipped(reason: str) -> str:
    return SKIPPED + reason


def collect_skips(obj, path="") -> List[str]:
    """Every skipped or failed metric of a nested result, as ``path: reason``."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += collect_skips(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, str) and (obj.startswith(SKIPPED) or obj.startswith("error: ")):
        out.append(f"{path}: {obj}")
    return out


@dataclasses.dataclass
class Context:
    gen: GeneratedSet
    ref: RealSet
    data_config: Any
    train_split: str
    classifier: Optional[Classifier]
    inception: Optional[Any]
    vcn: Optional[VCN]
    bootstrap: int
    report_bootstrap: int
    seed: int
    num_pairs: int
    percentile: float
    train_examples: int
    cache: Dict[str, Any] = dataclasses.field(default_factory=dict)
    # HTML material
    per_class: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)
    histograms: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)
    privacy_pairs: List[Dict[str, Any]] = dataclasses.field(default_factory=list)

    def gen_view(self, view: str) -> np.ndarray:
        return self.gen.images[self.gen.rows(view)]

    def classified(self, kind: str, view: str):
        """Cached (features, probabilities) of generated ('gen') or reference ('ref') images."""
        key = ("cls", kind, view)
        if key not in self.cache:
            images = self.gen_view(view) if kind == "gen" else self.ref.images[view]
            self.cache[key] = self.classifier(images)
        return self.cache[key]

    def views_on_both_sides(self, out: Dict[str, Any],
                            reference_note: str = "") -> Iterator[Tuple[str, np.ndarray, np.ndarray]]:
        """(view, generated images, reference images) of each view that has images on both sides;
        the other views are recorded in ``out`` as skipped (``reference_note`` ends that reason)."""
        for view in VIEWS:
            g, r = self.gen_view(view), self.ref.images[view]
            if len(g) == 0:
                out[view] = skipped(f"no generated {view} images")
            elif len(r) == 0:
                out[view] = skipped(f"the reference {self.ref.name} has no {view} images{reference_note}")
            else:
                yield view, g, r


def pos_mask(labels: np.ndarray, uncertain_as: float) -> Tuple[np.ndarray, np.ndarray]:
    """Binary targets and validity (rows with no label at all are invalid everywhere)."""
    targets, mask = binarize(labels, uncertain_as)
    labeled = ~np.all(np.isnan(labels), axis=1)
    return targets, (mask > 0) & labeled[:, None]
