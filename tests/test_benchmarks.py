"""The benchmark scripts run end to end (`--quick`, smoke configs) and write the JSON they promise."""

import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `benchmarks/` is a directory of scripts next to the package, not installed
    sys.path.insert(0, ROOT)

from benchmarks import common, pipeline_throughput, train_step, xraygan  # noqa: E402


def _load(path):
    with open(path) as f:
        payload = json.load(f)
    assert set(payload) >= {"benchmark", "env", "args", "results"}
    env = payload["env"]
    for key in ("backend", "device_kind", "device_count", "jax_version", "jaxlib_version", "timestamp"):
        assert env[key] not in (None, ""), key
    assert env["device_count"] >= 1
    assert payload["args"]["quick"] is True
    assert payload["results"]
    return payload


def _positive(row, keys):
    for key in keys:
        value = row[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)


def test_cost_dict_accepts_dict_list_and_missing_keys():
    assert common._cost_dict(None) == {}
    assert common._cost_dict({"flops": 3.0}) == {"flops": 3.0}
    merged = common._cost_dict([{"flops": 2.0, "bytes accessed": 5.0}, {"flops": 1.0}, None])
    assert merged == {"flops": 3.0, "bytes accessed": 5.0}
    assert common._get_float({"bytes accessed": 7}, "bytes accessed", "bytes_accessed") == 7.0
    assert common._get_float({"flops": -1.0}, "flops") is None  # XLA's "unknown"
    assert common._get_float({}, "flops") is None


def test_compile_stats_and_timing_on_a_matmul():
    n = 64
    f = jax.jit(lambda a, b: a @ b)
    a = jnp.ones((n, n), jnp.float32)
    stats = common.compile_stats(f, a, a)
    assert stats["lower_s"] > 0 and stats["compile_s"] > 0
    assert stats["flops"] == pytest.approx(2 * n**3, rel=0.05)
    assert stats["bytes_accessed"] >= 3 * n * n * 4
    assert stats["footprint_bytes"] >= 3 * n * n * 4
    compiled = stats["compiled"]
    t = common.time_fn(lambda: compiled(a, a), warmup=1, repeats=3, number=2)
    assert t["repeats"] == 3 and len(t["times_s"]) == 3
    assert 0 < t["min_s"] <= t["median_s"] <= t["max_s"]


def test_markdown_table():
    table = common.markdown_table([{"a": 1, "b": 0.5}, {"a": 2, "c": None}])
    lines = table.splitlines()
    assert lines[0] == "| a | b | c |"
    assert lines[2] == "| 1 | 0.5 | - |" and lines[3] == "| 2 | - | - |"


def test_train_step_quick(tmp_path):
    payload = _load(train_step.main(["--quick", "--models=classifier,vcn,emixer", "--out", str(tmp_path / "train_step.json")]))
    rows = {r["model"]: r for r in payload["results"]}
    assert set(rows) == {"classifier", "vcn", "emixer"}
    for row in rows.values():
        assert row["variant"] == "smoke"
        _positive(row, ["compile_s", "lower_s", "step_ms_median", "steps_per_s", "images_per_s", "examples_per_s",
                        "gflops_per_step", "achieved_gflops_s", "utilisation", "params_M", "footprint_mb"])
        assert math.isfinite(row["final_loss"])
        assert row["images_per_s"] == pytest.approx(row["steps_per_s"] * row["batch"] * row["views"])
    assert rows["vcn"]["views"] == 2 and rows["classifier"]["views"] == 1
    assert payload["peak_flops"] == 150e9


def test_train_step_quick_cxr_irgen_denoisers(tmp_path):
    payload = _load(train_step.main(["--quick", "--models=cxr_irgen,cxr_irgen_unet",
                                     "--out", str(tmp_path / "train_step.json")]))
    rows = {r["model"]: r for r in payload["results"]}
    assert set(rows) == {"cxr_irgen", "cxr_irgen_unet"}
    for row in rows.values():
        _positive(row, ["compile_s", "step_ms_median", "images_per_s", "gflops_per_step", "params_M"])
        assert math.isfinite(row["final_loss"]) and row["views"] == 1
    # the backbone switch took effect: two different denoisers were timed
    assert rows["cxr_irgen"]["params_M"] != rows["cxr_irgen_unet"]["params_M"]


def test_width_scaling_rounds_to_each_fields_quantum():
    assert train_step._scaled(64, 0.5, 8) == 32 and train_step._scaled(12, 0.5, 8) == 8  # never below one quantum
    assert train_step._scaled((64, 128), 1.5, 32) == (96, 192)
    from xray_gen.configs.cxr_irgen import get_config

    config = get_config("cpu")
    changed = train_step.scale_widths("cxr_irgen", config, 0.5)
    assert changed == {"cxr_irgen.uvit.width": 128} and config.cxr_irgen.uvit.width == 128  # the 'cpu' size's 256 / 2
    changed = train_step.scale_widths("cxr_irgen_unet", config, 0.5)
    assert config.cxr_irgen.unet.block_out_channels == (32, 64) == changed["cxr_irgen.unet.block_out_channels"]


def test_train_step_scaling_sweep_quick(tmp_path):
    payload = _load(train_step.main(["--quick", "--models=classifier", "--width_multipliers=1,2", "--batch_sizes=2,4",
                                     "--out", str(tmp_path / "sweep.json")]))
    rows = payload["results"]
    assert [(r["width_multiplier"], r["batch"]) for r in rows] == [(1.0, 2), (1.0, 4), (2.0, 2), (2.0, 4)]
    assert all(r["status"] == "ok" for r in rows)
    assert rows[2]["params_M"] > rows[0]["params_M"] and rows[2]["gflops_per_step"] > rows[0]["gflops_per_step"]
    assert rows[1]["gflops_per_step"] > rows[0]["gflops_per_step"]  # the batch reached the step


def test_pipeline_throughput_quick(tmp_path):
    payload = _load(pipeline_throughput.main(["--quick", "--out", str(tmp_path / "pipeline.json")]))
    rows = payload["results"]
    assert {r["transform"] for r in rows} == {"classifier", "vcn"}
    for row in rows:
        assert row["batch"] == 8 and row["workers"] == 0
        _positive(row, ["batches_per_s", "studies_per_s", "images_per_s", "ms_per_study", "startup_s", "batch_mb"])
        assert row["studies_per_s"] == pytest.approx(row["batches_per_s"] * row["batch"])


def test_xraygan_quick(tmp_path):
    payload = _load(xraygan.main(["--quick", "--out", str(tmp_path / "xraygan.json")]))
    (row,) = payload["results"]  # --quick: the smoke variant's last phase (GAN at 64 px, VCN reward)
    assert (row["variant"], row["kind"], row["resolution"], row["label"]) == ("smoke", "gan", 64, "gan_64")
    _positive(row, ["lower_s", "compile_s", "compile_total_s", "step_ms_median", "steps_per_s", "images_per_s",
                    "gflops_per_step", "achieved_gflops_s", "footprint_mb", "temp_memory_mb"])
    assert row["images_per_s"] == pytest.approx(row["steps_per_s"] * row["batch"] * 2)
    assert row["timed_steps"] == 2
    assert math.isfinite(row["g_loss"]) and math.isfinite(row["d_loss"])
    sampling = payload["sampling"]
    assert sampling["reports"] == 1 and sampling["resolution"] == 64
    _positive(sampling, ["latency_ms_median", "compile_total_s", "reports_per_s"])
