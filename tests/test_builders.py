"""Tests of the real-dataset TFDS builders on tiny fixture trees (tests/fixtures_real.py)."""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest

from xray_gen.data import builders, schema
from xray_gen.data.builders.splits import hash_split

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import fixtures_real as fx  # noqa: E402

RES = 16


def _labeler():
    """The real labeler if it exists, else a tiny stand-in (keeps these tests independent)."""
    try:
        from xray_gen.data import labeler
        return labeler.label_report
    except ImportError:
        def label_report(text):
            out = schema.empty_labels()
            low = text.lower()
            if "cardiomegaly" in low:
                out[schema.LABEL_INDEX["Cardiomegaly"]] = 1.0
            if "no pneumothorax" in low:
                out[schema.LABEL_INDEX["Pneumothorax"]] = 0.0
            return out
        mod = types.ModuleType("xray_gen.data.labeler")
        mod.label_report = label_report
        sys.modules["xray_gen.data.labeler"] = mod
        import xray_gen.data
        xray_gen.data.labeler = mod
        return label_report


def _read_all(name, manual_dir, data_dir, **options):
    out = {}
    for split in builders.SPLITS:
        src = builders.load_split(name, split, manual_dir, data_dir, resolution=RES, **options)
        out[split] = [src[i] for i in range(len(src))]
    return out


def _text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def _check_common(splits, source):
    patients = {}
    for split, exs in splits.items():
        for ex in exs:
            st = schema.Study.from_example(ex)
            assert st.source == source
            if st.frontal is not None:
                assert st.frontal.shape == (RES, RES)
                assert abs(int(st.frontal.mean()) - fx.FRONTAL_VALUE) <= 3, st.study_id
            if st.lateral is not None:
                assert st.lateral.shape == (RES, RES)
                assert abs(int(st.lateral.mean()) - fx.LATERAL_VALUE) <= 3, st.study_id
            else:
                assert not bool(ex["has_lateral"]) and st.lateral_view == ""
            patients.setdefault(st.patient_id, set()).add(split)
    leaks = {p: s for p, s in patients.items() if len(s) > 1}
    assert not leaks, f"patients in several splits: {leaks}"


def _check_skips(summary, expected):
    for reason, fragment in expected.items():
        assert reason in summary["skipped"], (reason, summary["skipped"].keys())
        firsts = summary["skipped"][reason]["first"]
        assert any(fragment in f for f in firsts), (reason, fragment, firsts)


def _ids(exs):
    return {_text(ex["study_id"]) for ex in exs}


def test_unknown_dataset_and_split(tmp_path):
    with pytest.raises(ValueError, match="openi"):
        builders.load_split("nope", "train", tmp_path, tmp_path)
    with pytest.raises(ValueError, match="validation"):
        builders.load_split("openi", "valid", tmp_path, tmp_path)
    with pytest.raises(ValueError, match="split_ratios"):
        builders.get_builder("openi", tmp_path, RES, bogus=1)
    assert builders.DATASETS == ("openi", "mimic_cxr", "chestxray14", "chexpert")


def test_split_hash_is_deterministic_and_patient_level():
    a = [hash_split(f"p{i}", (0.7, 0.1, 0.2), 0) for i in range(2000)]
    b = [hash_split(f"p{i}", (0.7, 0.1, 0.2), 0) for i in range(2000)]
    assert a == b
    frac = {s: a.count(s) / len(a) for s in builders.SPLITS}
    assert abs(frac["train"] - 0.7) < 0.05 and abs(frac["test"] - 0.2) < 0.05
    c = [hash_split(f"p{i}", (0.7, 0.1, 0.2), 1) for i in range(2000)]
    assert a != c


# ---------------------------------------------------------------------------------------------
# Open-i


@pytest.fixture(scope="module")
def openi(tmp_path_factory):
    label_report = _labeler()
    root = tmp_path_factory.mktemp("openi_src")
    info = fx.write_openi(root)
    data_dir = tmp_path_factory.mktemp("openi_data")
    splits = _read_all("openi", root, data_dir, split_file=info["split_file"])
    summary = builders.last_build_summary("openi", data_dir, RES, split_file=info["split_file"])
    return info, splits, summary, data_dir, label_report


def test_openi_counts_views_labels(openi):
    info, splits, summary, _, label_report = openi
    assert {s: len(v) for s, v in splits.items()} == info["counts"]
    assert {s: _ids(v) for s, v in splits.items()} == info["studies"]
    _check_common(splits, "openi")
    by_id = {_text(ex["study_id"]): ex for exs in splits.values() for ex in exs}
    for sid, ex in by_id.items():
        assert bool(ex["has_lateral"]) == (sid in info["lateral"]), sid
        st = schema.Study.from_example(ex)
        assert st.frontal_view == "FRONTAL"
        assert st.findings and st.impression
        expected = label_report(st.findings + "\n" + st.impression)
        np.testing.assert_array_equal(st.labels, np.asarray(expected, np.float32))
    card = schema.Study.from_example(by_id[info["cardiomegaly"]])
    assert card.labels[schema.LABEL_INDEX["Cardiomegaly"]] == 1.0
    assert _text(by_id["CXR4"]["mesh"]) == "Cardiomegaly"
    assert _text(by_id["CXR4"]["mesh_minor"]) == "mild"
    # Both name styles were used: CXR1 has NLM file names, CXR2 the re-packaged ones.
    assert {"CXR1", "CXR2"} <= set(by_id)


def test_openi_summary_names_offending_files(openi):
    info, splits, summary, data_dir, _ = openi
    assert summary["used"] == info["counts"]
    _check_skips(summary, info["skips"])
    assert list(data_dir.glob("openi/res16-*/1.0.0/build_summary.json"))


def test_openi_hash_split_and_option_configs(openi, tmp_path):
    info, *_ = openi
    b1 = builders.get_builder("openi", tmp_path, RES)
    b2 = builders.get_builder("openi", tmp_path, RES, split_file="split.csv")
    assert b1.builder_config.name == "res16" and b2.builder_config.name.startswith("res16-")
    builder = builders.prepare("openi", info["root"], tmp_path, RES, split_ratios=(0.5, 0.25, 0.25))
    seen = {}
    for split in builder.info.splits:
        src = builder.as_data_source(split=split)
        for i in range(len(src)):
            pid = _text(src[i]["patient_id"])
            assert hash_split(pid, (0.5, 0.25, 0.25), 0) == split
            seen[pid] = split
    assert set(seen) == set().union(*info["studies"].values())


def test_openi_requires_projections_csv(tmp_path):
    root = tmp_path / "src"
    fx.write_openi(root, with_projections=False)
    with pytest.raises(FileNotFoundError, match="projections.*(frontal|unreliable)"):
        builders.load_split("openi", "train", root, tmp_path / "data", resolution=RES)


def test_openi_nothing_usable(tmp_path):
    root = tmp_path / "src"
    fx.write_openi(root, all_missing=True)
    with pytest.raises(ValueError, match="no usable studies.*missing image"):
        builders.load_split("openi", "train", root, tmp_path / "data", resolution=RES)


# ---------------------------------------------------------------------------------------------
# MIMIC-CXR


@pytest.fixture(scope="module")
def mimic(tmp_path_factory):
    root = tmp_path_factory.mktemp("mimic_src")
    info = fx.write_mimic(root)
    data_dir = tmp_path_factory.mktemp("mimic_data")
    splits = _read_all("mimic_cxr", root, data_dir, reports_dir=info["reports_dir"])
    summary = builders.last_build_summary("mimic_cxr", data_dir, RES, reports_dir=info["reports_dir"])
    return info, splits, summary, data_dir


def test_mimic_counts_views_labels_reports(mimic):
    info, splits, summary, _ = mimic
    assert {s: len(v) for s, v in splits.items()} == info["counts"]
    _check_common(splits, "mimic_cxr")
    by_id = {_text(ex["study_id"]): schema.Study.from_example(ex) for exs in splits.values() for ex in exs}
    for sid, (fv, lv) in info["views"].items():
        assert (by_id[sid].frontal_view, by_id[sid].lateral_view) == (fv, lv)
    s1 = by_id["s50000001"]
    assert s1.patient_id == "p10000001"
    assert schema.labels_to_dict(s1.labels) == info["s50000001_labels"]
    assert math.isnan(s1.labels[schema.LABEL_INDEX["Fracture"]])
    assert "lungs are clear" in s1.findings.lower()
    assert "no acute cardiopulmonary process" in s1.impression.lower()
    # The row with an invalid label value was skipped: that study has all-NaN labels.
    assert np.isnan(by_id["s50000006"].labels).all()
    _check_skips(summary, info["skips"])
    assert summary["skipped"]["image not used (other view or extra image)"]["count"] >= 1


def test_mimic_subsets_and_require_lateral(mimic, tmp_path):
    info, *_ = mimic
    opts = dict(reports_dir=info["reports_dir"], subsets=("p10",), require_lateral=True)
    splits = _read_all("mimic_cxr", info["root"], tmp_path, **opts)
    assert {s: len(v) for s, v in splits.items()} == info["counts_p10_lateral"]
    for exs in splits.values():
        for ex in exs:
            assert bool(ex["has_lateral"]) and _text(ex["patient_id"]).startswith("p10")
    assert "s50000002" not in _ids(splits["train"])


# ---------------------------------------------------------------------------------------------
# ChestX-ray14


@pytest.fixture(scope="module")
def nih(tmp_path_factory):
    root = tmp_path_factory.mktemp("nih_src")
    info = fx.write_chestxray14(root)
    data_dir = tmp_path_factory.mktemp("nih_data")
    opts = dict(validation_fraction=0.4, split_seed=3)
    builder = builders.prepare("chestxray14", root, data_dir, RES, **opts)
    splits = {s: [builder.as_data_source(split=s)[i] for i in range(len(builder.as_data_source(split=s)))]
              for s in builder.info.splits}
    summary = builders.last_build_summary("chestxray14", data_dir, RES, **opts)
    return info, splits, summary, opts


def test_chestxray14_splits_labels(nih):
    info, splits, summary, opts = nih
    _check_common(splits, "chestxray14")
    assert _ids(splits["test"]) == info["test"]
    train_val = _ids(splits.get("train", [])) | _ids(splits.get("validation", []))
    assert train_val == info["train_val"]
    for split in ("train", "validation"):
        for ex in splits.get(split, []):
            expected = hash_split(_text(ex["patient_id"]), (0.6, 0.4, 0.0), opts["split_seed"])
            assert expected == split
    by_id = {_text(ex["study_id"]): ex for exs in splits.values() for ex in exs}
    l1 = schema.Study.from_example(by_id["00000001_000"]).labels
    idx = schema.LABEL_INDEX
    assert l1[idx["Cardiomegaly"]] == 1 and l1[idx["Pleural Effusion"]] == 1
    assert l1[idx["Edema"]] == 0 and l1[idx["No Finding"]] == 0
    assert math.isnan(l1[idx["Fracture"]]) and math.isnan(l1[idx["Support Devices"]])
    l2 = schema.Study.from_example(by_id["00000002_000"]).labels
    assert l2[idx["Lung Opacity"]] == 1 and l2[idx["Lung Lesion"]] == 1
    l4 = schema.Study.from_example(by_id["00000004_000"]).labels
    assert l4[idx["Pleural Other"]] == 1 and math.isnan(l4[idx["Lung Opacity"]])
    nih3 = np.asarray(by_id["00000003_000"]["nih_labels"])
    from xray_gen.data.builders.chestxray14 import NIH_LABELS
    assert {NIH_LABELS[i] for i in np.flatnonzero(nih3)} == {"Hernia", "Emphysema"}
    assert int(by_id["00000003_000"]["age"]) == 43 and _text(by_id["00000003_000"]["sex"]) == "M"
    assert not bool(by_id["00000003_000"]["has_lateral"])
    _check_skips(summary, info["skips"])


# ---------------------------------------------------------------------------------------------
# CheXpert


@pytest.fixture(scope="module")
def chexpert(tmp_path_factory):
    root = tmp_path_factory.mktemp("chexpert_src")
    info = fx.write_chexpert(root)
    data_dir = tmp_path_factory.mktemp("chexpert_data")
    opts = dict(validation_fraction=0.4)
    builder = builders.prepare("chexpert", root, data_dir, RES, **opts)
    splits = {}
    for s in builder.info.splits:
        src = builder.as_data_source(split=s)
        splits[s] = [src[i] for i in range(len(src))]
    summary = builders.last_build_summary("chexpert", data_dir, RES, **opts)
    return info, splits, summary


def test_chexpert_studies_views_labels(chexpert):
    info, splits, summary = chexpert
    _check_common(splits, "chexpert")
    assert _ids(splits["test"]) == info["test_studies"]
    assert _ids(splits.get("train", [])) | _ids(splits.get("validation", [])) == info["train_val_studies"]
    by_id = {_text(ex["study_id"]): schema.Study.from_example(ex) for exs in splits.values() for ex in exs}
    for sid, st in by_id.items():
        assert (st.lateral is not None) == (sid in info["lateral"]), sid
    s1 = by_id["patient00001/study1"]
    assert schema.labels_to_dict(s1.labels) == info["study1_labels"]
    assert s1.frontal_view == "PA" and s1.lateral_view == "LATERAL"
    assert by_id["patient00001/study2"].frontal_view == "AP"
    assert summary["used"]["test"] == 2
    _check_skips(summary, info["skips"])


def test_openi_kaggle_csv_layout(openi, tmp_path):
    info = fx.write_openi_kaggle(tmp_path / "src")
    builder = builders.prepare("openi", info["root"], tmp_path / "data", RES)
    exs = []
    for split in builder.info.splits:
        src = builder.as_data_source(split=split)
        exs += [src[i] for i in range(len(src))]
    assert _ids(exs) == info["studies"]
    assert all(bool(ex["has_lateral"]) for ex in exs)
    _check_common({"train": exs}, "openi")
    assert _text(exs[0]["mesh"]) == "normal; Cardiomegaly"
    _check_skips(builders.last_build_summary("openi", tmp_path / "data", RES), info["skips"])
