"""The TFDS side of the real-dataset builders: per-build configs and the builder base class.

`make_builder_class` mixes a source implementation (`plan` + `load`) into a TFDS
`GeneratorBasedBuilder` that writes array_record files; `make_config` turns a resolution and the
source's options into a builder config whose name changes with the options. Separate from the
sources' parsing: this is the only module that knows how TFDS drives a build.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from xray_gen.data.builders.build_summary import BuildSummary
from xray_gen.data.builders.examples import study_features
from xray_gen.data.builders.splits import SPLITS


class NothingUsableError(ValueError):
    """No usable study is left after skipping bad data (the message carries the summary)."""


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
