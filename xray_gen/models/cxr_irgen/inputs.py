"""CXR-IRGen input pipeline pieces: sources that know their indices, label prompts, report ids and
reference images as grain transforms.

- `IndexedSource` adds `source_index` to every example, so a training example's reference image
  can exclude the example itself (the official loader takes the first match: the image itself).
- `ReportSource` reads reports only; on the phantom that skips rendering (language stage 1).
- `training_labels(source)` (the pipeline's `source_labels`) is the (N, 14) label matrix behind the `ReferenceIndex`; on the
  phantom it is read from the report generator without rendering a single image.
- `CxrInputs` (a grain RandomMap) turns an example into the model's inputs: the frontal view
  (uint8), `prompt_ids/mask` of `label_prompt(labels)` (by `prompt_tokenizer`: a pretrained
  CLIP's BPE, else the report tokenizer), `report_ids/mask` of the report, and a
  `reference` image (uint8) with `reference_flag` (0 where no training image matches: the caller
  uses a zero embedding, as the paper does).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import grain
import jax.numpy as jnp
import numpy as np

from xray_gen.data.pipeline import ToModelInputs
from xray_gen.data.pipeline import source_labels as training_labels  # noqa: F401  (the pipeline's; kept here for callers)
from xray_gen.data.schema import NUM_LABELS
from xray_gen.models.cxr_irgen.conditioning import ReferenceIndex, label_prompt


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class IndexedSource:
    """`source[i]` plus `"source_index": i` (random access, picklable, stable repr for grain)."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        return {**self.source[index], "source_index": np.int64(index)}

    def __repr__(self) -> str:
        return f"IndexedSource({self.source!r})"


class ReportSource:
    """Reports of a split as {"findings", "impression", "labels"?, "source_index"}; the phantom
    writes them without rendering images (a hundredfold cheaper)."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        if hasattr(self.source, "report"):
            findings, impression = self.source.report(int(index))
            return {"findings": findings, "impression": impression, "source_index": np.int64(index)}
        ex = self.source[index]
        return {"findings": _text(ex["findings"]), "impression": _text(ex["impression"]),
                "source_index": np.int64(index)}

    def __repr__(self) -> str:
        return f"ReportSource({self.source!r})"


def report_text(ex: dict, sections: Sequence[str]) -> str:
    """The report sections the language module is trained on, joined (findings [+ impression])."""
    return " ".join(_text(ex[s]).strip() for s in sections if _text(ex.get(s, "")).strip())


class ReferenceImages:
    """Draws a reference image for a label vector: a training image with the same labels (exact,
    then same positives when `fallback`), resized like the model's inputs; zeros and flag 0 if none."""

    def __init__(self, source, index: ReferenceIndex, resolution: int, fallback: bool = True):
        self.source, self.index, self.fallback = source, index, bool(fallback)
        self.to_inputs = ToModelInputs(views=("frontal",), resolution=int(resolution))
        self.resolution = int(resolution)

    def image(self, j: int) -> np.ndarray:
        return self.to_inputs.map(self.source[int(j)])["frontal"]

    def draw(self, labels: np.ndarray, rng: np.random.Generator, exclude: Optional[int] = None):
        """(uint8 (R, R, 1), flag float32) for one (14,) raw label vector."""
        j = self.index.reference_for(labels, rng, exclude=exclude, fallback=self.fallback)
        if j is None:
            return np.zeros((self.resolution, self.resolution, 1), np.uint8), np.float32(0.0)
        return self.image(j), np.float32(1.0)


@dataclasses.dataclass(frozen=True)
class CxrInputs(grain.transforms.RandomMap):
    """Study example -> model inputs (see the module doc). `prompt_len` / `report_len` 0 leave the
    prompt / report out; `references` None leaves the reference image out; `images` False drops
    the image views (text-only stages); `prompt_tokenizer` None: `tokenizer` encodes the prompt too."""

    tokenizer: Any
    resolution: int
    prompt_len: int = 0
    report_len: int = 0
    sections: Sequence[str] = ("findings", "impression")
    references: Optional[ReferenceImages] = None
    images: bool = True
    uncertain_as: float = 1.0
    prompt_tokenizer: Any = None

    def random_map(self, ex: dict, rng: np.random.Generator) -> dict:
        out = {}
        if self.images:
            out = ToModelInputs(views=("frontal",), resolution=self.resolution, uncertain_as=self.uncertain_as).map(ex)
        labels = np.asarray(ex["labels"], np.float32) if "labels" in ex else None
        if self.prompt_len:
            prompts = self.prompt_tokenizer or self.tokenizer
            out["prompt_ids"], out["prompt_mask"] = prompts.encode_flat(label_prompt(labels), self.prompt_len)
        if self.report_len:
            out["report_ids"], out["report_mask"] = self.tokenizer.encode_flat(report_text(ex, self.sections),
                                                                                self.report_len)
        if self.references is not None:
            own = int(ex["source_index"]) if "source_index" in ex else None
            out["reference"], out["reference_flag"] = self.references.draw(labels, rng, exclude=own)
        return out


def label_groups(labels: jnp.ndarray) -> jnp.ndarray:
    """(B, 14) raw labels -> (B,) int32 ids equal exactly for equal label vectors (NaN included):
    identical prompts in a CLIP batch are matches, not negatives (`clip_loss(groups=...)`)."""
    codes = jnp.where(jnp.isnan(labels), 3, labels + 1).astype(jnp.int32)  # -1/0/1/NaN -> 0/1/2/3
    return jnp.sum(codes * (4 ** jnp.arange(NUM_LABELS, dtype=jnp.int32)), axis=-1)
