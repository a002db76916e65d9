"""CXR-IRGen conditioning inputs: the label prompt and the reference-image index.

The vision module is conditioned on (a) a text prompt written from the 14 CheXpert labels and (b)
the CLIP image embedding of a *reference image*: a training image with the same labels (paper §3.1).

    prompt = label_prompt(labels)        # "A chest X ray image with cardiomegaly, without edema"
    index = ReferenceIndex(train_labels)  # or ReferenceIndex.from_source(open_split(cfg.data, "train"))
    j = index.reference_for(labels, rng, exclude=i)  # training index, or None -> zero embedding

Prompt wording follows the official code (junjie-shentu/CXR-IRGen `label2text`), so that weights
fine-tuned there see the prompts they were trained on: lower-case observation names in
alphabetical order (MIMIC-CXR's CSV column order), positives after "with", negatives after
", without", uncertain ones after ", and with uncertain", each list joined by " and "; not
mentioned (NaN) observations are left out. The paper's own phrasing ("..., and unclear about ...")
differs; `label_prompt(..., uncertain_phrase="unclear about")` writes that one.

Reference selection: exact match on the full label vector (1 / 0 / -1 / NaN all distinguished),
else the same set of positives (paper: "same positive elements but different negative elements"),
else None. Unlike the official data loader, which takes the *first* matching row (during training
that is the image itself, so the reference leaks the target), `exclude` removes the query image
and the choice among candidates is random.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Sequence

import numpy as np

from xray_gen.data.schema import CHEXPERT_LABELS, NUM_LABELS, binarize

__all__ = ["PROMPT_PREFIX", "label_prompt", "label_prompts", "ReferenceIndex", "NO_REFERENCE"]

PROMPT_PREFIX = "A chest X ray image"

#: Returned by `ReferenceIndex.references_for` where no reference exists (caller: zero embedding).
NO_REFERENCE = -1

# Official order: observation names lower-cased and sorted (the MIMIC-CXR label CSV's column order).
_PROMPT_ORDER = tuple(sorted(range(NUM_LABELS), key=lambda i: CHEXPERT_LABELS[i].lower()))
_NO_FINDING = CHEXPERT_LABELS.index("No Finding")


def _check_labels(labels: Any, what: str = "labels") -> np.ndarray:
    labels = np.asarray(labels, dtype=np.float32)
    if labels.shape[-1:] != (NUM_LABELS,):
        raise ValueError(f"{what} must end in {NUM_LABELS} CheXpert values, got shape {labels.shape}")
    ok = np.isnan(labels) | np.isin(labels, (1.0, 0.0, -1.0))
    if not ok.all():
        bad = tuple(int(i) for i in np.argwhere(~ok)[0])
        raise ValueError(f"{what}{list(bad)} ({CHEXPERT_LABELS[bad[-1]]!r}) = {labels[bad]}: values must be "
                         "1 (positive), 0 (negative), -1 (uncertain) or NaN (not mentioned)")
    return labels


def label_prompt(labels: Any, uncertain_phrase: str = "with uncertain") -> str:
    """The prompt for one (14,) label vector (1 / 0 / -1 / NaN), e.g.

    "A chest X ray image with cardiomegaly and pleural effusion, without edema, and with uncertain
    pneumonia". No positives: "A chest X ray image, without edema"; nothing mentioned: "A chest X
    ray image". "No Finding" is an observation like the others ("with no finding"), except that a
    negative "No Finding" is left out: "without no finding" says nothing the other observations do
    not (and the CheXpert labeler never writes it, so MIMIC-CXR prompts match the official ones).
    """
    labels = _check_labels(labels)
    if labels.ndim != 1:
        raise ValueError(f"label_prompt takes one ({NUM_LABELS},) vector, got shape {labels.shape}; "
                         "use label_prompts for a batch")
    groups: Dict[float, list] = {1.0: [], 0.0: [], -1.0: []}
    for i in _PROMPT_ORDER:
        v = float(labels[i])
        if np.isnan(v) or (i == _NO_FINDING and v == 0.0):
            continue
        groups[v].append(CHEXPERT_LABELS[i].lower())
    text = PROMPT_PREFIX
    if groups[1.0]:
        text += " with " + " and ".join(groups[1.0])
    if groups[0.0]:
        text += ", without " + " and ".join(groups[0.0])
    if groups[-1.0]:
        text += f", and {uncertain_phrase} " + " and ".join(groups[-1.0])
    return text


def label_prompts(labels: Any, **kwargs) -> list:
    """`label_prompt` over a batch (B, 14) -> B strings."""
    labels = _check_labels(labels)
    return [label_prompt(row, **kwargs) for row in labels.reshape(-1, NUM_LABELS)]


# ------------------------------------------------------------------------------------------------
# Reference images
# ------------------------------------------------------------------------------------------------


def _exact_keys(labels: np.ndarray) -> np.ndarray:
    """(N, 14) -> (N, 14) int8 codes with NaN distinct from 0: rows are hashable as bytes."""
    codes = np.where(np.isnan(labels), 2.0, labels)  # NaN -> 2; 1, 0, -1 stay
    return codes.astype(np.int8)


def _positive_keys(labels: np.ndarray) -> np.ndarray:
    """(N, 14) -> (N, 14) uint8 positive indicators (uncertain and NaN count as not positive)."""
    target, _ = binarize(labels, uncertain_as=0.0)
    return (target == 1.0).astype(np.uint8)


def _group(keys: np.ndarray) -> Dict[bytes, np.ndarray]:
    """{row bytes: sorted indices of the rows with that key}."""
    out: Dict[bytes, list] = {}
    for i, row in enumerate(keys):
        out.setdefault(row.tobytes(), []).append(i)
    return {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}


class ReferenceIndex:
    """Training images grouped by label vector, for drawing a CXR-IRGen reference image.

    Built once from the training split's (N, 14) label matrix; a query is two dict look-ups
    (exact vector, then positive set), so it is cheap enough to run per example in the data
    pipeline. Returned indices are positions in the matrix the index was built from (i.e. source
    indices when built by `from_source`).
    """

    def __init__(self, labels: Any):
        labels = _check_labels(labels, "ReferenceIndex labels")
        if labels.ndim != 2:
            raise ValueError(f"ReferenceIndex needs an (N, {NUM_LABELS}) label matrix, got shape {labels.shape}")
        self.labels = labels
        self._exact = _group(_exact_keys(labels))
        self._positive = _group(_positive_keys(labels))

    @classmethod
    def from_source(cls, source: Sequence, indices: Optional[Iterable[int]] = None) -> "ReferenceIndex":
        """From a random-access source of `Study.to_example()` dicts (e.g. `pipeline.open_split`).

        Reads `source[i]["labels"]` for every i (or for `indices`, in which case returned indices
        still refer to the source but only those are candidates). Reading a phantom source renders
        each study once; build the index once per run and keep it.
        """
        n = len(source)
        chosen = range(n) if indices is None else [int(i) for i in indices]
        labels = np.full((n, NUM_LABELS), np.nan, np.float32)
        present = np.zeros((n,), bool)
        for i in chosen:
            try:
                labels[i] = source[i]["labels"]
            except KeyError as e:
                raise ValueError(f"{source!r}[{i}] has no 'labels' field") from e
            present[i] = True
        index = cls(labels)
        if not present.all():  # drop rows that were not read from every candidate list
            index._exact = _drop(index._exact, present)
            index._positive = _drop(index._positive, present)
        return index

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @staticmethod
    def _draw(candidates: Optional[np.ndarray], rng: np.random.Generator, exclude: Optional[int]) -> Optional[int]:
        if candidates is None or len(candidates) == 0:
            return None
        if exclude is not None:
            pos = np.searchsorted(candidates, exclude)
            if pos < len(candidates) and candidates[pos] == exclude:
                if len(candidates) == 1:
                    return None
                # Uniform over the others without copying: draw from n-1 slots, skip the excluded.
                k = int(rng.integers(len(candidates) - 1))
                return int(candidates[k + (k >= pos)])
        return int(candidates[int(rng.integers(len(candidates)))])

    def reference_for(self, labels: Any, rng: np.random.Generator, exclude: Optional[int] = None,
                      fallback: bool = True) -> Optional[int]:
        """A random training index whose label vector equals `labels` (14,), else (when `fallback`)
        one with the same positive observations, else None (the caller uses a zero embedding).

        `exclude`: the query's own training index (pass it during training, so the reference is
        never the target image itself).
        """
        labels = _check_labels(labels)
        if labels.ndim != 1:
            raise ValueError(f"reference_for takes one ({NUM_LABELS},) vector, got shape {labels.shape}")
        found = self._draw(self._exact.get(_exact_keys(labels[None])[0].tobytes()), rng, exclude)
        if found is None and fallback:
            found = self._draw(self._positive.get(_positive_keys(labels[None])[0].tobytes()), rng, exclude)
        return found

    def references_for(self, labels: Any, rng: np.random.Generator, exclude: Optional[Any] = None,
                       fallback: bool = True) -> np.ndarray:
        """Batched `reference_for`: (B, 14) -> (B,) int64 indices, `NO_REFERENCE` (-1) for none.

        `exclude`: (B,) own indices or None; entries < 0 exclude nothing.
        """
        labels = _check_labels(labels)
        labels = labels.reshape(-1, NUM_LABELS)
        own = np.full((len(labels),), -1) if exclude is None else np.asarray(exclude).reshape(-1)
        if own.shape != (len(labels),):
            raise ValueError(f"exclude must have shape ({len(labels)},), got {np.shape(exclude)}")
        out = np.full((len(labels),), NO_REFERENCE, np.int64)
        for b, row in enumerate(labels):
            found = self.reference_for(row, rng, None if own[b] < 0 else int(own[b]), fallback)
            if found is not None:
                out[b] = found
        return out


def _drop(groups: Dict[bytes, np.ndarray], keep: np.ndarray) -> Dict[bytes, np.ndarray]:
    out = {k: v[keep[v]] for k, v in groups.items()}
    return {k: v for k, v in out.items() if len(v)}
