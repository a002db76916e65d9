"""PGGAN end to end on the smoke config: growth schedule, resume inside a fade-in (bit-identical),
archive export through both classifiers, and the evaluation tables.

Smoke schedule (batch 8, 16 images per fade / stable period): level 0 (4 px) steps 1-2, level 1
(8 px) fade-in steps 3-4 then stable 5-6, level 2 (16 px) fade-in 7-8, stable 9-10.
"""

import csv
import json
import os

import jax
import numpy as np
import pytest

from xray_gen import main
from xray_gen.configs import pggan as pggan_config
from xray_gen.data.schema import CHEXPERT_LABELS
from xray_gen.models.pggan.task import PGGANTask
from xray_gen.training import loop

FINAL_STEP = 10


def _config(prepared_dir, **archive):
    config = pggan_config.get_config("smoke")
    config.pggan.prepared_dir = str(prepared_dir)  # one evaluation classifier for every run here
    for key, value in archive.items():
        config.archive[key] = value
    return config


def test_schedule_and_alpha():
    config = pggan_config.get_config("smoke")
    task = PGGANTask(config)
    assert [(level, fade, steps) for level, fade, steps in task.phases] == [(0, 0, 2), (1, 2, 4), (2, 2, 4)]
    assert task.num_steps() == FINAL_STEP and config.train.num_steps == -1  # derived, the config untouched
    assert [task.phase(s) for s in range(FINAL_STEP)] == [0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    # alpha of the step trained after `s` steps: level 1's fade-in is steps 3-4 (s = 2, 3).
    assert [float(task.alpha(s, task.phase(s))) for s in range(2, 6)] == [0.5, 1.0, 1.0, 1.0]
    assert float(task.alpha(0, 0)) == 1.0
    # EMA decay restarts its warm-up at each level: (1+k)/(10+k) capped at pggan.ema_decay.
    assert float(task.ema_decay(2, 1)) == pytest.approx(0.1) and float(task.ema_decay(3, 1)) == pytest.approx(2 / 11)
    assert float(task.ema_decay(10**6, 2)) == pytest.approx(0.999)
    with pytest.raises(ValueError, match="pggan.channels needs 3 entries"):
        config = pggan_config.get_config("smoke")
        config.pggan.channels = (8, 8)
        PGGANTask(config)
    with pytest.raises(ValueError, match="mbstd_group"):
        config = pggan_config.get_config("smoke")
        config.pggan.batch_sizes = (8, 6, 8)
        PGGANTask(config)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(uninterrupted workdir, interrupted-and-resumed workdir, prepared dir)."""
    root = tmp_path_factory.mktemp("pggan")
    prepared = root / "prepared"
    full, stopped = str(root / "full"), str(root / "stopped")
    main.run(_config(prepared), full, "train")
    config = _config(prepared)
    config.train.stop_at_step = 3  # inside level 1's fade-in
    main.run(config, stopped, "train")
    task = PGGANTask(_config(prepared))
    state, meta = loop.restore_latest(task, task.config, stopped)
    assert int(state.step) == 3
    assert meta["phase"] == 1 and int(state.level) == 1 and float(state.alpha) == 0.5
    main.run(_config(prepared), stopped, "train")
    return full, stopped, prepared


def test_resume_inside_fade_in_is_bit_identical(trained):
    full, stopped, _ = trained
    states = []
    for workdir in (full, stopped):
        task = PGGANTask(_config(trained[2]))
        state, _ = loop.restore_latest(task, task.config, workdir)
        states.append(jax.device_get(state))
    assert int(states[0].step) == int(states[1].step) == FINAL_STEP
    assert int(states[0].level) == 2 and float(states[0].alpha) == 1.0
    for a, b in zip(jax.tree.leaves((states[0].g_ema, states[0].d_params)), jax.tree.leaves((states[1].g_ema, states[1].d_params))):
        np.testing.assert_array_equal(a, b)


def test_sample_archive_and_evaluate(trained):
    full, _, prepared = trained
    grid = main.run(_config(prepared), full, "sample")
    assert grid["samples"] == 8 and os.path.isfile(os.path.join(full, "samples", "grid.png"))

    summary = main.run(_config(prepared, num_images=20), full, "sample")
    archive = os.path.join(full, "archive")
    with open(os.path.join(archive, "labels.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == summary["images"] > 0
    per_patient = {}
    for row in rows:
        per_patient.setdefault(row["patient_id"], []).append(row)
        assert os.path.isfile(os.path.join(archive, row["image_path"]))
    assert all(3 <= len(v) <= 6 and len({r["optimised_class"] for r in v}) == 1 for v in per_patient.values())
    settings = json.load(open(os.path.join(archive, "archive.json")))
    assert settings["extra"] == {"checkpoint_step": FINAL_STEP, "classifier": "densenet"}

    # The paper's alternative: the critic fine-tuned as a classifier drives the optimisation.
    other = os.path.join(full, "archive_critic")
    summary = main.run(_config(prepared, num_images=8, classifier="discriminator", out_dir=other), full, "sample")
    assert os.path.isdir(os.path.join(full, "critic_classifier", "checkpoints")) and summary["images"] > 0

    metrics = main.run(_config(prepared), full, "evaluate")
    fidelity = metrics["fidelity"]["frontal"]
    assert metrics["num_generated"] == 24 and fidelity["n_reference"] == 24 and np.isfinite(fidelity["fid"])
    assert fidelity["fid_ci"][0] <= fidelity["fid_ci"][1] and fidelity["n_generated"] == 24
    # prevalence: both sides labelled by the classifier at its thresholds
    predicted = metrics["clinical"]["prevalence"]["predicted"]
    assert set(predicted["generated"]) == set(predicted["reference"]) == set(CHEXPERT_LABELS)
    gan = metrics["pggan_tables"]["gan_train"]  # GAN-train, or the reason it was skipped (a tiny smoke archive)
    assert gan.get("archive", {}).get("size") == len(rows) or "generate more patients" in gan["skipped"]
    tables = json.load(open(os.path.join(full, "eval", "tables.json")))
    names = " ".join(tables)
    assert "Table 1" in names and "archive" in names
    if "archive" in gan:
        table2 = next(v for k, v in tables.items() if k.startswith("Table 2"))
        assert table2["columns"] == ["class", "generated", "real"] and len(table2["rows"]) == 15
    for name in ("pggan_test.json", "pggan_test.html", "prevalence.png", "tables.md"):
        assert os.path.getsize(os.path.join(full, "eval", name)) > 0
