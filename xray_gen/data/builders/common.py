"""Shared pieces of the real-dataset TFDS builders.

Every builder reads a directory the user downloaded themselves (`manual_dir`; credentialed data is
never fetched), writes array_record files, and yields examples in the format of
`Study.to_example()` plus a few source-specific extras. This module holds what they share:

* `study_features` — the TFDS features mirroring `Study.to_example()`;
* `read_image` — decode any PNG/JPEG (8/16-bit, RGB, palette) to a square greyscale uint8 array;
* `BuildSummary` — skip-and-count bookkeeping: every study or file that is not used is counted
  under a reason with the first offending file names; written as `build_summary.json` next to the
  prepared data and logged;
* `hash_split` / `read_split_file` — deterministic patient-level splits;
* `XRayBuilder` — the base `GeneratorBasedBuilder` with per-build configs (resolution + options).

Absent views are stored as a 1x1 zero image with `has_<view>` False; `Study.from_example` maps
them to None because it checks `has_<view>` first.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from absl import logging

from xray_gen.data import schema

SPLITS = ("train", "validation", "test")
SUMMARY_FILE = "build_summary.json"
_MAX_EXAMPLES_PER_REASON = 5


# ---------------------------------------------------------------------------------------------
# Features


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


# ---------------------------------------------------------------------------------------------
# Images


class NothingUsableError(ValueError):
    """No usable study is left after skipping bad data (the message carries the summary)."""


class ImageError(Exception):
    """An image file that exists but cannot be decoded."""


def read_image(path: str | os.PathLike, resolution: int) -> np.ndarray:
    """Reads an image file as greyscale uint8 resized to (resolution, resolution, 1).

    16-bit images are rescaled by their own maximum bit depth; colour and palette images are
    converted with the ITU-R 601 luma transform. Resizing uses a Lanczos filter (PIL), applied to
    the full image (aspect ratio is not preserved: chest radiographs are close to square).
    Raises `ImageError` if the file cannot be decoded.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                # Lets libjpeg decode at a reduced scale (never below the target size).
                im.draft("L", (resolution, resolution))
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                arr = np.asarray(im, dtype=np.float64)
                top = float(arr.max()) if arr.size else 0.0
                bits = max(8, int(np.ceil(np.log2(top + 1)))) if top > 0 else 8
                arr = np.clip(arr / (2.0**bits - 1.0) * 255.0, 0, 255)
                im = Image.fromarray(np.round(arr).astype(np.uint8), mode="L")
            elif im.mode != "L":
                im = im.convert("L")
            if im.size != (resolution, resolution):
                im = im.resize((resolution, resolution), Image.Resampling.LANCZOS)
            out = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for bad/truncated files.
        raise ImageError(f"{path}: {e}") from e
    return out[..., None]


# ---------------------------------------------------------------------------------------------
# Files


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


def csv_rows(path: Path, required: Sequence[str], summary: "BuildSummary", root: Path):
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


# ---------------------------------------------------------------------------------------------
# Splits


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


def read_split_file(path: Path, key_column: str, summary: "BuildSummary", root: Path,
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


# ---------------------------------------------------------------------------------------------
# Summary


class BuildSummary:
    """Counts used and skipped studies/files, with reasons and the first offending file names."""

    def __init__(self, dataset: str, config: str):
        self.dataset = dataset
        self.config = config
        self.used: dict[str, int] = {s: 0 for s in SPLITS}
        self.candidates: dict[str, int] = {s: 0 for s in SPLITS}
        self._skipped: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []

    def skip(self, reason: str, item: str) -> None:
        entry = self._skipped.setdefault(reason, {"count": 0, "first": []})
        entry["count"] += 1
        if len(entry["first"]) < _MAX_EXAMPLES_PER_REASON:
            entry["first"].append(str(item))

    def use(self, split: str) -> None:
        self.used[split] += 1

    def note(self, text: str) -> None:
        logging.info("%s: %s", self.dataset, text)
        self.notes.append(text)

    @property
    def skipped(self) -> dict[str, dict[str, Any]]:
        return self._skipped

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "config": self.config,
            "used": dict(self.used),
            "used_total": sum(self.used.values()),
            "skipped": {k: dict(v) for k, v in sorted(self._skipped.items())},
            "skipped_total": sum(v["count"] for v in self._skipped.values()),
            "notes": list(self.notes),
        }

    def describe(self) -> str:
        parts = [f"used {self.used}"]
        for reason, v in sorted(self._skipped.items()):
            parts.append(f"skipped {v['count']} ({reason}; first: {', '.join(v['first'])})")
        return "; ".join(parts)

    def log(self) -> None:
        logging.info("%s/%s build summary: %s", self.dataset, self.config, self.describe())
        for reason, v in sorted(self._skipped.items()):
            logging.warning(
                "%s: skipped %d item(s): %s (first: %s)", self.dataset, v["count"], reason,
                ", ".join(v["first"]),
            )

    def write(self, directory: str | os.PathLike) -> None:
        path = Path(directory) / SUMMARY_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))


# ---------------------------------------------------------------------------------------------
# Builder base

_BASE_OPTIONS: dict[str, Any] = {"split_seed": 0}


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def config_name(resolution: int, options: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
    """`res256` for default options, else `res256-<8 hex digits of the options' hash>`."""
    changed = {k: v for k, v in sorted(options.items()) if defaults.get(k) != v}
    name = f"res{int(resolution)}"
    if changed:
        blob = json.dumps(changed, sort_keys=True, default=str)
        name += "-" + hashlib.sha256(blob.encode()).hexdigest()[:8]
    return name


def _config_class():
    import tensorflow_datasets as tfds

    @dataclasses.dataclass(eq=False)
    class XRayConfig(tfds.core.BuilderConfig):
        """Builder config: output resolution plus the source's options (sorted key/value pairs)."""

        resolution: int = 256
        options: tuple = ()

    return XRayConfig


def make_config(resolution: int, options: Mapping[str, Any], defaults: Mapping[str, Any]):
    if int(resolution) < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; valid: {sorted(defaults)}")
    full = {**defaults, **{k: _freeze(v) for k, v in options.items()}}
    name = config_name(resolution, full, defaults)
    desc = json.dumps({k: v for k, v in sorted(full.items())}, default=str)
    return _config_class()(
        name=name, description=f"resolution {resolution}, options {desc}",
        resolution=int(resolution), options=tuple(sorted(full.items())),
    )


def make_builder_class(base_impl: type):
    """Mixes a source implementation into a TFDS GeneratorBasedBuilder (not registered globally).

    `base_impl` provides NAME, VERSION_STR, DESCRIPTION, MANUAL_INSTRUCTIONS, DEFAULT_OPTIONS,
    `extra_features()` and `plan(manual_dir, opts, summary) -> {split: [job, ...]}` and
    `load(job, manual_dir, opts, resolution, summary) -> example dict or None`.
    """
    import tensorflow_datasets as tfds
    from etils import epath
    from tensorflow_datasets.core import utils as tfds_utils

    class Builder(base_impl, tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = base_impl.NAME
        VERSION = tfds.core.Version(base_impl.VERSION_STR)
        MANUAL_DOWNLOAD_INSTRUCTIONS = base_impl.MANUAL_INSTRUCTIONS

        # TFDS's own lookup of the defining file needs the optional `importlib_resources`
        # package for editable installs; the answer is simply this module's file.
        @tfds_utils.classproperty
        @classmethod
        def code_path(cls):
            return epath.Path(__file__)

        def __init__(self, *, resolution: int = 256, options: Mapping[str, Any] | None = None,
                     **kwargs):
            defaults = {**_BASE_OPTIONS, **base_impl.DEFAULT_OPTIONS}
            config = make_config(resolution, options or {}, defaults)
            kwargs.setdefault("file_format", "array_record")
            self._summary: BuildSummary | None = None
            super().__init__(config=config, **kwargs)

        @property
        def opts(self) -> dict[str, Any]:
            return dict(self.builder_config.options)

        @property
        def resolution(self) -> int:
            return self.builder_config.resolution

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=base_impl.DESCRIPTION,
                features=study_features(self.extra_features()),
            )

        def _download_and_prepare(self, dl_manager, download_config, **kwargs):
            self._summary = BuildSummary(self.name, self.builder_config.name)
            try:
                result = super()._download_and_prepare(dl_manager, download_config, **kwargs)
            except (NothingUsableError, FileNotFoundError):
                raise
            except Exception as e:
                if self._summary.to_dict()["skipped_total"]:
                    self._summary.log()
                    raise RuntimeError(
                        f"building {self.name}/{self.builder_config.name} failed: {e}\n"
                        f"build summary: {self._summary.describe()}"
                    ) from e
                raise
            if sum(self._summary.used.values()) == 0:
                raise NothingUsableError(
                    f"{self.name}: no usable studies in {dl_manager.manual_dir}. "
                    f"{self._summary.describe()}"
                )
            self._summary.log()
            self._summary.write(self.data_dir)
            return result

        def _split_generators(self, dl_manager):
            manual_dir = Path(dl_manager.manual_dir)
            if not manual_dir.is_dir():
                raise FileNotFoundError(
                    f"{self.name}: manual_dir {manual_dir} does not exist.\n"
                    f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
                )
            summary = self._summary
            plan = self.plan(manual_dir, self.opts, summary)
            for split in SPLITS:
                summary.candidates[split] = len(plan.get(split, ()))
            if not any(plan.values()):
                summary.log()
                raise NothingUsableError(
                    f"{self.name}: no usable studies found in {manual_dir}. "
                    f"{summary.describe()}"
                )
            out = {}
            for split in SPLITS:
                jobs = plan.get(split) or []
                if jobs:
                    out[split] = self._generate_examples(split, jobs, manual_dir)
                else:
                    summary.note(f"split {split!r} is empty and was not written")
            return out

        def _generate_examples(self, split, jobs, manual_dir):
            for job in jobs:
                ex = self.load(job, manual_dir, self.opts, self.resolution, self._summary)
                if ex is None:
                    continue
                self._summary.use(split)
                yield ex["study_id"], ex

    Builder.__name__ = base_impl.__name__ + "Builder"
    Builder.__qualname__ = Builder.__name__
    return Builder


def load_view(path: Path | None, resolution: int, summary: BuildSummary, root: Path) -> np.ndarray | None:
    """Reads one view, counting a missing or unreadable file in the summary (then None)."""
    if path is None:
        return None
    if not Path(path).is_file():
        summary.skip("missing image", rel(path, root))
        return None
    try:
        return read_image(path, resolution)
    except ImageError:
        summary.skip("unreadable image", rel(path, root))
        return None


def load_views(frontal_path, lateral_path, opts, resolution: int, summary: BuildSummary, root: Path, where: str):
    """Both views of a study, or None (counted under `where`) when the required ones are unusable."""
    frontal = load_view(frontal_path, resolution, summary, root)
    lateral = load_view(lateral_path, resolution, summary, root)
    if opts["require_frontal"] and frontal is None:
        summary.skip("no frontal view (image unusable)", where)
        return None
    if opts["require_lateral"] and lateral is None:
        summary.skip("no lateral view (image unusable)", where)
        return None
    if frontal is None and lateral is None:
        summary.skip("no usable image", where)
        return None
    return frontal, lateral
