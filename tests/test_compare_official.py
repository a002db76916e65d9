"""benchmarks/compare_official.py without torch or the official repositories: its --help, the
missing-repository rows, the import isolation of a checkout, and the ratio/target logic on stubbed timings."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `benchmarks/` is a directory of scripts next to the package, not installed
    sys.path.insert(0, ROOT)

from benchmarks import compare_official as co  # noqa: E402

PAIR = {p.name: p for p in co.PAIRS}


def test_help_names_every_repo_flag_and_pair():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "compare_official.py"), "--help"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    for flag in ("--xraygan_repo", "--pggan_repo", "--biggan_repo", "--pairs", "--peak_flops", "--quick"):
        assert flag in out.stdout
    for name in co.PAIR_NAMES:
        assert name in out.stdout


def test_target_ratio_switches_at_sixty_percent_of_peak():
    assert co.target_ratio(0.59) == 1.5
    assert co.target_ratio(0.6) == 1.2
    assert co.target_ratio(0.9) == 1.2
    assert co.target_ratio(None) == 1.5  # no FLOP count: the stricter target


def test_compare_row_from_stubbed_timings():
    pair = PAIR["pggan_32"]
    # Reference: 2 s per step of 4 images at 150 GFLOP/step on a 150 GFLOP/s peak -> 50 % -> target 1.5.
    row = co.compare_row(pair, 4, {"step_s": 2.0, "flops": 150e9}, {"step_s": 1.25, "flops": 100e9}, 150e9)
    assert row["reference_items_per_s"] == pytest.approx(2.0)
    assert row["ours_items_per_s"] == pytest.approx(3.2)
    assert row["ratio"] == pytest.approx(1.6)
    assert row["reference_utilisation"] == pytest.approx(0.5)
    assert row["ours_utilisation"] == pytest.approx(100e9 / 1.25 / 150e9)
    assert row["target_ratio"] == 1.5 and row["met"] is True
    # The same speed-up over a reference at 80 % of the peak only has to reach 1.2x ...
    busy = co.compare_row(pair, 4, {"step_s": 2.0, "flops": 240e9}, {"step_s": 1.6, "flops": None}, 150e9)
    assert busy["target_ratio"] == 1.2 and busy["ratio"] == pytest.approx(1.25) and busy["met"] is True
    assert busy["ours_utilisation"] is None
    # ... and 1.1x misses it; so does 1.4x under a 1.5x target.
    slow = co.compare_row(pair, 4, {"step_s": 2.2, "flops": 264e9}, {"step_s": 2.0, "flops": None}, 150e9)
    assert slow["target_ratio"] == 1.2 and slow["met"] is False
    unknown = co.compare_row(pair, 4, {"step_s": 1.4, "flops": None}, {"step_s": 1.0, "flops": None}, 150e9)
    assert unknown["target_ratio"] == 1.5 and unknown["met"] is False
    text = co.table([row, co.skipped_row(PAIR["sd_unet"], "diffusers is not installed")])
    assert "| pggan_32 |" in text and "diffusers is not installed" in text and "1.6" in text


def test_repo_problem_names_the_flag_and_the_missing_file(tmp_path):
    pair = PAIR["biggan_128"]
    assert co.repo_problem(pair, "") == "--biggan_repo not given"
    assert "is not a directory" in co.repo_problem(pair, str(tmp_path / "absent"))
    for name in pair.marker[:-1]:
        (tmp_path / name).write_text("")
    problem = co.repo_problem(pair, str(tmp_path))
    assert pair.marker[-1] in problem and "--biggan_repo" in problem
    (tmp_path / pair.marker[-1]).write_text("")
    assert co.repo_problem(pair, str(tmp_path)) is None


def test_missing_repos_are_rows_with_notes_and_no_machine_paths(tmp_path):
    empty = tmp_path / "CXR_PGGAN"
    empty.mkdir()
    out = tmp_path / "result.json"
    path = co.main(["--pairs=xraygan_32,pggan_32,biggan_128", f"--pggan_repo={empty}",
                    f"--xraygan_repo={tmp_path / 'XRayGAN'}", f"--out={out}"])
    assert path == str(out)
    text = out.read_text()
    assert str(tmp_path) not in text  # repo flags reduced to folder names
    payload = json.loads(text)
    rows = {r["pair"]: r for r in payload["results"]}
    assert set(rows) == {"xraygan_32", "pggan_32", "biggan_128"}
    assert all(r["status"] == "skipped" for r in rows.values())
    assert "--xraygan_repo" in rows["xraygan_32"]["note"] and "not a directory" in rows["xraygan_32"]["note"]
    assert "PGGAN/network.py" in rows["pggan_32"]["note"]
    assert rows["biggan_128"]["note"] == "--biggan_repo not given"
    assert payload["args"]["pggan_repo"] == "CXR_PGGAN"
    assert payload["summary"] == {"xraygan_32": "skipped", "pggan_32": "skipped", "biggan_128": "skipped"}
    assert "torch_version" not in payload and payload["peak_flops"] is None  # nothing ran: torch never loaded


def test_bad_pair_name_fails_before_any_work():
    with pytest.raises(ValueError, match="unknown pair.*valid: xraygan_32"):
        co.parse_args(["--pairs=xraygan_32,stylegan"])


def test_official_path_isolates_the_checkout_top_level_modules(tmp_path):
    """Two checkouts both have `utils`; each sees its own, and neither leaks or hides ours."""
    for name, value in (("a", 1), ("b", 2)):
        repo = tmp_path / name
        (repo / "pkg").mkdir(parents=True)
        (repo / "utils.py").write_text(f"VALUE = {value}\n")
        (repo / "pkg" / "__init__.py").write_text("from utils import VALUE\n")
    sentinel = type(sys)("utils")
    sys.modules["utils"] = sentinel
    try:
        with co.official_path(str(tmp_path / "a")):
            import pkg
            import utils
            assert utils.VALUE == 1 and pkg.VALUE == 1
        assert sys.modules["utils"] is sentinel and "pkg" not in sys.modules
        with co.official_path(str(tmp_path / "b"), aliases={"GAN": "pkg"}):
            import GAN
            assert GAN.VALUE == 2
        assert "GAN" not in sys.modules and sys.modules["utils"] is sentinel
        assert str(tmp_path / "a") not in sys.path and str(tmp_path / "b") not in sys.path
    finally:
        sys.modules.pop("utils", None)
