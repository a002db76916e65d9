"""Split names and deterministic patient-level split assignment.

`hash_split` puts a patient in train/validation/test from a hash of its id and a seed, so a
patient never straddles splits and a rebuild gives the same splits; `canonical_split` reads the
split names of official split files. Separate because split assignment is a policy of its own,
independent of any file format.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

SPLITS = ("train", "validation", "test")


def hash_fraction(key: str, seed: int) -> float:
    """A deterministic number in [0, 1) from a key and a seed (sha256; stable across runs)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def hash_split(patient_id: str, ratios: Sequence[float], seed: int) -> str:
    """Patient-level split: the same patient always lands in the same split."""
    ratios = normalise_ratios(ratios)
    u = hash_fraction(patient_id, seed)
    if u < ratios[0]:
        return "train"
    if u < ratios[0] + ratios[1]:
        return "validation"
    return "test"


def normalise_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"split_ratios must be 3 non-negative numbers (train, validation, test), got {ratios}")
    total = float(sum(ratios))
    return tuple(float(r) / total for r in ratios)  # type: ignore[return-value]


_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "validate": "validation",
    "valid": "validation",
    "val": "validation",
    "test": "test",
    "testing": "test",
}


def canonical_split(name: str) -> str | None:
    """'validate'/'val'/'valid' -> 'validation' etc.; None for anything unknown."""
    return _SPLIT_ALIASES.get(name.strip().lower())
