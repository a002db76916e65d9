"""benchmarks/run.py: runs each model's script in its own process, merges their JSON into one table,
and reports a failing script without stopping the others. The model scripts are stubbed here (each
is tested in --quick mode by its own test); the runner's plumbing is what is checked."""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import run  # noqa: E402

GOOD = '''
import json, sys
out = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--out=")][0]
json.dump({"benchmark": "fake", "args": sys.argv[1:], "results": [
    {"label": "gan_32", "resolution": 32, "batch": 4, "compile_total_s": 1.5, "gflops_per_step": 2.0,
     "step_ms_median": 10.0, "steps_per_s": 100.0, "images_per_s": 400.0, "utilisation": 0.5}]}, open(out, "w"))
'''
BAD = "import sys; sys.stderr.write('boom: no such phase'); sys.exit(3)"


def test_runner_merges_rows_and_reports_failures(tmp_path, monkeypatch):
    (tmp_path / "good.py").write_text(GOOD)
    (tmp_path / "bad.py").write_text(BAD)
    monkeypatch.setattr(run, "HERE", str(tmp_path))
    monkeypatch.setattr(run, "SCRIPTS", {"good": ("good.py", ["--models=x"]), "bad": ("bad.py", [])})
    out = tmp_path / "all.json"
    path = run.main([f"--models=good,bad", "--quick", "--peak_flops=1e12", f"--out={out}"])
    payload = json.load(open(path))
    rows = payload["results"]
    assert rows[0] == {"model": "good", "phase": "gan_32", "resolution": 32, "batch": 4, "width_multiplier": None,
                       "compile_s": 1.5,
                       "gflops_per_step": 2.0, "step_ms_median": 10.0, "steps_per_s": 100.0, "images_per_s": 400.0,
                       "achieved_gflops_s": None, "utilisation": 0.5, "footprint_mb": None, "status": "ok"}
    assert rows[1]["model"] == "bad" and rows[1]["status"] == "failed (exit 3)"
    assert "boom" in payload["per_model"]["bad"]["error"]
    passed = payload["per_model"]["good"]["args"]
    assert "--quick" in passed and "--peak_flops=1000000000000.0" in passed and "--models=x" in passed
    table = open(os.path.splitext(path)[0] + ".md").read()
    assert "gan_32" in table and "failed (exit 3)" in table


def test_scaling_sweep_options_reach_only_the_sweepable_scripts(tmp_path, monkeypatch):
    (tmp_path / "good.py").write_text(GOOD)
    monkeypatch.setattr(run, "HERE", str(tmp_path))
    monkeypatch.setattr(run, "SCRIPTS", {"good": ("good.py", []), "other": ("good.py", [])})
    monkeypatch.setattr(run, "SWEEPABLE", ("good",))
    path = run.main(["--models=good,other", "--quick", "--width_multipliers=0.5,1", "--batch_sizes=8",
                     f"--out={tmp_path / 'all.json'}"])
    payload = json.load(open(path))
    assert "--width_multipliers=0.5,1" in payload["per_model"]["good"]["args"]
    assert "--batch_sizes=8" in payload["per_model"]["good"]["args"]
    assert not any(a.startswith("--width") for a in payload["per_model"]["other"]["args"])


def test_unknown_model_is_rejected(capsys):
    import pytest

    with pytest.raises(SystemExit):
        run.parse_args(["--models=pggan,stylegan"])
    assert "unknown model(s) stylegan" in capsys.readouterr().err
