"""Labelled archive export with toy networks: plan, files, determinism, resume, settings checks."""

import csv
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from xray_gen.data.schema import CHEXPERT_LABELS, NUM_LABELS
from xray_gen.evaluation.generated_folder import load_generated
from xray_gen.models.pggan import archive

D = 4
W = 2.0 * jax.random.normal(jax.random.PRNGKey(0), (D, 64))
V = jax.random.normal(jax.random.PRNGKey(1), (64, NUM_LABELS)) / 8.0
V = V.at[:, 6].set(0.0)  # class 6 (Consolidation): logit is always 0, below any target


def generate(w, z):
    return jnp.tanh(z @ w).reshape(-1, 8, 8, 1)


def logits(v, images):
    return images.reshape(images.shape[0], -1) @ v


PROPORTIONS = np.zeros(NUM_LABELS)
PROPORTIONS[[2, 5, 10]] = [2.0, 1.0, 1.0]
THRESHOLDS = np.full(NUM_LABELS, 0.5)


def export(out_dir, **overrides):
    kwargs = dict(generate_fn=jax.tree_util.Partial(generate, W), optimise_logits_fn=jax.tree_util.Partial(logits, V),
                  label_fn=jax.tree_util.Partial(logits, V), thresholds=THRESHOLDS, latent_dim=D,
                  num_images=48, class_proportions=PROPORTIONS, seed=3, shard_patients=4, max_steps=60,
                  learning_rate=0.1, max_attempts=3, batch_size=8)
    kwargs.update(overrides)
    return archive.export_archive(str(out_dir), **kwargs)


def read_csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("archive")
    progress = []
    summary = export(out, progress=lambda done, total: progress.append((done, total)))
    return out, summary, progress


def test_plan_follows_proportions_and_is_deterministic():
    plan = archive.plan_patients(600, PROPORTIONS, seed=1)
    assert plan == archive.plan_patients(600, PROPORTIONS, seed=1)
    assert plan != archive.plan_patients(600, PROPORTIONS, seed=2)
    images = np.zeros(NUM_LABELS)
    for c, n in plan:
        assert 3 <= n <= 6
        images[c] += n
    assert set(np.flatnonzero(images)) == {2, 5, 10}
    np.testing.assert_allclose(images[[2, 5, 10]], [300, 150, 150], atol=6)  # within one series
    assert {c for c, _ in plan[:20]} == {2, 5, 10}  # shuffled: every shard mixes classes


def test_export_counts_columns_and_pngs(exported):
    out, summary, progress = exported
    columns, rows = read_csv(out / "labels.csv")
    assert columns == (["patient_id", "image_path", "optimised_class", "severity", "converged_step"]
                       + [f"prob_{n}" for n in CHEXPERT_LABELS] + list(CHEXPERT_LABELS))
    assert summary["complete"] and summary["images"] == len(rows) >= 48
    per_class = {}
    for r in rows:
        per_class[r["optimised_class"]] = per_class.get(r["optimised_class"], 0) + 1
    assert set(per_class) == {CHEXPERT_LABELS[2], CHEXPERT_LABELS[5], CHEXPERT_LABELS[10]}
    share = np.array([per_class[CHEXPERT_LABELS[c]] for c in (2, 5, 10)]) / len(rows)
    np.testing.assert_allclose(share, [0.5, 0.25, 0.25], atol=0.12)
    for name, c in summary["classes"].items():
        assert c["images"] == per_class[name] and c["successes"] == c["patients"]
        assert 0 < c["success_rate"] <= 1 and c["median_steps"] is not None
    patients = {}
    for r in rows:
        patients.setdefault(r["patient_id"], []).append(r)
        image = Image.open(out / r["image_path"])
        assert image.mode == "L" and image.size == (8, 8)
        assert r["image_path"] == f"images/{r['patient_id']}/{len(patients[r['patient_id']]) - 1}.png"
        assert float(r["severity"]) >= 0 and int(r["converged_step"]) <= 60
        probs = np.array([float(r[f"prob_{n}"]) for n in CHEXPERT_LABELS])
        labels = np.array([int(r[n]) for n in CHEXPERT_LABELS])
        np.testing.assert_array_equal(labels, (probs >= 0.5).astype(int))
    for series in patients.values():
        assert 3 <= len(series) <= 6
        assert len({(s["optimised_class"], s["severity"]) for s in series}) == 1
        # the centre image passed its target: logit(prob) >= logit(0.5) + severity
        p = float(series[0][f"prob_{series[0]['optimised_class']}"])
        rounding = 1e-6 / (p * (1 - p))  # probabilities are written with 6 decimals
        assert np.log(p / (1 - p)) >= float(series[0]["severity"]) - rounding
    assert progress[0] == (0, summary["shards"]) and progress[-1] == (summary["shards"],) * 2
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["classes"] == summary["classes"] and on_disk["settings"]["seed"] == 3


def test_metadata_loads_through_the_folder_evaluator(exported):
    out, _, _ = exported
    _, rows = read_csv(out / "labels.csv")
    generated = load_generated(str(out), resolution=8)
    assert generated.summary["loaded"] == len(rows) and generated.summary["unlisted_pngs_ignored"] == 0
    assert generated.files == [r["image_path"] for r in rows]
    assert generated.ids == [r["patient_id"] for r in rows]
    expected = np.array([[float(r[n]) for n in CHEXPERT_LABELS] for r in rows], np.float32)
    np.testing.assert_array_equal(generated.labels, expected)
    assert generated.images.shape == (len(rows), 8, 8)


def test_same_seed_same_archive_and_resume_redoes_only_the_missing_shard(exported, tmp_path):
    out, summary, _ = exported
    copy = tmp_path / "again"
    export(copy)
    first = (out / "labels.csv").read_bytes()
    assert (copy / "labels.csv").read_bytes() == first
    assert (copy / "metadata.csv").read_bytes() == (out / "metadata.csv").read_bytes()

    # interrupt: shard 1's part is gone and its PNGs are half-written garbage
    os.remove(copy / "parts" / "shard_00001.json")
    shard1 = {r["image_path"] for r in read_csv(out / "labels.csv")[1]
              if r["patient_id"] in {p for p in _shard_patients(out, 1)}}
    assert shard1
    for path in shard1:
        (copy / path).write_bytes(b"junk")
    (copy / "labels.csv").unlink()
    others = {p: os.stat(copy / p).st_mtime_ns for p in _all_pngs(copy) if p not in shard1}
    again = export(copy)
    assert again["this_call"] == {"shards_run": 1, "shards_skipped": summary["shards"] - 1,
                                  "images_written": len(shard1)}
    assert {p: os.stat(copy / p).st_mtime_ns for p in others} == others
    for path in shard1:
        assert (copy / path).read_bytes() == (out / path).read_bytes()
    assert (copy / "labels.csv").read_bytes() == first

    # a finished archive: nothing redone, CSVs rebuilt identically
    (copy / "metadata.csv").unlink()
    final = export(copy)
    assert final["this_call"]["shards_run"] == 0
    assert (copy / "metadata.csv").read_bytes() == (out / "metadata.csv").read_bytes()


def _shard_patients(out, shard):
    return {r["patient_id"] for r in json.loads((out / "parts" / f"shard_{shard:05d}.json").read_text())["rows"]}


def _all_pngs(root):
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, _, names in os.walk(root) for n in names
                  if n.endswith(".png"))


def test_other_settings_in_the_same_folder_are_refused(exported):
    out, _, _ = exported
    with pytest.raises(archive.ArchiveSettingsError, match=r"(?s)max_steps: archive has 60, this call 61.*seed"):
        export(out, seed=4, max_steps=61)
    with pytest.raises(archive.ArchiveSettingsError, match="extra"):
        export(out, extra_settings={"checkpoint_step": 5})


def test_unreachable_class_fails_after_max_attempts_and_is_reported(tmp_path):
    proportions = np.zeros(NUM_LABELS)
    proportions[[2, 6]] = 1.0
    summary = export(tmp_path, num_images=12, class_proportions=proportions, max_steps=10, max_attempts=2,
                     shard_patients=3, batch_size=4)
    name = CHEXPERT_LABELS[6]
    cls = summary["classes"][name]
    assert cls["patients"] == cls["successes"] == 0 and cls["planned_patients"] > 0
    assert cls["attempts"] == 2 * cls["planned_patients"] and cls["success_rate"] == 0
    assert summary["classes_short_of_patients"] == {name: cls["planned_patients"]}
    assert not summary["complete"]
    _, rows = read_csv(tmp_path / "labels.csv")
    assert rows and all(r["optimised_class"] == CHEXPERT_LABELS[2] for r in rows)


def test_rgb_generator_and_nan_thresholds(tmp_path):
    rgb = jax.tree_util.Partial(lambda w, z: jnp.repeat(generate(w, z), 3, axis=-1), W)
    thresholds = THRESHOLDS.copy()
    thresholds[13] = np.nan  # never targeted: its label column stays blank
    grey_logits = jax.tree_util.Partial(lambda v, x: logits(v, x[..., :1]), V)
    export(tmp_path, generate_fn=rgb, optimise_logits_fn=grey_logits, label_fn=grey_logits,
           thresholds=thresholds, num_images=6, shard_patients=2)
    _, rows = read_csv(tmp_path / "labels.csv")
    image = Image.open(tmp_path / rows[0]["image_path"])
    assert image.mode == "RGB" and image.size == (8, 8)
    assert all(r[CHEXPERT_LABELS[13]] == "" for r in rows)
    again = export(tmp_path, generate_fn=rgb, optimise_logits_fn=grey_logits, label_fn=grey_logits,
                   thresholds=thresholds, num_images=6, shard_patients=2)  # NaN settings compare equal
    assert again["this_call"]["shards_run"] == 0
    with pytest.raises(ValueError, match=CHEXPERT_LABELS[2]):
        bad = THRESHOLDS.copy()
        bad[2] = np.nan
        export(tmp_path / "bad", thresholds=bad)
