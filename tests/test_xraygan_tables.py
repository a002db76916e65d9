"""XRayGAN ablation table: labels from config.json, values, markdown, protocol check, errors, CLI."""

import json
import os

import pytest

from xray_gen.configs import xraygan as xraygan_configs
from xray_gen.models.xraygan import tables as ablation
from xray_gen.evaluation.protocol import Protocol, write_result_json


def metrics(split="validation", n=24, res=64, fid=(40.0, 50.0), ssim=(0.3, 0.25), vc=(0.8, 0.9, 0.2),
            auroc=(0.7, 0.85), with_lateral_fid=True):
    """The evaluator's layout (xray_gen.evaluation.evaluator) for an XRayGAN run."""
    m = {"split": split, "num_reports": n, "resolution": res, "reference": f"phantom/{split}",
         "pairs": {"view_consistency": {"generated": vc[0], "real": vc[1], "mismatched_generated": vc[2],
                                        "vcn": {"workdir": "w/vcn_64", "resolution": 64}}},
         "fidelity": {"frontal": {"fid": fid[0], "kid": {"mean": 0.01, "std": 0.002, "subset_size": n // 2,
                                                         "num_subsets": 100},
                                  "inception_fid": "skipped: no --inception_weights",
                                  "prdc": {"precision": 0.5, "space": "classifier"}}},
         "matched": {"frontal": {"ssim": ssim[0], "n": n}, "lateral": {"ssim": ssim[1], "n": n}},
         "clinical": {"auroc_generated": {"macro": auroc[0], "per_class": {}},
                      "auroc_reference": {"macro": auroc[1]}},
         "skipped": ["fidelity.frontal.inception_fid: skipped: no --inception_weights"]}
    if with_lateral_fid:
        m["fidelity"]["lateral"] = {"fid": fid[1], "kid": {"mean": 0.02, "std": 0.003}}
    else:
        m["fidelity"]["lateral"] = {"fid": "skipped: fewer than 2 images on a side"}
    return m


def protocol(n=24, checksum="ab" * 32, reference="phantom/validation"):
    return Protocol(extractor="xraygan+classifier_features", weights_checksum=checksum, image_count=n,
                    resolution=64, resize_policy="bilinear to 64 px (pipeline)",
                    grey_to_rgb="none (1-channel input)", seeds=(0, 0), reference=reference)


def make_run(root, name, variant="smoke", overrides=None, m=None, p=None, split="validation", config=True):
    workdir = os.path.join(str(root), name)
    os.makedirs(workdir, exist_ok=True)
    if config:
        c = xraygan_configs.get_config(variant)
        d = json.loads(c.to_json_best_effort())
        for k, v in (overrides or {}).items():
            d["xraygan"][k] = v
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(d, f, indent=2, sort_keys=True)
    write_result_json(os.path.join(workdir, "eval", f"xraygan_{split}.json"),
                      m if m is not None else metrics(split=split), p if p is not None else protocol())
    return workdir


@pytest.fixture
def runs(tmp_path):
    return [
        make_run(tmp_path, "full", "", m=metrics(fid=(40.0, 50.0), vc=(0.812345, 0.9, 0.21))),
        make_run(tmp_path, "no_vcn", "wo_vcn", m=metrics(fid=(45.5, 55.0), vc=(0.6, 0.9, 0.5))),
        make_run(tmp_path, "no_mscgan", "wo_mscgan", m=metrics(fid=(60.0, 61.0))),
        make_run(tmp_path, "no_hae", "wo_hae", m=metrics(fid=(48.0, 49.0), with_lateral_fid=False)),
    ]


def test_labels_from_config():
    label = lambda variant, **o: ablation.ablation_label(
        {"xraygan": {**xraygan_configs.get_config(variant).xraygan.to_dict(), **o}})[0]
    assert label("") == "XRayGAN"
    assert label("smoke") == "XRayGAN"
    assert label("wo_vcn") == "w/o VCN"
    assert label("wo_mscgan") == "w/o MSCGAN"
    assert label("wo_hae") == "w/o HAE"
    assert label("wo_vcn", encoder="flat") == "w/o VCN + HAE"
    assert label("", vc_weight=0.0) == "w/o VCN"
    assert label("", generator="oneshot", encoder="flat", use_vcn=False) == "w/o VCN + MSCGAN + HAE"
    assert label("official") == "XRayGAN (VC official ×0.1)"
    assert ablation.ablation_label(None)[0] == "XRayGAN (config unknown)"


def test_rows_and_values(runs):
    report = ablation.build_report(runs)
    rows = report["rows"]
    assert [r["label"] for r in rows] == ["XRayGAN", "w/o VCN", "w/o MSCGAN", "w/o HAE"]
    assert [r["name"] for r in rows] == [r["label"] for r in rows]
    assert [r["variant"] for r in rows] == ["", "wo_vcn", "wo_mscgan", "wo_hae"]
    assert rows[1]["ablation"]["use_vcn"] is False
    m = rows[0]["metrics"]
    assert m["fidelity.frontal.fid"] == 40.0 and m["pairs.view_consistency.generated"] == pytest.approx(0.812345)
    assert m["matched.lateral.ssim"] == 0.25 and m["clinical.auroc_generated.macro"] == 0.7
    assert rows[3]["metrics"]["fidelity.lateral.fid"] is None  # "skipped: ..." in the evaluation
    assert report["comparable"] is True and report["mismatches"] == {} and report["warnings"] == []
    assert report["split"] == "validation" and report["num_reports"] == 24 and report["resolution"] == 64
    assert report["real"]["metrics"] == {"pairs.view_consistency.generated": 0.9,
                                         "clinical.auroc_generated.macro": 0.85}
    json.dumps(report, allow_nan=False)  # strict JSON


def test_markdown(runs):
    md = ablation.to_markdown(ablation.build_report(runs))
    lines = md.splitlines()
    assert lines[0] == "## XRayGAN ablation (split validation, 24 reports, 64 px)"
    header = next(l for l in lines if l.startswith("| Model"))
    assert "FID frontal ↓" in header and "VC mismatched ↓" in header and "Clinical AUROC ↑" in header
    table = [l for l in lines if l.startswith("| ") and not l.startswith("| Model")]
    assert [l.split(" | ")[0][2:] for l in table] == ["XRayGAN", "w/o VCN", "w/o MSCGAN", "w/o HAE", "Real"]
    assert table[0] == "| XRayGAN | 40.00 | 50.00 | 0.300 | 0.250 | 0.812 | 0.210 | 0.700 |"
    assert table[3] == "| w/o HAE | 48.00 | – | 0.300 | 0.250 | 0.800 | 0.200 | 0.700 |"
    assert table[4] == "| Real | – | – | – | – | 0.900 | – | 0.850 |"
    assert "same protocol" in md and "Warning" not in md


def test_names_and_duplicate_labels(tmp_path):
    a, b = make_run(tmp_path, "seed0", ""), make_run(tmp_path, "seed1", "")
    rows = ablation.load_rows([a, b])
    assert [r["name"] for r in rows] == ["XRayGAN (seed0)", "XRayGAN (seed1)"]
    report = ablation.build_report([a, b], names=["full|0", "full 1"])
    md = ablation.to_markdown(report)
    assert "| Model | Config |" in md and "| full\\|0 | XRayGAN |" in md
    with pytest.raises(ablation.AblationError, match="1 names for 2 workdirs"):
        ablation.load_rows([a, b], names=["x"])


def test_protocol_mismatch_warns(tmp_path):
    a = make_run(tmp_path, "a", "")
    b = make_run(tmp_path, "b", "wo_vcn", m=metrics(n=12, vc=(0.5, 0.7, 0.4)), p=protocol(n=12, checksum="cd" * 32))
    report = ablation.build_report([a, b])
    assert report["comparable"] is False
    assert set(report["mismatches"]) == {"num_reports", "weights_checksum"}
    assert report["mismatches"]["num_reports"] == {"XRayGAN": 24, "w/o VCN": 12}
    assert report["num_reports"] is None and report["split"] == "validation"
    assert any("real" in w and "differs" in w for w in report["warnings"])  # vc_real 0.9 vs 0.7
    md = ablation.to_markdown(report)
    assert "> **Warning:** protocol differs in num_reports: XRayGAN: 24, w/o VCN: 12" in md
    assert "weights_checksum" in md and "not directly comparable" in md
    assert "same protocol" not in md
    assert md.splitlines()[0] == "## XRayGAN ablation (split validation, 64 px)"
    # A file without a checksum is left out of that check, not a mismatch.
    c = make_run(tmp_path, "c", "wo_hae", p=protocol(checksum=""))
    d = make_run(tmp_path, "d", "")
    with open(os.path.join(c, "eval", "xraygan_validation.json")) as f:
        rec = json.load(f)
    del rec["protocol"]["weights_checksum"]
    with open(os.path.join(c, "eval", "xraygan_validation.json"), "w") as f:
        json.dump(rec, f)
    assert ablation.build_report([c, d])["comparable"] is True


def test_split_selection(tmp_path):
    w = make_run(tmp_path, "w", "")
    make_run(tmp_path, "w", "", m=metrics(split="test"), p=protocol(reference="phantom/test"), split="test")
    with pytest.raises(ablation.AblationError, match=r"w: several evaluation JSONs \(splits test, validation\)"):
        ablation.build_report([w])
    assert ablation.build_report([w], split="test")["split"] == "test"
    with pytest.raises(ablation.AblationError, match="no evaluation JSON for split 'train'.*test, validation"):
        ablation.build_report([w], split="train")
    t = make_run(tmp_path, "t", "wo_vcn", m=metrics(split="test"), p=protocol(reference="phantom/test"), split="test")
    v = make_run(tmp_path, "v", "")
    mixed = ablation.build_report([v, t])  # each has one file, but not the same split
    assert set(mixed["mismatches"]) == {"split", "reference"} and mixed["split"] is None


def test_errors_name_the_workdir(tmp_path):
    missing = os.path.join(str(tmp_path), "missing")
    with pytest.raises(ablation.AblationError, match=f"{missing}: workdir does not exist"):
        ablation.build_report([missing])
    empty = os.path.join(str(tmp_path), "empty")
    os.makedirs(empty)
    with pytest.raises(ablation.AblationError, match=f"{empty}: no evaluation JSON .*--mode=evaluate"):
        ablation.build_report([empty])

    def broken(name, content):
        w = make_run(tmp_path, name, "")
        with open(os.path.join(w, "eval", "xraygan_validation.json"), "w") as f:
            f.write(content if isinstance(content, str) else json.dumps(content))
        return w

    good = json.load(open(os.path.join(make_run(tmp_path, "good", ""), "eval", "xraygan_validation.json")))
    cases = {
        "truncated": ('{"schema": "xray', "malformed evaluation JSON"),
        "list": ([1, 2], "top level is list"),
        "schema": ({**good, "schema": "other"}, "schema 'other'"),
        "nometrics": ({k: v for k, v in good.items() if k != "metrics"}, "'metrics' missing"),
        "badvalue": ({**good, "metrics": {**good["metrics"], "fidelity": {"frontal": {"fid": "big"}}}},
                     "metrics.fidelity.frontal.fid is str"),
        "badvc": ({**good, "metrics": {**good["metrics"], "pairs": 0.5}}, "metrics.pairs is float"),
    }
    for name, (content, message) in cases.items():
        w = broken(name, content)
        with pytest.raises(ablation.AblationError, match=message) as e:
            ablation.build_report([w])
        assert str(e.value).startswith(f"{w}: ")

    bad_config = make_run(tmp_path, "badconfig", "")
    with open(os.path.join(bad_config, "config.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(ablation.AblationError, match=f"{bad_config}: malformed config.json"):
        ablation.build_report([bad_config])


def test_missing_config_warns(tmp_path):
    w = make_run(tmp_path, "noconfig", config=False)
    report = ablation.build_report([w])
    assert report["rows"][0]["label"] == "XRayGAN (config unknown)"
    assert any("no config.json" in x for x in report["warnings"])


def test_nan_metrics_are_dashes(tmp_path):
    m = metrics()
    m["clinical"]["auroc_generated"]["macro"] = float("nan")  # written as null
    m["clinical"]["auroc_reference"]["macro"] = float("nan")
    w = make_run(tmp_path, "nan", "", m=m)
    report = ablation.build_report([w])
    assert report["rows"][0]["metrics"]["clinical.auroc_generated.macro"] is None
    table = [l for l in ablation.to_markdown(report).splitlines() if l.startswith("| XRayGAN")]
    assert table[0].endswith("| – |")


def test_cli(runs, tmp_path, capsys):
    out = os.path.join(str(tmp_path), "out")
    rc = ablation.main([f"--workdirs={','.join(runs[:2])}", "--names=full,no vcn", "--split=validation",
                        f"--out={out}"])
    assert rc == 0
    printed = capsys.readouterr().out
    with open(os.path.join(out, "ablation.md")) as f:
        assert f.read() == printed
    with open(os.path.join(out, "ablation.json")) as f:
        data = json.load(f)
    assert data["schema"] == ablation.SCHEMA and data["comparable"] is True
    assert [r["name"] for r in data["rows"]] == ["full", "no vcn"]
    assert [r["label"] for r in data["rows"]] == ["XRayGAN", "w/o VCN"]
    assert sorted(os.listdir(out)) == ["ablation.json", "ablation.md"]  # no temporary files left

    rc = ablation.main([f"--workdirs={runs[0]},{os.path.join(str(tmp_path), 'nope')}", f"--out={out}"])
    assert rc == 1
    assert "nope: workdir does not exist" in capsys.readouterr().err
