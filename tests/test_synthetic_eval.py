"""The PGGAN paper's evaluation tables: prevalence intervals, FID per split, GAN-train, output files."""

import json
import math
import time

import numpy as np
import pytest
from PIL import Image

from xray_gen.configs import classifier as classifier_config
from xray_gen.data.pipeline import PhantomSource
from xray_gen.data.schema import CHEXPERT_LABELS, LABEL_INDEX, binarize
from xray_gen.evaluation import synthetic
from xray_gen.evaluation.fid import fid_between
from xray_gen.models import utility

from test_archive_source import write_archive  # tests/ is on sys.path


def bernoulli_labels(rng, n, prevalence):
    return (rng.random((n, len(CHEXPERT_LABELS))) < np.asarray(prevalence)).astype(np.float32)


def exact_labels(rng, n, prevalence):
    """Each class positive in exactly round(p n) rows (shuffled): the known prevalence is the sample's."""
    ranks = np.argsort(rng.random((n, len(prevalence))), axis=0)
    return (ranks < np.round(np.asarray(prevalence) * n)).astype(np.float32)


def test_prevalence_intervals_contain_the_truth_shrink_with_n_and_exclude_nan():
    rng = np.random.default_rng(0)
    truth = np.linspace(0.05, 0.6, len(CHEXPERT_LABELS))
    small, large = exact_labels(rng, 300, truth), exact_labels(rng, 8_000, truth)
    start = time.perf_counter()
    table = synthetic.prevalence_table(small, large, n_boot=10_000, seed=0)
    assert time.perf_counter() - start < 1.0  # vectorised: one binomial draw per resample
    widths = {}
    for c, name in enumerate(CHEXPERT_LABELS):
        for side, labels in (("real", small), ("generated", large)):
            entry = table["per_class"][name][side]
            lo, hi = entry["ci95"]
            assert lo <= truth[c] <= hi, (name, side, entry)
            assert entry["prevalence"] == pytest.approx(labels[:, c].mean())
            n = len(labels)
            normal_width = 2 * 1.96 * math.sqrt(truth[c] * (1 - truth[c]) / n)  # the bootstrap's large-n limit
            assert hi - lo == pytest.approx(normal_width, rel=0.2), (name, side)
            widths.setdefault(side, []).append(hi - lo)
    assert np.all(np.array(widths["generated"]) < 0.3 * np.array(widths["real"]))

    # NaN (unknown) rows are excluded per class, not counted as negatives; -1 follows uncertain_as
    labels = np.zeros((100, len(CHEXPERT_LABELS)), np.float32)
    labels[:20, 1] = 1.0
    labels[50:, 1] = np.nan
    labels[:10, 2] = -1.0
    table = synthetic.prevalence_table(labels, labels, n_boot=200)
    assert table["per_class"][CHEXPERT_LABELS[1]]["real"]["prevalence"] == pytest.approx(0.4)
    assert table["per_class"][CHEXPERT_LABELS[1]]["real"]["n"] == 50
    assert table["per_class"][CHEXPERT_LABELS[2]]["real"]["prevalence"] == pytest.approx(0.1)
    ignored = synthetic.prevalence_table(labels, labels, n_boot=200, uncertain_as=float("nan"))
    assert ignored["per_class"][CHEXPERT_LABELS[2]]["real"]["n"] == 90
    assert ignored["per_class"][CHEXPERT_LABELS[2]]["real"]["prevalence"] == 0.0
    with pytest.raises(ValueError, match="labels must be"):
        synthetic.prevalence_table(labels + 0.5, labels)


def test_prevalence_plot_writes_a_png(tmp_path):
    rng = np.random.default_rng(1)
    table = synthetic.prevalence_table(bernoulli_labels(rng, 100, 0.3), bernoulli_labels(rng, 100, 0.2), n_boot=100)
    path = synthetic.prevalence_plot(str(tmp_path / "plots" / "prevalence.png"), table)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 300


def class_rows(name, n):
    labels = np.zeros((n, len(CHEXPERT_LABELS)), np.float32)
    labels[:, LABEL_INDEX[name]] = 1.0
    return labels


def test_per_class_fid_separates_a_shifted_class_and_not_an_identical_one():
    rng = np.random.default_rng(0)
    d, n = 4, 400
    features = np.concatenate([rng.normal(size=(n, d)), rng.normal(size=(n, d)) + 2.0, rng.normal(size=(n, d)),
                               rng.normal(size=(1, d))])
    labels = np.concatenate([class_rows("No Finding", n), class_rows("Edema", n), class_rows("Cardiomegaly", n),
                             class_rows("Fracture", 1)])
    labels[: n // 2, LABEL_INDEX["Support Devices"]] = np.nan  # unknown: never a positive
    fids = synthetic.per_class_fid(features, labels)
    assert set(fids) == set(CHEXPERT_LABELS)
    assert fids["No Finding"] == {"fid": pytest.approx(0.0, abs=1e-6), "count": n}
    assert fids["Edema"]["fid"] == pytest.approx(d * 4.0, rel=0.15)  # |mean shift|^2 dominates
    assert fids["Cardiomegaly"]["fid"] < 0.1
    assert fids["Fracture"] == {"fid": None, "count": 1}
    assert fids["Support Devices"] == {"fid": None, "count": 0}
    with pytest.raises(ValueError, match="baseline 'Hernia'"):
        synthetic.per_class_fid(features, labels, baseline="Hernia")
    with pytest.raises(ValueError, match="baseline 'Pneumonia' has 0"):
        synthetic.per_class_fid(features, labels, baseline="Pneumonia")


def test_stratified_split_fid_is_near_zero_for_iid_features():
    rng = np.random.default_rng(0)
    n_patients, d = 300, 4
    patients = np.repeat(np.arange(n_patients), 2)
    labels = bernoulli_labels(rng, len(patients), 0.2)
    features = rng.normal(size=(len(patients), d))
    out = synthetic.stratified_split_fid(features, labels, patients, seed=0)
    assert sum(out["sizes"]) == len(patients) and sum(out["patients"]) == n_patients
    assert abs(out["sizes"][0] - out["sizes"][1]) <= 0.05 * len(patients)
    shifted = fid_between(features[: len(features) // 2], features[len(features) // 2:] + 0.5)
    assert out["fid"] < 0.1 * shifted
    table = synthetic.fid_table(synthetic.per_class_fid(features, np.where(labels > 0, 1.0, 0.0)), out,
                                extra={"Synthetic": 1.5})
    assert table["rows"][0][:2] == ["Stratified", pytest.approx(out["fid"])] and table["rows"][-1][0] == "Synthetic"


def phantom_archive(directory, n_images=48, resolution=32):
    """A synthetic archive from phantom training studies, 3-6 images per 'patient' (as the paper)."""
    source = PhantomSource("train", size=n_images, resolution=resolution, seed=5, lateral=False)
    examples = [source[i] for i in range(n_images)]
    rng = np.random.default_rng(0)
    patients, p = [], 0
    while len(patients) < n_images:
        patients += [f"syn{p:03d}"] * int(rng.integers(3, 7))
        p += 1
    labels = np.stack([binarize(e["labels"])[0] for e in examples])
    return write_archive(directory, [e["frontal"] for e in examples], patients[:n_images], labels)


def test_gan_train_trains_on_the_archive_and_tests_on_the_real_test_split(tmp_path):
    archive = phantom_archive(tmp_path / "archive")
    config = classifier_config.get_config("smoke")
    with config.unlocked():  # one validation (on the archive) and one checkpoint, at the end
        config.train.eval_every = config.train.checkpoint_every = config.train.num_steps
    result = utility.gan_train(archive, config.data, config, str(tmp_path / "work"))
    assert set(CHEXPERT_LABELS) | {"macro"} == set(result["auroc"])
    assert result["num_test"] == config.data.phantom.test_size  # the REAL (phantom) test split, all of it
    assert result["test_source"] == "phantom/test"
    a = result["archive"]
    assert a["size"] == 48 and a["train_size"] + a["validation_size"] == 48 and a["validation_size"] > 0
    assert result["train_steps"] == config.train.num_steps
    assert 0.0 <= result["macro_auroc"] <= 1.0
    again = utility.gan_train(archive, config.data, config, str(tmp_path / "work"))  # resumes: nothing to train
    assert again["auroc"] == result["auroc"]


def test_write_tables_gives_parseable_json_and_markdown_with_every_class(tmp_path):
    rng = np.random.default_rng(0)
    prevalence = synthetic.prevalence_table(bernoulli_labels(rng, 50, 0.3), bernoulli_labels(rng, 50, 0.3), n_boot=50)
    real = {name: 0.9 for name in CHEXPERT_LABELS} | {"macro": 0.9}
    generated = {name: 0.8 for name in CHEXPERT_LABELS} | {"Hernia-like extra": float("nan"), "macro": 0.8}
    utility = synthetic.utility_table(real, generated)
    assert utility["columns"] == ["class", "generated", "real"]
    assert utility["rows"][-1] == ["Average (macro)", 0.8, 0.9]
    assert ["Hernia-like extra", None, None] in utility["rows"]  # NaN -> null, missing -> null
    json_path, md_path = synthetic.write_tables(str(tmp_path / "tables"), {"Table 2 GAN-train": utility,
                                                                          "Fig. 6 prevalence": prevalence})
    with open(json_path) as f:
        loaded = json.loads(f.read(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert loaded["Table 2 GAN-train"]["rows"] == utility["rows"]
    markdown = open(md_path).read()
    assert "## Table 2 GAN-train" in markdown and "## Fig. 6 prevalence" in markdown
    assert "| class | generated | real |" in markdown
    for name in CHEXPERT_LABELS:
        assert markdown.count(f"| {name} |") == 2, name
    with pytest.raises(ValueError, match="table 'bad' needs 'columns'"):
        synthetic.write_tables(str(tmp_path), {"bad": {"x": 1}})
