"""XLA:CPU settings xray_gen applies before JAX starts a backend.

YNNPACK fusions (on by default in jaxlib 0.10) made our CPU training steps slower: with them off,
measured on a 2-core CPU, XRayGAN's 32 px step ran 14.3 -> 10.5 s, PGGAN's 32 px step 6.5 -> 5.4 s,
the SD-style U-Net step 11.2 -> 9.3 s (benchmarks/compare_official.py pairs). `import xray_gen`
therefore appends `--xla_cpu_experimental_ynn_fusion_type=` (no YNNPACK fusion types) to
`XLA_FLAGS`, unless the user's `XLA_FLAGS` already sets that flag or `XRAY_GEN_KEEP_XLA_FLAGS=1`.
The flag only affects the CPU backend. It is applied for the pinned jaxlib series only (an
unknown flag in XLA_FLAGS aborts the process), and has no effect if a JAX backend was started
before xray_gen was imported.
"""
from __future__ import annotations

import os
from importlib import metadata

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type="
KNOWN_JAXLIB_SERIES = ("0.10.",)  # jaxlib versions known to have the flag


def cpu_defaults(xla_flags: str, jaxlib_version: str) -> str:
    """XLA_FLAGS with xray_gen's CPU defaults added (user settings win)."""
    if "xla_cpu_experimental_ynn_fusion_type" in xla_flags or not jaxlib_version.startswith(KNOWN_JAXLIB_SERIES):
        return xla_flags
    return f"{xla_flags} {YNN_FLAG}".strip()


def apply_cpu_defaults() -> None:
    if os.environ.get("XRAY_GEN_KEEP_XLA_FLAGS") == "1":
        return
    try:
        version = metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return
    os.environ["XLA_FLAGS"] = cpu_defaults(os.environ.get("XLA_FLAGS", ""), version)
