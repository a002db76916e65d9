"""What a workdir records about its run: config, package versions, devices (process 0 only)."""

from __future__ import annotations

import json
import os

import jax

from xray_gen.versions import package_versions


def device_summary() -> dict:
    return {
        "backend": jax.default_backend(),
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "local_devices": [str(d) for d in jax.local_devices()],
        "global_device_count": jax.device_count(),
    }


def write_run_records(workdir: str, config) -> None:
    """Writes config.json, versions.json and devices.json into the workdir (process 0 only)."""
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    for name, payload in (
        ("config.json", json.loads(config.to_json_best_effort())),
        ("versions.json", package_versions()),
        ("devices.json", device_summary()),
    ):
        with open(os.path.join(workdir, name), "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True)
