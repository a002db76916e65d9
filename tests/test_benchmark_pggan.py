"""benchmarks/pggan.py runs end to end in `--quick` mode and writes the JSON it promises (not speed)."""

import json
import math
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `benchmarks/` is a directory of scripts next to the package, not installed
    sys.path.insert(0, ROOT)

from benchmarks import pggan  # noqa: E402


def _positive(row, keys):
    for key in keys:
        value = row[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)


def test_select_phases_by_label_and_index(tmp_path):
    task, _ = pggan.make_task("smoke", str(tmp_path))  # levels 4, 8, 16 px
    assert pggan.select_phases(task, "") == [0, 1, 2]
    assert pggan.select_phases(task, "-1") == [2]
    assert pggan.select_phases(task, "16px,4px,0") == [0, 2]
    with pytest.raises(ValueError, match="'32px'.*4px, 8px, 16px"):
        pggan.select_phases(task, "32px")
    with pytest.raises(ValueError, match="'3'"):
        pggan.select_phases(task, "3")


def test_pggan_quick(tmp_path):
    path = pggan.main(["--quick", "--out", str(tmp_path / "pggan.json")])
    with open(path) as f:
        payload = json.load(f)
    assert payload["benchmark"] == "pggan_smoke" and payload["args"]["quick"] is True
    env = payload["env"]
    for key in ("backend", "device_kind", "device_count", "jax_version", "timestamp"):
        assert env[key] not in (None, ""), key

    (row,) = payload["results"]  # --quick: the smoke variant's last level only
    assert (row["variant"], row["phase"], row["label"], row["level"], row["resolution"], row["batch"]) == \
        ("smoke", 2, "16px", 2, 16, 8)
    assert row["fade_steps"] == 2 and row["phase_steps"] == 4  # 16 fade + 16 stable images at batch 8
    _positive(row, ["lower_s", "compile_s", "compile_total_s", "gflops_per_step", "step_ms_median", "step_ms_min",
                    "steps_per_s", "images_per_s", "achieved_gflops_s", "utilisation", "footprint_mb"])
    assert row["timed_steps"] == 2
    assert row["images_per_s"] == pytest.approx(row["steps_per_s"] * row["batch"])
    assert 0.0 < row["alpha"] <= 1.0
    assert math.isfinite(row["g_loss"]) and math.isfinite(row["d_loss"])

    opt = payload["latent_optimisation"]  # archive.batch_size latents, every iteration ran (target +inf)
    assert (opt["latents"], opt["resolution"], opt["classifier_variant"], opt["opt_steps"], opt["iterations"]) == \
        (8, 16, "smoke", 2, 3)
    assert opt["latent_finite"] is True
    _positive(opt, ["gflops_per_iteration", "grad_ms_median", "in_loop_slowdown", "achieved_gflops_s"])
    _positive(opt, ["first_call_s", "call_ms_median", "ms_per_iteration", "iterations_per_s", "latents_per_s",
                    "latents_per_s_at_max_steps"])
    assert opt["latents_per_s"] == pytest.approx(opt["latents"] / (opt["call_ms_median"] / 1e3))
    assert opt["latents_per_s_at_max_steps"] < opt["latents_per_s"]  # max_steps 5 > opt_steps 2

    gen = payload["generation"]
    assert (gen["batch"], gen["resolution"]) == (64, 16)
    _positive(gen, ["compile_total_s", "gflops_per_batch", "batch_ms_median", "images_per_s"])
    assert gen["images_per_s"] == pytest.approx(64 / (gen["batch_ms_median"] / 1e3))
