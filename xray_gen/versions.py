"""Installed versions of the packages a result depends on (run records and evaluation JSON)."""

from __future__ import annotations

import importlib.metadata
import platform

PACKAGES = (
    "xray_gen", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "clu",
    "tensorflow-datasets", "ml-collections", "sentencepiece", "dm-pix", "numpy", "scipy", "scikit-learn",
    "safetensors",
)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
