"""TFDS builders for the user's own copy of real chest X-ray datasets.

Credentialed data is never downloaded: every builder reads `manual_dir` (the directory the user
downloaded), writes array_record files under `data_dir/<name>/res<R>[-<options hash>]/<version>/`
and is read back with `tfds` data sources (random access, no TensorFlow at read time), which grain
consumes directly.

    from xray_gen.data import builders
    src = builders.load_split("openi", "train", manual_dir, data_dir, resolution=256)
    study = Study.from_example(src[0])
    builders.last_build_summary("openi", data_dir, resolution=256)  # used/skipped counts

Datasets and their options (each also takes `split_seed`, default 0):

* ``openi`` (Open-i / IU X-ray; see `openi.py`): `projections_file`, `reports_dir`, `images_dir`,
  `split_file`, `split_ratios` (0.7, 0.1, 0.2), `require_frontal`, `require_lateral`,
  `require_report`.
* ``mimic_cxr`` (MIMIC-CXR-JPG; `mimic_cxr.py`): `subsets` (e.g. ("p10",)), `require_frontal`,
  `require_lateral`, `require_report`, `reports_dir`, `images_dir`, `split_ratios` (only used when
  the official split CSV is absent).
* ``chestxray14`` (NIH; `chestxray14.py`): `validation_fraction`, `split_ratios` (only without the
  official lists).
* ``chexpert`` (`chexpert.py`): `validation_fraction`, `require_frontal`, `require_lateral`.

Options are part of the build: non-default options give a different config name (a hash), so two
builds with different options never overwrite each other. Every build writes
`build_summary.json` (used/skipped counts with reasons and the first offending files) next to the
array_record files and logs it with absl.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from xray_gen.data.builders.splits import SPLITS

DATASETS: tuple[str, ...] = ("openi", "mimic_cxr", "chestxray14", "chexpert")

_MODULES = {
    "openi": "xray_gen.data.builders.openi",
    "mimic_cxr": "xray_gen.data.builders.mimic_cxr",
    "chestxray14": "xray_gen.data.builders.chestxray14",
    "chexpert": "xray_gen.data.builders.chexpert",
}


def builder_class(name: str) -> type:
    """The TFDS builder class of a dataset (imports its module on first use)."""
    if name not in _MODULES:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    return importlib.import_module(_MODULES[name]).Builder


def get_builder(name: str, data_dir: str | Path, resolution: int = 256, **options: Any):
    """A (not yet prepared) TFDS builder for `name` at `resolution` with source options."""
    return builder_class(name)(
        resolution=resolution, options=options, data_dir=str(data_dir)
    )


def prepare(name: str, manual_dir: str | Path, data_dir: str | Path, resolution: int = 256,
            **options: Any):
    """Builds the dataset from `manual_dir` if it is not prepared yet; returns the builder."""
    import tensorflow_datasets as tfds

    builder = get_builder(name, data_dir, resolution, **options)
    manual_dir = Path(manual_dir).expanduser().resolve()
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    return builder


def load_split(name: str, split: str, manual_dir: str | Path, data_dir: str | Path,
               resolution: int = 256, **options: Any):
    """Random-access source of one split (building it first if needed).

    `len(src)` and `src[i]` (a dict in the format of `Study.to_example()`, strings as bytes,
    images (H, W, 1) uint8, plus source extras) work; `Study.from_example(src[i])` gives a Study.
    """
    if name not in _MODULES:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    builder = prepare(name, manual_dir, data_dir, resolution, **options)
    if split not in builder.info.splits:
        raise ValueError(
            f"{name}/{builder.builder_config.name}: split {split!r} is empty in this build "
            f"(present: {sorted(builder.info.splits)}); see {summary_path(builder)}"
        )
    return builder.as_data_source(split=split)


def summary_path(builder) -> Path:
    from xray_gen.data.builders.build_summary import SUMMARY_FILE

    return Path(str(builder.data_dir)) / SUMMARY_FILE


def last_build_summary(name: str, data_dir: str | Path, resolution: int = 256,
                       **options: Any) -> dict[str, Any]:
    """The summary of the prepared build: used/skipped counts, reasons, first offending files."""
    builder = get_builder(name, data_dir, resolution, **options)
    path = summary_path(builder)
    if not path.is_file():
        raise FileNotFoundError(f"no build summary at {path}: build {name} first (load_split)")
    return json.loads(path.read_text())
