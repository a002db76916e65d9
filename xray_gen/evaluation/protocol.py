"""The evaluation protocol, recorded next to every number.

FID-like metrics are only comparable when the feature extractor, its weights, the image count,
resolution, resize policy and grey->RGB rule match; bootstrap intervals depend on seeds and the
number of resamples. :class:`Protocol` holds those facts and :func:`write_result_json` writes
them with the metrics, the package versions and a UTC timestamp::

    {"metrics": {...}, "protocol": {...}, "versions": {...}, "timestamp": "...", "schema": ...}

Non-finite floats (e.g. an undefined per-class AUROC) are written as ``null`` so the file is
strict JSON; tuples (confidence intervals) become lists.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from xray_gen.files import atomic_open

__all__ = ["Protocol", "write_result_json", "read_result_json", "package_versions", "to_jsonable", "eval_dir"]

SCHEMA = "xray_gen.evaluation.result.v1"

def eval_dir(workdir: str, checkpoint_step: int | None = None) -> str:
    """Where a model's evaluation writes: WORKDIR/eval, or WORKDIR/eval/step_N for an evaluation the
    training loop runs at checkpoint N (so those never overwrite the final `--mode=evaluate`)."""
    out = os.path.join(workdir, "eval")
    return out if checkpoint_step is None else os.path.join(out, f"step_{int(checkpoint_step)}")


@dataclasses.dataclass(frozen=True)
class Protocol:
    """What a metric value depends on besides the model being evaluated."""

    extractor: str                 # e.g. "inception_v3_fid_pool" or "densenet121_cxr_penultimate"
    weights_checksum: str          # sha256 of the extractor's weights
    image_count: int               # generated (and reference) images per metric
    resolution: Union[int, Tuple[int, int]]  # extractor input resolution
    resize_policy: str             # how images reach that resolution
    grey_to_rgb: str               # rule for 1-channel images, e.g. "repeat x3" / "none"
    seeds: Tuple[int, ...] = ()    # sampling / subset / bootstrap seeds
    bootstrap_n: int = 0           # resamples behind the confidence intervals (0: none)
    reference: str = ""            # real-data statistics used, e.g. "phantom/test"
    reference_count: Optional[int] = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_extractor(cls, extractor, image_count: int, seeds: Sequence[int] = (),
                       bootstrap_n: int = 0, reference: str = "",
                       reference_count: Optional[int] = None, **extra) -> "Protocol":
        """Builds the protocol from a ``features.FeatureExtractor``."""
        return cls(extractor=extractor.name, weights_checksum=extractor.weights_checksum,
                   image_count=int(image_count), resolution=tuple(extractor.resolution),
                   resize_policy=extractor.resize_policy, grey_to_rgb=extractor.grey_rule,
                   seeds=tuple(int(s) for s in seeds), bootstrap_n=int(bootstrap_n),
                   reference=reference, reference_count=reference_count, extra=dict(extra))

    def to_dict(self) -> Dict[str, Any]:
        return to_jsonable(dataclasses.asdict(self))


def to_jsonable(obj: Any) -> Any:
    """NumPy/JAX scalars and arrays -> Python; tuples -> lists; NaN/inf -> None."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "__array__") and not isinstance(obj, (str, bytes)):
        arr = np.asarray(obj)
        return to_jsonable(arr.tolist()) if arr.ndim else to_jsonable(arr.item())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def package_versions() -> Dict[str, Optional[str]]:
    """The run records' package versions plus the JAX backend and devices."""
    from xray_gen.versions import package_versions as installed_versions

    out: Dict[str, Optional[str]] = dict(installed_versions())
    try:
        import jax

        out["jax_backend"] = jax.default_backend()
        out["jax_devices"] = f"{jax.device_count()}x {jax.devices()[0].device_kind}"
    except Exception:  # noqa: BLE001 - versions are best effort, never fatal
        pass
    return out


def model_protocol(config, extractor: str, params, image_count: int, bootstrap_n: int = 0) -> "Protocol":
    """Protocol of a trained network scored on its own config's data split (classifier, VCN)."""
    from xray_gen.evaluation.features import params_checksum

    return Protocol(
        extractor=extractor,
        weights_checksum=params_checksum(params),
        image_count=int(image_count),
        resolution=int(config.data.resolution),
        resize_policy=f"bilinear to {config.data.resolution} px (pipeline)",
        grey_to_rgb="none (1-channel input)",
        seeds=(int(config.seed), int(config.data.phantom.seed)),
        bootstrap_n=int(bootstrap_n),
        reference=f"{config.data.source}/{config.eval.split}",
    )


def write_result_json(path: str, metrics: Mapping[str, Any], protocol: Protocol,
                      extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Writes metrics + protocol + versions + timestamp to ``path`` (atomically); returns it."""
    if not isinstance(protocol, Protocol):
        raise TypeError(f"protocol must be a Protocol, got {type(protocol).__name__}")
    record = {
        "schema": SCHEMA,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "metrics": to_jsonable(metrics),
        "protocol": protocol.to_dict(),
        "versions": package_versions(),
    }
    if extra:
        record["extra"] = to_jsonable(extra)
    with atomic_open(path, "w", suffix=".json.tmp") as f:
        json.dump(record, f, indent=2, sort_keys=False, allow_nan=False)
        f.write("\n")
    return record


def read_result_json(path: str) -> Dict[str, Any]:
    with open(path) as f:
        record = json.load(f)
    if record.get("schema") != SCHEMA or "protocol" not in record:
        raise ValueError(f"{path}: not an xray_gen evaluation result "
                         f"(schema {record.get('schema')})")
    return record
