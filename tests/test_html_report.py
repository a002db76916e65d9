"""xray_gen.evaluation.html_report: self-contained HTML, value formatting, escaping, curves."""

import base64
import importlib.util
import io
import os
import re

import numpy as np
import pytest

from xray_gen.evaluation import html_report
from xray_gen.evaluation.html_report import format_value, read_curves, write_html_report
from xray_gen.evaluation.protocol import Protocol, read_result_json, write_result_json

HOSTILE = "<script>alert('x')</script>"
SECTIONS = ["Metrics", "Samples", "Privacy: closest pairs", "Distributions", "Per-class metrics",
            "Training curves", "Protocol", "Versions"]


def _result(tmp_path):
    metrics = {
        "fidelity": {"fid": (12.3456, 11.9, 12.8), "inception_score": (1.23, 0.04),
                     "prdc": {"precision": 0.912, "recall": float("nan")}},
        "clinical": {"auroc_macro": (0.912, 0.901, 0.925),
                     "per_class": {"Cardiomegaly": {"precision": 0.8, "recall": 0.7, "f1": None},
                                   "Edema": {"precision": 0.5, "recall": 0.6, "f1": 0.55}}},
        "reports": {"bleu4": 0.1, "note": HOSTILE},
        "privacy": {"near_copy": {"rate": 0.01, "rate_ci": (0.0, 0.02)},
                    "closest_pairs": [{"generated": 3, "train": 7, "distance": 0.5}]},
    }
    protocol = Protocol(extractor="inception_v3_fid_pool", weights_checksum="abc123", image_count=64,
                        resolution=(299, 299), resize_policy="bilinear", grey_to_rgb="repeat x3",
                        seeds=(0, 1), bootstrap_n=100, reference="phantom/test")
    path = str(tmp_path / "result.json")
    write_result_json(path, metrics, protocol)
    return read_result_json(path)


def _inputs():
    rng = np.random.default_rng(0)
    samples = [
        {"condition": "Cardiomegaly", "images": [rng.uniform(-1, 1, (32, 32)),
                                                 rng.integers(0, 256, (32, 32, 1), dtype=np.uint8)],
         "captions": ["frontal PA", "lateral LL"], "text": "FINDINGS: " + HOSTILE + " enlarged heart."},
        {"condition": "No Finding", "images": [rng.uniform(-1, 1, (32, 32, 1))], "captions": ["frontal"],
         "text": "normal"},
        {"condition": "Cardiomegaly", "images": [rng.uniform(-1, 1, (32, 32))] * 2,
         "captions": ["frontal", "lateral"], "text": "second cardiomegaly sample"},
    ]
    pairs = [{"generated": rng.uniform(-1, 1, (32, 32)), "training": rng.uniform(-1, 1, (32, 32)),
              "distance": 0.1234, "space": "feature", "generated_id": "gen-17", "training_id": "p10/s5"}]
    histograms = {"nearest-train distance": {"values": rng.normal(1, 0.2, 200),
                                             "reference_values": rng.normal(1.1, 0.2, 200),
                                             "thresholds": {"near-copy (1st pct)": 0.6}}}
    per_class = {"FID per class": {"Cardiomegaly": 30.0, "Edema": 41.0, "No $Finding$": None},
                 "prevalence real": {"Cardiomegaly": 0.2, "Edema": 0.1},
                 "prevalence generated": {"Cardiomegaly": 0.25, "Edema": (0.1, 0.05, 0.15)}}
    curves = {"train/loss": [(s, 1.0 / (s + 1)) for s in range(20)], "eval/fid": [(0, 50.0), (10, 30.0)]}
    return dict(samples=samples, privacy_pairs=pairs, histograms=histograms, per_class=per_class, curves=curves)


def _sections(text):
    return re.findall(r'<section id="([^"]+)"><h2>(.*?)</h2>(.*?)</section>', text, re.S)


def test_report_renders_all_sections_self_contained(tmp_path):
    result = _result(tmp_path)
    inputs = _inputs()
    out = write_html_report(str(tmp_path / "sub" / "report.html"), result, title="run 1", **inputs)
    assert out == str(tmp_path / "sub" / "report.html")
    text = open(out, encoding="utf-8").read()
    assert text.startswith("<!DOCTYPE html>")
    headings = [h for _, h, _ in _sections(text)]
    assert headings == SECTIONS
    for _, heading, body in _sections(text):
        assert "not computed" not in body, heading
    for group in ("fidelity", "clinical", "reports", "privacy"):
        assert f"<h3>{group}</h3>" in text
    assert "<h3>Cardiomegaly</h3>" in text and "<h3>No Finding</h3>" in text  # grouped by condition
    assert text.count("<h3>Cardiomegaly</h3>") == 1
    # every image (samples 5, pair 2, histogram 1, per-class 3, curves 2) is an embedded PNG
    srcs = re.findall(r'<img [^>]*src="([^"]*)"', text)
    assert len(srcs) == 5 + 2 + 1 + 3 + 2
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r"https?://", text)
    assert not re.search(r"<(script|link|iframe)\b", text, re.I)
    assert 'class="error"' not in text
    # pairs, protocol and versions
    assert "gen-17" in text and "p10/s5" in text and "feature distance 0.123" in text
    assert "<dt>extractor</dt><dd>inception_v3_fid_pool</dd>" in text
    assert "<dt>resolution</dt><dd>299, 299</dd>" in text
    assert "<dt>numpy</dt>" in text or "<dt>jax</dt>" in text
    # the images decode to the right sizes (frontal float in [-1, 1], lateral uint8 HxWx1)
    from PIL import Image

    first = Image.open(io.BytesIO(base64.b64decode(srcs[0].split(",", 1)[1])))
    assert first.size == (32, 32) and first.mode == "L"


def test_metric_values_formatted():
    assert format_value((0.912, 0.901, 0.925)) == "0.912 [0.901, 0.925]"
    assert format_value([1.23, 0.04]) == "1.23 \u00b1 0.04"
    assert format_value([0.0, 0.02], "rate_ci") == "[0, 0.02]"
    assert format_value(None) == "\u2013"
    assert format_value(float("nan")) == "\u2013"
    assert format_value((0.5, None, None)) == "0.5 [\u2013, \u2013]"
    assert format_value(7) == "7"
    assert format_value(np.float32(0.25)) == "0.25"
    assert format_value(1234.567) == "1234.6"
    assert format_value(list(range(20))).startswith("20 values (mean 9.5")


def test_metric_tables_in_html(tmp_path):
    text = html_report.render_html(_result(tmp_path))
    assert "<td>fid</td><td class=\"num\">12.3 [11.9, 12.8]</td>" in text
    assert "<td>inception_score</td><td class=\"num\">1.23 \u00b1 0.04</td>" in text
    assert "<td>prdc.recall</td><td class=\"num\">\u2013</td>" in text  # NaN -> null -> dash
    assert "<td>near_copy.rate_ci</td><td class=\"num\">[0, 0.02]</td>" in text
    # per-class dict of dicts -> its own table with one row per class, one column per metric
    m = re.search(r"<h4>per_class</h4><table>(.*?)</table>", text, re.S)
    assert m and "<th>precision</th><th>recall</th><th>f1</th>" in m.group(1)
    assert "<tr><th>Cardiomegaly</th>" in m.group(1) and "<tr><th>Edema</th>" in m.group(1)
    assert re.search(r"<h4>closest_pairs</h4><table><tr><th>generated</th><th>train</th><th>distance</th>", text)


def test_hostile_text_escaped(tmp_path):
    inputs = _inputs()
    inputs["samples"][0]["captions"][0] = HOSTILE
    inputs["samples"][0]["condition"] = "<b>bold</b> & co"
    inputs["per_class"][HOSTILE] = {HOSTILE: 1.0}
    inputs["curves"] = {HOSTILE: [(0, 1.0), (1, 2.0)]}
    path = write_html_report(str(tmp_path / "r.html"), _result(tmp_path), title=HOSTILE, **inputs)
    text = open(path, encoding="utf-8").read()
    assert "<script" not in text.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert "<b>bold</b>" not in text and "&lt;b&gt;bold&lt;/b&gt; &amp; co" in text
    assert "<title>&lt;script&gt;" in text


def test_empty_inputs_not_computed(tmp_path):
    path = write_html_report(str(tmp_path / "empty.html"), {})
    text = open(path, encoding="utf-8").read()
    sections = _sections(text)
    assert [h for _, h, _ in sections] == SECTIONS
    for _, heading, body in sections:
        assert "not computed" in body, heading
    assert "<img" not in text
    # a result with metrics only: the other sections still say so
    text = html_report.render_html({"metrics": {"fidelity": {}}, "protocol": {}, "versions": None},
                                   samples=[], histograms={}, per_class={}, curves={})
    assert all("not computed" in body for _, _, body in _sections(text))


def test_read_curves_round_trip(tmp_path):
    from clu import metric_writers

    workdir = str(tmp_path / "workdir")
    writer = metric_writers.create_default_writer(workdir)
    for step in range(5):
        writer.write_scalars(step, {"train/loss": 1.0 / (step + 1), "train/lr": 0.1})
    writer.write_scalars(4, {"eval/fid": 42.5})
    writer.flush()
    writer.close()
    curves = read_curves(workdir)
    assert set(curves) == {"train/loss", "train/lr", "eval/fid"}
    assert [s for s, _ in curves["train/loss"]] == [0, 1, 2, 3, 4]
    np.testing.assert_allclose([v for _, v in curves["train/loss"]], [1 / (s + 1) for s in range(5)], rtol=1e-6)
    assert curves["eval/fid"] == [(4, 42.5)]
    assert set(read_curves(workdir, tags=["train/*"])) == {"train/loss", "train/lr"}
    assert set(read_curves(workdir, tags="eval/fid")) == {"eval/fid"}
    empty = tmp_path / "no_events"
    empty.mkdir()
    assert read_curves(str(empty)) == {}
    with pytest.raises(FileNotFoundError):
        read_curves(str(tmp_path / "missing"))
    # the curves feed the report
    text = html_report.render_html({}, curves=curves)
    assert text.count('src="data:image/png;base64,') == 3


def _load_screenshot_script():
    path = os.path.join(os.path.dirname(__file__), os.pardir, "scripts", "screenshot_report.py")
    spec = importlib.util.spec_from_file_location("screenshot_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(_load_screenshot_script().find_chromium() is None, reason="no chromium binary on PATH")
def test_headless_chromium_screenshot(tmp_path):
    from PIL import Image

    script = _load_screenshot_script()
    report = write_html_report(str(tmp_path / "report.html"), _result(tmp_path), **_inputs())
    png = script.screenshot(report, str(tmp_path / "report.png"), width=1000, height=1400, timeout=90)
    im = np.asarray(Image.open(png).convert("L"), np.float64)
    assert im.shape == (1400, 1000)
    assert im.std() > 10                      # text, tables and images, not a blank page
    assert (im < 100).mean() > 0.005          # some dark pixels (text)
    assert (im > 200).mean() > 0.3            # mostly the white page background
