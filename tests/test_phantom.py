"""Tests for the procedural phantom: determinism, shapes, splits, requested findings, view
consistency, labels/report agreement (through the rule-based labeler) and co-occurrence."""

import re

import numpy as np
import pytest

from xray_gen.data.labeler import label_report
from xray_gen.data.phantom import Phantom
from xray_gen.data.schema import CHEXPERT_LABELS, LABEL_INDEX, Study

# A word each positive observation's sentence must contain.
KEYWORDS = {
    "Enlarged Cardiomediastinum": r"mediastin", "Cardiomegaly": r"cardiomegaly|heart|cardiac",
    "Lung Opacity": r"opacit", "Lung Lesion": r"nodul|mass", "Edema": r"edema|congestion",
    "Consolidation": r"consolidat", "Pneumonia": r"pneumonia", "Atelectasis": r"atelecta",
    "Pneumothorax": r"pneumothorax", "Pleural Effusion": r"effusion", "Pleural Other": r"pleural (?:thickening|plaque)",
    "Fracture": r"fracture", "Support Devices": r"tube|line|catheter|pacemaker|picc",
}


def _same(a, b):
    return np.array_equal(np.nan_to_num(a, nan=9.0), np.nan_to_num(b, nan=9.0))


@pytest.fixture(scope="module")
def ph64():
    return Phantom(resolution=64, seed=0, deid_rate=0.3)


def test_deterministic_per_seed_split_index(ph64):
    a, b = ph64.study(7, "train"), Phantom(resolution=64, seed=0, deid_rate=0.3).study(7, "train")
    ph64.study(3, "train")  # call order must not matter
    c = ph64.study(7, "train")
    for other in (b, c):
        assert np.array_equal(a.frontal, other.frontal) and np.array_equal(a.lateral, other.lateral)
        assert a.report == other.report and _same(a.labels, other.labels)
    for other in (ph64.study(8, "train"), ph64.study(7, "validation"), Phantom(64, seed=1).study(7)):
        assert not np.array_equal(a.frontal, other.frontal)


@pytest.mark.parametrize("res", [64, 256])
def test_shapes_and_dtypes(res):
    s = Phantom(resolution=res, seed=0).study(0, "test")
    assert isinstance(s, Study) and s.source == "phantom"
    for img in (s.frontal, s.lateral):
        assert img.shape == (res, res) and img.dtype == np.uint8
        assert img.min() < 40 and img.max() > 200  # black background, white bone/markers
    assert s.labels.shape == (14,) and s.labels.dtype == np.float32
    assert set(np.unique(s.labels[~np.isnan(s.labels)])) <= {-1.0, 0.0, 1.0}
    assert s.frontal_view in ("PA", "AP", "AP_SUPINE") and s.lateral_view == "LATERAL"
    assert s.patient_id == "phantom-test-0" and s.findings and s.impression
    assert s.report.startswith("FINDINGS:")


def test_splits_give_distinct_patients(ph64):
    ids, frontals = set(), []
    for split in ("train", "validation", "test"):
        for i in range(5):
            s = ph64.study(i, split)
            ids.add(s.patient_id)
            frontals.append(s.frontal.tobytes())
    assert len(ids) == 15 and len(set(frontals)) == 15
    with pytest.raises(ValueError, match="split"):
        ph64.study(0, "dev")


@pytest.mark.parametrize("values", [
    {"Cardiomegaly": 1.0, "Pleural Effusion": 1.0},
    {"Pneumothorax": 1.0, "Support Devices": 1.0},
    {"Pneumonia": -1.0, "Fracture": 1.0},
    {"Lung Lesion": 1.0, "Edema": 1.0, "Atelectasis": -1.0},
    {},
])
def test_study_with_honours_requested_findings(ph64, values):
    for index in range(3):
        s = ph64.study_with(values, index=index, split="test")
        text = s.report.lower()
        for name, v in values.items():
            assert s.labels[LABEL_INDEX[name]] == v, (name, s.report)
            assert re.search(KEYWORDS[name], text), (name, s.report)
        implied = {"Lung Opacity"} if any(values.get(n) == 1 for n in
                                          ("Edema", "Consolidation", "Pneumonia", "Lung Lesion", "Atelectasis")) else set()
        for name in CHEXPERT_LABELS[1:]:
            if name not in values and name not in implied:
                assert s.labels[LABEL_INDEX[name]] in (0.0,) or np.isnan(s.labels[LABEL_INDEX[name]]), (name, s.report)
        no_finding = s.labels[LABEL_INDEX["No Finding"]]
        assert (no_finding == 1) == all(n == "Support Devices" for n in values), s.report
        assert _same(label_report(s.report), s.labels), s.report


def test_labels_agree_with_report_text():
    ph = Phantom(resolution=32, seed=3, deid_rate=0.5)
    n_positive = 0
    for i in range(120):
        s = ph.study(i, "train" if i % 2 else "validation")
        assert _same(label_report(s.report), s.labels), (s.report, s.labels)
        text = s.report.lower()
        for name, v in zip(CHEXPERT_LABELS[1:], s.labels[1:]):
            if v == 1:
                n_positive += 1
                assert re.search(KEYWORDS[name], text), (name, s.report)
    assert n_positive > 60


def _pair(values, index, res=96):
    ph = Phantom(resolution=res, seed=0)
    normal = ph.study_with({}, index=index, split="test")
    sick = ph.study_with(values, index=index, split="test")
    return normal, sick


@pytest.mark.parametrize("index", [0, 1, 2])
def test_cardiomegaly_is_wider_in_frontal_and_deeper_in_lateral(index):
    normal, sick = _pair({"Cardiomegaly": 1.0}, index)
    res = normal.frontal.shape[0]
    df = sick.frontal.astype(int) - normal.frontal.astype(int)
    dl = sick.lateral.astype(int) - normal.lateral.astype(int)
    # Frontal: the enlarged heart brightens a band of columns, mostly on the patient's left (image right).
    cols = np.flatnonzero((df > 4).sum(0) >= 2)
    assert len(cols) > res // 10 and df[:, res // 2:].sum() > df[:, : res // 2].sum()
    # Lateral: the heart also got deeper: a band of columns brightens, centred anteriorly (image left).
    lat_cols = np.flatnonzero((dl > 4).sum(0) >= 2)
    centroid = (dl.clip(0).sum(0) * np.arange(res)).sum() / dl.clip(0).sum()
    assert len(lat_cols) > res // 10 and centroid < 0.5 * res
    assert df.min() >= -3 and dl.min() >= -3  # nothing else changed


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_effusion_brightens_the_base_on_its_side(index):
    normal, sick = _pair({"Pleural Effusion": 1.0}, index)
    text = sick.findings.lower()
    sides = [s for s in ("right", "left") if re.search(rf"{s}[^.]*(effusion|costophrenic)", text)]
    if re.search(r"bilateral[^.]*effusion", text):
        sides = ["right", "left"]
    res = normal.frontal.shape[0]
    lower = slice(res // 2, int(res * 0.8))
    d = sick.frontal[lower].astype(float) - normal.frontal[lower].astype(float)
    gain = {"right": d[:, : res // 2].mean(), "left": d[:, res // 2:].mean()}  # patient's right = image left
    for side in ("right", "left"):
        if side in sides:
            assert gain[side] > 0.4, (gain, text)
        else:
            assert gain[side] < 0.1, (gain, text)
    dl = sick.lateral.astype(float) - normal.lateral.astype(float)
    assert dl[lower].mean() > 0.2 and dl.min() >= 0  # the lateral sees the fluid too


def test_cooccurrence_cardiomegaly_with_effusion():
    ph = Phantom(resolution=16, seed=0)
    labels = np.stack([ph.study(i, "train").labels for i in range(400)])
    cm = labels[:, LABEL_INDEX["Cardiomegaly"]] == 1
    eff = labels[:, LABEL_INDEX["Pleural Effusion"]] == 1
    assert cm.sum() > 20 and (~cm).sum() > 100
    assert eff[cm].mean() > eff[~cm].mean() + 0.15
    normal = labels[:, LABEL_INDEX["No Finding"]] == 1
    assert 0.25 < normal.mean() < 0.7
    # Hedged findings occur, and hierarchy holds: a positive child implies a positive Lung Opacity.
    assert (labels[:, 1:] == -1).any()
    children = [LABEL_INDEX[n] for n in ("Edema", "Consolidation", "Pneumonia", "Lung Lesion", "Atelectasis")]
    child_pos = (labels[:, children] == 1).any(1)
    assert np.all(labels[child_pos, LABEL_INDEX["Lung Opacity"]] == 1)


def test_deid_tokens_follow_rate():
    with_deid = sum("XXXX" in Phantom(16, deid_rate=1.0).study(i).report for i in range(20))
    without = sum("XXXX" in Phantom(16, deid_rate=0.0).study(i).report for i in range(20))
    assert with_deid == 20 and without == 0


def test_projection_matches_analytic_line_integrals():
    from xray_gen.data.phantom.projection import Projector, View
    from xray_gen.data.phantom.scene import Ellipsoid, Scene

    view = View(a_axis=0, depth_axis=1, sid=1e9, detector=0.0)  # ~parallel beam
    proj = Projector(view, 144)
    s = Scene()
    s.ellipsoid([0.0, 0.0, -0.5], [6.0, 6.0, 6.0], 0.5)  # sphere: peak 2 r mu, disc area pi r^2
    img = proj.render(s)
    px = view.fov / 144
    assert img.max() == pytest.approx(2 * 6.0 * 0.5, rel=0.01)
    assert (img > 0).sum() * px**2 == pytest.approx(np.pi * 36.0, rel=0.03)
    assert img.sum() * px**2 == pytest.approx(0.5 * 4 / 3 * np.pi * 6.0**3, rel=0.02)  # mu * volume
    # Compound: sphere minus a concentric sphere -> shell; ray through the centre crosses 2 (R - r).
    s = Scene()
    s.compound(Ellipsoid.make([0.0, 0.0, -0.5], [6.0] * 3), 1.0, minus=Ellipsoid.make([0.0, 0.0, -0.5], [4.0] * 3))
    shell = proj.render(s)
    assert shell[72, 72] == pytest.approx(4.0, abs=0.05) and shell.max() > 8.0
    # Thin tube along x: integral across it is mu * pi r^2 per unit length.
    s = Scene()
    s.tube([[-8.0, 0.0, 0.0], [8.0, 0.0, 0.0]], 0.8, 1.0)
    prof = proj.render(s)[:, 72]
    assert prof.sum() * px == pytest.approx(np.pi * 0.8**2, rel=0.05)


def test_ap_view_magnifies_the_heart_relative_to_pa():
    from xray_gen.data.phantom.imaging import VIEWS

    heart_depth, spine_depth = -3.0, 6.0
    pa, ap = VIEWS["PA"], VIEWS["AP"]
    assert ap.magnification(heart_depth) / ap.magnification(spine_depth) > 1.05
    assert pa.magnification(heart_depth) < pa.magnification(spine_depth)


@pytest.mark.parametrize("value", [1.0, -1.0])
def test_study_with_each_single_observation(value):
    ph = Phantom(resolution=16, seed=2)
    for k, name in enumerate(CHEXPERT_LABELS[1:]):
        s = ph.study_with({name: value}, index=k)
        assert s.labels[LABEL_INDEX[name]] == value, (name, s.report)
        assert _same(label_report(s.report), s.labels), (name, s.report)
        assert re.search(KEYWORDS[name], s.report.lower()), (name, s.report)
    with pytest.raises(KeyError, match="valid"):
        ph.study_with({"Cardiomegally": 1.0})


def test_thread_safe_as_grain_reader_threads_use_it():
    """grain reads with several threads sharing one Phantom: results must equal sequential ones."""
    from concurrent.futures import ThreadPoolExecutor

    ph = Phantom(resolution=32, seed=3)
    sequential = [ph.study(i) for i in range(48)]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(ph.study, range(48)))
    for a, b in zip(sequential, threaded):
        np.testing.assert_array_equal(a.frontal, b.frontal)
        np.testing.assert_array_equal(a.lateral, b.lateral)
        assert a.report == b.report


def test_frontal_only_phantom_draws_the_same_frontal_report_and_labels():
    both, frontal_only = Phantom(resolution=32, seed=5), Phantom(resolution=32, seed=5, lateral=False)
    for i in range(4):
        a, b = both.study(i, "validation"), frontal_only.study(i, "validation")
        np.testing.assert_array_equal(a.frontal, b.frontal)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.report == b.report and b.lateral is None and a.lateral is not None


def test_report_without_images_equals_the_studys_report():
    from xray_gen.data.phantom import Phantom

    phantom = Phantom(resolution=32, seed=3, deid_rate=0.3)
    for split in ("train", "test"):
        for i in range(25):
            study = phantom.study(i, split)
            assert phantom.report(i, split) == (study.findings, study.impression)
