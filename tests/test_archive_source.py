"""ArchiveSource: a tiny synthetic archive through the pipeline, its patient split and its errors."""

import csv
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from xray_gen.data.archive_source import ArchiveSource, REQUIRED_COLUMNS
from xray_gen.data.pipeline import ToModelInputs, make_loader, open_split
from xray_gen.data.schema import CHEXPERT_LABELS


def write_archive(directory, images, patient_ids, labels, rgb_every=0):
    """Writes PNGs + labels.csv in the exporter's format; returns the directory (str)."""
    directory = str(directory)
    os.makedirs(os.path.join(directory, "images"), exist_ok=True)
    with open(os.path.join(directory, "labels.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(REQUIRED_COLUMNS)
        for i, (image, patient, label) in enumerate(zip(images, patient_ids, labels)):
            rel = f"images/{i:05d}.png"
            im = Image.fromarray(np.asarray(image, np.uint8))
            if rgb_every and i % rgb_every == 0:
                im = im.convert("RGB")
            im.save(os.path.join(directory, rel))
            label = np.nan_to_num(np.asarray(label, np.float32))  # the exporter writes 0/1
            positive = [n for n, v in zip(CHEXPERT_LABELS, label) if v == 1]
            writer.writerow([patient, rel, positive[0] if positive else "No Finding", 0.5, 10 * i]
                            + [f"{0.9 if v == 1 else 0.1:.3f}" for v in label] + [int(v) for v in label])
    return directory


def tiny_archive(tmp_path, n_patients=6, per_patient=2, size=24, rgb_every=0):
    rng = np.random.default_rng(0)
    n = n_patients * per_patient
    patients = np.repeat([f"syn{p}" for p in range(n_patients)], per_patient)
    labels = (rng.random((n, len(CHEXPERT_LABELS))) < 0.3).astype(np.float32)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    return write_archive(tmp_path / "archive", images, patients, labels, rgb_every), patients, labels, images


def data_config(directory, options="", resolution=16):
    return ml_collections.ConfigDict(dict(source="archive", manual_dir=directory, resolution=resolution,
                                          options=options, uncertain_as=1.0, equalize=False))


def test_archive_loads_through_the_pipeline(tmp_path):
    directory, patients, labels, images = tiny_archive(tmp_path, rgb_every=3)
    source = open_split(data_config(directory, '{"fractions": [0.5, 0.5]}'), "train", views=("frontal",))
    assert isinstance(source, ArchiveSource)
    ex = source[0]
    assert ex["frontal"].shape == (16, 16) and ex["frontal"].dtype == np.uint8 and not ex["has_lateral"]
    assert ex["labels"].shape == (14,) and ex["source"] == "archive"
    # the PNG's pixels come back (at native resolution) and labels match the CSV row
    native = ArchiveSource(directory, "train", fractions=(0.5, 0.5))
    row = int(ex["study_id"].split("/")[-1][:5])
    for i in range(len(native)):  # grey PNGs and RGB ones (luma of equal channels) read back exactly
        np.testing.assert_array_equal(native[i]["frontal"], images[int(native[i]["study_id"].split("/")[-1][:5])])
    np.testing.assert_array_equal(ex["labels"], labels[row])
    loader = make_loader(source, [ToModelInputs(views=("frontal",), resolution=16)], 2, seed=0, shuffle=False,
                         num_epochs=1, drop_remainder=False)
    batches = list(loader)
    assert sum(len(b["frontal"]) for b in batches) == len(source)
    assert batches[0]["frontal"].shape[1:] == (16, 16, 1) and batches[0]["targets"].shape[1:] == (14,)
    assert repr(source) == repr(open_split(data_config(directory, '{"fractions": [0.5, 0.5]}'), "train"))


def test_train_and_validation_are_patient_disjoint_and_cover_the_archive(tmp_path):
    directory, patients, _, _ = tiny_archive(tmp_path, n_patients=10, per_patient=3)
    train = ArchiveSource(directory, "train", fractions=(0.7, 0.3), seed=1)
    val = ArchiveSource(directory, "validation", fractions=(0.7, 0.3), seed=1)
    assert len(train) + len(val) == len(patients) == train.archive_size
    assert not set(train.patient_ids) & set(val.patient_ids)
    assert set(train.patient_ids) | set(val.patient_ids) == set(patients)
    seen = sorted(train[i]["study_id"] for i in range(len(train))) + sorted(val[i]["study_id"] for i in range(len(val)))
    assert len(set(seen)) == len(patients)
    assert 0.5 < len(train) / len(patients) < 0.9


def test_test_split_and_unknown_splits_are_refused(tmp_path):
    directory, *_ = tiny_archive(tmp_path)
    with pytest.raises(ValueError, match="REAL test split"):
        ArchiveSource(directory, "test")
    with pytest.raises(ValueError, match="REAL test split"):
        open_split(data_config(directory), "test", views=("frontal",))
    with pytest.raises(ValueError, match="unknown archive split"):
        ArchiveSource(directory, "val")
    with pytest.raises(ValueError, match="leave the 'validation' split empty"):
        ArchiveSource(directory, "validation", fractions=(0.99, 0.01))


def _rewrite(directory, edit):
    path = os.path.join(directory, "labels.csv")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    edit(rows)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def test_malformed_archives_name_the_file_row_and_column(tmp_path):
    directory, *_ = tiny_archive(tmp_path)
    original = open(os.path.join(directory, "labels.csv")).read()

    def restore():
        with open(os.path.join(directory, "labels.csv"), "w") as f:
            f.write(original)

    def drop_column(rows):
        i = rows[0].index("Cardiomegaly")
        for r in rows:
            del r[i]

    _rewrite(directory, drop_column)
    with pytest.raises(ValueError, match=r"labels.csv: missing column\(s\) 'Cardiomegaly'"):
        ArchiveSource(directory, "train")
    restore()
    _rewrite(directory, lambda rows: rows[3].__setitem__(rows[0].index("Edema"), "maybe"))
    with pytest.raises(ValueError, match=r"line 4 column 'Edema': 'maybe' is not a number"):
        ArchiveSource(directory, "train")
    restore()
    _rewrite(directory, lambda rows: rows[2].__setitem__(rows[0].index("Edema"), "2"))
    with pytest.raises(ValueError, match=r"line 3 column 'Edema': label must be 0 or 1"):
        ArchiveSource(directory, "train")
    restore()
    _rewrite(directory, lambda rows: rows[5].__setitem__(rows[0].index("prob_Pneumonia"), "1.5"))
    with pytest.raises(ValueError, match=r"line 6 column 'prob_Pneumonia'"):
        ArchiveSource(directory, "train")
    restore()
    _rewrite(directory, lambda rows: rows[2].pop())
    with pytest.raises(ValueError, match=r"line 3: .*columns expected"):
        ArchiveSource(directory, "train")
    restore()
    os.remove(os.path.join(directory, "images", "00004.png"))
    with pytest.raises(FileNotFoundError, match=r"line 6 column 'image_path'.*00004.png"):
        ArchiveSource(directory, "train")
    with pytest.raises(FileNotFoundError, match="no labels.csv"):
        ArchiveSource(str(tmp_path), "train")
    with pytest.raises(ValueError, match="accepts 'fractions' and 'seed'"):
        open_split(data_config(directory, '{"split": 1}'), "train")


def test_written_archive_reads_back_and_augments_the_real_train_split(tmp_path):
    """`write_archive` (generated images -> archive) round-trips, and `data.synthetic_dir` appends all
    of it to the real train split only (the augmentation experiment's training data)."""
    from xray_gen.configs.default import get_default
    from xray_gen.data import archive_source

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 16, 16, 1), dtype=np.uint8)
    labels = np.where(rng.random((5, 14)) < 0.2, np.nan, (rng.random((5, 14)) < 0.4)).astype(np.float32)
    directory = str(tmp_path / "generated")
    archive_source.write_archive(directory, images, labels)
    every = ArchiveSource(directory, "all")
    assert len(every) == 5
    for i in range(5):
        np.testing.assert_array_equal(every[i]["frontal"], images[i, ..., 0])
        np.testing.assert_array_equal(every[i]["labels"], labels[i])  # NaN (unknown) survives as NaN

    data = get_default().data
    data.resolution, data.phantom.train_size, data.phantom.validation_size = 16, 7, 3
    data.synthetic_dir = directory
    train = open_split(data, "train", views=("frontal",))
    assert len(train) == 12 and "ArchiveSource" in repr(train) and "PhantomSource" in repr(train)
    np.testing.assert_array_equal(train[7]["frontal"], images[0, ..., 0])
    assert train[6]["source"] != "archive" and train[11]["source"] == "archive"
    assert len(open_split(data, "validation", views=("frontal",))) == 3  # only training data is augmented
    with pytest.raises(IndexError):
        train[12]
    with pytest.raises(ValueError, match="uint8"):
        archive_source.write_archive(str(tmp_path / "bad"), images.astype(np.float32), labels)
    with pytest.raises(ValueError, match="0, 1 or NaN"):
        archive_source.write_archive(str(tmp_path / "bad"), images, np.full((5, 14), 0.5, np.float32))
