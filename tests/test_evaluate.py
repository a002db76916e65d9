"""xray_gen.evaluate: a folder of PNGs (+ metadata.csv) scored against a phantom split end to end."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from xray_gen import evaluate as ev
from xray_gen.evaluation import generated_folder
from xray_gen.configs.default import get_default
from xray_gen.data.pipeline import open_split
from xray_gen.data.schema import CHEXPERT_LABELS

RES = 32
SIZES = {"train_size": 48, "validation_size": 24, "test_size": 24}


def data_config():
    c = get_default()
    c.data.resolution = RES
    for k, v in SIZES.items():
        c.data.phantom[k] = v
    c.data.phantom.memoize = True  # the tests read the same tiny splits several times
    return c.data


def config_overrides():
    return [f"--config.data.resolution={RES}"] + [f"--config.data.phantom.{k}={v}" for k, v in SIZES.items()]


def write_folder(directory, studies, *, ids=None, lateral=True, labels=True, reports=True, extra=()):
    """PNGs of phantom studies (frontal, optionally lateral in a subfolder) + metadata.csv."""
    os.makedirs(os.path.join(directory, "lat"), exist_ok=True)
    header = ["file", "id", "view", "pair_id"] + (["report"] if reports else [])
    header += list(CHEXPERT_LABELS) if labels else []
    rows = []
    for k, ex in enumerate(studies):
        views = ("frontal", "lateral") if lateral else ("frontal",)
        for view in views:
            name = f"{k:03d}_{view}.png" if view == "frontal" else os.path.join("lat", f"{k:03d}.png")
            Image.fromarray(np.asarray(ex[view], np.uint8)).save(os.path.join(directory, name))
            row = {"file": name, "id": ids[k] if ids else "", "view": view, "pair_id": f"p{k}"}
            if reports:
                row["report"] = f"FINDINGS: {ex['findings']}\nIMPRESSION: {ex['impression']}"
            if labels:
                row.update({n: ("" if np.isnan(v) else str(int(v))) for n, v in zip(CHEXPERT_LABELS, ex["labels"])})
            rows.append(row)
    for name, image in extra:
        Image.fromarray(image).save(os.path.join(directory, name))
        rows.append({"file": name, "view": "frontal"})
    with open(os.path.join(directory, "metadata.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(rows)


def split(name, views=("frontal",)):
    src = open_split(data_config(), name, views=views)
    return [src[i] for i in range(len(src))]


def checkpoint_untrained(task_cls, config, workdir):
    """A workdir as `main.run(config, workdir, "train")` leaves it (config.json + checkpoint), with the
    initial weights: evaluation only restores it, the weights need not be good, and this skips the
    ~25 s of compiling training steps."""
    import jax

    from xray_gen.training import records
    from xray_gen.training.checkpoint import Checkpointer

    records.write_run_records(workdir, config)
    task = task_cls(config)
    state = jax.jit(task.init)(jax.random.PRNGKey(config.seed))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    ckpt.save(0, state, {"task": task.host_state(), "config": config.to_json_best_effort()})
    ckpt.close()


@pytest.fixture(scope="module")
def networks(tmp_path_factory):
    """Smoke-sized classifier and VCN workdirs on the same tiny phantom."""
    from xray_gen.configs import classifier as classifier_config
    from xray_gen.configs import vcn as vcn_config
    from xray_gen.models.classifier.task import ClassifierTask
    from xray_gen.models.vcn.task import VCNTask

    root = tmp_path_factory.mktemp("nets")
    out = {}
    for name, module, task_cls in (("classifier", classifier_config, ClassifierTask), ("vcn", vcn_config, VCNTask)):
        c = module.get_config("smoke")
        c.data = data_config()
        checkpoint_untrained(task_cls, c, str(root / name))
        out[name] = str(root / name)
    return out


def test_end_to_end_with_classifier_and_vcn(tmp_path, networks, monkeypatch):
    from xray_gen.evaluation.sections import fidelity

    monkeypatch.setattr(fidelity, "MIN_CLASS_IMAGES", fidelity.PRDC_K + 1)  # 24 studies: let common classes in
    studies = split("validation", views=("frontal", "lateral"))
    test_ids = [str(ex["study_id"]) for ex in split("test")]
    gen = tmp_path / "gen"
    # ids of test studies: reports are compared with those studies' reports
    write_folder(str(gen), studies, ids=test_ids[:len(studies)])
    out = tmp_path / "out"
    record = ev.evaluate(str(gen), "phantom/test", str(out), data_config(),
                         classifier_workdir=networks["classifier"], vcn_workdir=networks["vcn"],
                         bootstrap=10, report_bootstrap=5, num_pairs=20)
    with open(out / "metrics.json") as f:
        written = json.load(f)
    assert written["metrics"]["inputs"] == record["metrics"]["inputs"]
    m = written["metrics"]
    errors = [s for s in m["skipped"] if "error:" in s]
    assert not errors, errors
    assert m["inputs"]["loaded"] == 2 * len(studies) and m["inputs"]["pairs"] == len(studies)
    for view in ("frontal", "lateral"):
        f = m["fidelity"][view]
        assert f["fid"] >= 0 and np.isfinite(f["kid"]["mean"])
        assert f["fid_ci"][0] <= f["fid"] <= f["fid_ci"][1]
        assert set(f["prdc"]) >= {"precision", "recall", "density", "coverage"}
        assert 0 <= f["prdc"]["coverage"] <= 1 and len(f["prdc"]["precision_ci"]) == 2
        assert 0 < f["ms_ssim_diversity"]["generated"] <= 1
        assert f["inception_fid"].startswith("skipped: no --inception_weights")
        per = f["per_pathology_fid"]
        scored = {k: p for k, p in per.items() if isinstance(p, dict)}
        assert scored and len(scored) < len(per)  # common classes scored, rare ones skipped with a reason
        for p in scored.values():
            assert p["fid"] >= 0 and all(0 <= p["prdc"][m] <= 1 for m in ("precision", "recall", "coverage"))
        assert m["privacy"][view]["pixel"]["near_copy"]["n_generated"] == len(studies)
        assert m["privacy"][view]["n_train"] == SIZES["train_size"]
        assert "near_copy" in m["privacy"][view]["feature"]
    clinical = m["clinical"]
    assert 0 <= clinical["auroc_generated"]["macro"] <= 1 and clinical["auroc_generated"]["n"] == len(studies)
    assert set(clinical["prevalence"]["predicted"]["generated"]) == set(CHEXPERT_LABELS)
    rep = m["reports"]
    assert rep["n_matched_reference_ids"] == len(studies) and rep["vs_reference"]["bleu_4"] >= 0
    assert "micro" in json.dumps(rep["vs_conditioning_labels"])
    vc = m["pairs"]["view_consistency"]
    assert 0 <= vc["generated"] <= 1 and 0 <= vc["real"] <= 1 and 0 <= vc["mismatched_generated"] <= 1
    assert "generated" in m["pairs"]["image_report_agreement"]
    assert m["privacy"]["reports"]["generated"]["n"] == len(studies)
    p = written["protocol"]
    assert p["extractor"] == "xray_gen_classifier_penultimate" and len(p["weights_checksum"]) == 64
    assert p["reference"] == "phantom/test" and p["reference_count"] == SIZES["test_size"]
    assert p["image_count"] == 2 * len(studies) and p["extra"]["vcn"]["weights_checksum"]
    try:
        import xray_gen.evaluation.html_report  # noqa: F401
    except ImportError:
        assert not (out / "report.html").exists()
    else:
        assert (out / "report.html").stat().st_size > 0


def test_without_networks_skips_are_recorded_and_planted_copies_raise_near_copy_rate(tmp_path):
    generated = split("validation")
    train = split("train")
    n_plant = 8
    clean, planted = tmp_path / "clean", tmp_path / "planted"
    write_folder(str(clean), generated, lateral=False, labels=False, reports=False)
    # planted: the same folder with n_plant images replaced by training images (one shifted by a pixel)
    copies = [dict(ex) for ex in generated]
    for k in range(n_plant):
        image = np.asarray(train[3 * k]["frontal"])
        copies[k]["frontal"] = np.roll(image, 1, axis=1) if k == 0 else image
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    write_folder(str(planted), copies, lateral=False, labels=False, reports=False)
    (planted / "broken.png").write_bytes(broken.read_bytes())
    with open(planted / "metadata.csv", "a") as f:
        f.write("broken.png,,frontal,\nmissing.png,,frontal,\n")

    rates, copies_clean = {}, set()
    for name, folder in (("clean", clean), ("planted", planted)):
        record = ev.evaluate(str(folder), "phantom/test", str(tmp_path / f"out_{name}"), data_config(),
                             bootstrap=10, num_pairs=10, html=False)
        m = record["metrics"]
        near = m["privacy"]["frontal"]["pixel"]["near_copy"]
        rates[name] = near["rate"]
        if name == "planted":
            assert near["n_copies"] >= n_plant
            closest = m["privacy"]["frontal"]["pixel"]["closest_pairs"][:n_plant]
            assert {p["train"] for p in closest} == {3 * k for k in range(n_plant)}
            assert m["inputs"]["unreadable"] == 2 and m["inputs"]["loaded"] == len(generated)
            assert m["inputs"]["unreadable_files"][0].startswith("broken.png")
            assert m["inputs"]["unreadable_files"][1].startswith("missing.png")
    assert rates["planted"] >= n_plant / len(generated) and rates["planted"] > rates["clean"]
    # every section without its inputs says why, and nothing crashed
    assert m["fidelity"]["frontal"]["fid"].startswith("skipped: no --classifier_workdir")
    assert m["fidelity"]["lateral"].startswith("skipped: no generated lateral")
    assert m["clinical"]["auroc_generated"].startswith("skipped:")
    assert m["reports"]["status"].startswith("skipped: no generated reports")
    assert m["pairs"]["view_consistency"] == "skipped: no --vcn_workdir"
    assert m["privacy"]["frontal"]["feature"].startswith("skipped:")
    assert m["privacy"]["reports"].startswith("skipped:")
    assert not [s for s in m["skipped"] if "error:" in s]
    assert 0 < m["fidelity"]["frontal"]["ms_ssim_diversity"]["generated"] <= 1
    assert record["protocol"]["extractor"].startswith("none")


def test_folder_without_csv_is_frontal_unlabeled_and_unreadable_files_are_counted(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (40, 50), np.uint8)).save(tmp_path / "a" / "x.png")
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), np.uint8)).save(tmp_path / "a" / "b" / "y.png")
    Image.fromarray(rng.integers(0, 65535, (64, 64), np.uint16)).save(tmp_path / "z16.png")
    (tmp_path / "bad.png").write_bytes(b"garbage")
    gen = generated_folder.load_generated(str(tmp_path), RES)
    assert gen.images.shape == (3, RES, RES) and gen.images.dtype == np.uint8
    assert gen.views == ["frontal"] * 3 and not gen.has_labels and not gen.has_reports
    s = gen.summary
    assert s["png_files_found"] == 4 and s["loaded"] == 3 and s["unreadable"] == 1
    assert s["unreadable_files"][0].startswith("bad.png") and s["non_square_resized"] == 1


def test_bad_csv_column_gives_a_clear_error(tmp_path):
    Image.fromarray(np.zeros((RES, RES), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "metadata.csv").write_text("file,view,Cardiomegally\na.png,frontal,1\n")
    with pytest.raises(generated_folder.MetadataError, match="unknown column 'Cardiomegally'.*Cardiomegaly"):
        generated_folder.load_generated(str(tmp_path), RES)
    gen = generated_folder.load_generated(str(tmp_path), RES, ignore_columns=["Cardiomegally"])
    assert len(gen.files) == 1
    (tmp_path / "metadata.csv").write_text("path,view\na.png,frontal\n")
    with pytest.raises(generated_folder.MetadataError, match="unknown column 'path'"):
        generated_folder.load_generated(str(tmp_path), RES)
    (tmp_path / "metadata.csv").write_text("file,view,pleural_effusion\na.png,frontal,yes\n")
    with pytest.raises(generated_folder.MetadataError, match="row 2, column 'pleural_effusion': 'yes'"):
        generated_folder.load_generated(str(tmp_path), RES)
    (tmp_path / "metadata.csv").write_text("file,view\na.png,oblique\n")
    with pytest.raises(generated_folder.MetadataError, match="column 'view'"):
        generated_folder.load_generated(str(tmp_path), RES)
    # the CLI prints it as an error (no traceback) and fails
    (tmp_path / "metadata.csv").write_text("file,view,Cardiomegally\na.png,frontal,1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "xray_gen.evaluate", f"--generated={tmp_path}", "--reference=phantom/test",
         f"--out={tmp_path / 'out'}", *config_overrides()],
        capture_output=True, text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode != 0
    assert "error:" in proc.stderr and "unknown column 'Cardiomegally'" in proc.stderr
    assert "Traceback" not in proc.stderr
