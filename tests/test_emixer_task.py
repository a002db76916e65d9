"""EMIXER task end to end at smoke size (one training run shared by the module): sampling from
--labels / --labels_file / an unknown label, evaluation, the limited-label table; plus few-label
masking and the projection term of unlabelled rows inside the real training step."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from xray_gen import main
from xray_gen.configs import emixer as emixer_config
from xray_gen.data.schema import CHEXPERT_LABELS, NUM_LABELS
from xray_gen.models.emixer.generate import EMPTY_NOTE, report_text


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    config = emixer_config.get_config("smoke")
    workdir = str(tmp_path_factory.mktemp("emixer"))
    state = main.run(config, workdir, "train")
    assert int(state.step) == config.train.num_steps
    return config, workdir


def _png(workdir, sid):
    return np.asarray(Image.open(os.path.join(workdir, "samples", sid, "image.png")))


def _check_entry(workdir, sid, entry):
    assert entry["files"] == ["image.png", "report.txt"]
    text = open(os.path.join(workdir, "samples", sid, "report.txt")).read().strip()
    assert text == entry["report"]
    assert text or entry["note"] == EMPTY_NOTE  # an empty report is said so, never silent
    assert set(entry["report_labels"]) <= set(CHEXPERT_LABELS)
    probs = entry["classifier_probs"]
    assert list(probs) == list(CHEXPERT_LABELS) and all(0.0 <= p <= 1.0 for p in probs.values())


def test_sample_with_labels(trained):
    config, workdir = trained
    summary = main.run(config, workdir, "sample", labels="Cardiomegaly, pleural_effusion")
    n, seed = config.sample.num_samples, config.sample.seed
    assert list(summary) == [f"cardiomegaly+pleural-effusion_seed{seed + k}" for k in range(n)]
    images = []
    for sid, entry in summary.items():
        assert entry["requested"] == {"Cardiomegaly": 1.0, "Pleural Effusion": 1.0}
        assert entry["conditioning_positive"] == ["Cardiomegaly", "Pleural Effusion"]
        _check_entry(workdir, sid, entry)
        image = _png(workdir, sid)
        assert image.shape == (32, 32) and image.dtype == np.uint8
        images.append(image)
    assert len({im.tobytes() for im in images}) == n  # each draw has its own noise
    grid = Image.open(os.path.join(workdir, "samples", "grid.png"))
    assert grid.size == (n * 32, 32)


def test_sample_with_labels_file(trained, tmp_path):
    config, workdir = trained
    path = tmp_path / "labels.csv"
    path.write_text("id,Cardiomegaly,Pleural Effusion,Edema\n"
                    "a,1,1,\n"
                    "b,0,,-1\n"
                    ",,,1\n")
    summary = main.run(config, workdir, "sample", labels_file=str(path))
    assert list(summary) == ["a", "b", "row4"]
    assert summary["b"]["requested"] == {"Cardiomegaly": 0.0, "Edema": -1.0}
    expected_b = ["Edema"] if config.data.uncertain_as == 1.0 else []  # uncertain conditions as in training
    assert summary["b"]["conditioning_positive"] == expected_b
    assert summary["row4"]["conditioning_positive"] == ["Edema"]
    for sid, entry in summary.items():
        _check_entry(workdir, sid, entry)
    # row 0 has the labels and the seed of the --labels call's draw 0, in a batch of another size
    first_draw = f"cardiomegaly+pleural-effusion_seed{config.sample.seed}"
    np.testing.assert_array_equal(_png(workdir, "a"), _png(workdir, first_draw))
    with open(os.path.join(workdir, "samples", "summary.json")) as f:
        assert {"a", first_draw} <= set(json.load(f))  # the earlier call's entries are kept


def test_unknown_label_is_a_clear_error(trained):
    config, workdir = trained
    with pytest.raises(ValueError, match=r"unknown label 'Cardiomegally' \(did you mean 'Cardiomegaly'\?\); "
                                         r"valid labels: No Finding, .*Support Devices"):
        main.run(config, workdir, "sample", labels="Cardiomegally")


def _finite_or_explained(value, notes):
    assert value is None and notes or np.isfinite(value), (value, notes)


def test_evaluate_and_label_fraction_table(trained, tmp_path):
    config, workdir = trained
    result = main.run(config, workdir, "evaluate")
    assert result["num_generated"] == config.eval.num_generated and result["num_real"] == config.eval.num_examples
    fidelity = result["fidelity"]["frontal"]
    assert fidelity["fid"] >= 0.0 and fidelity["fid_ci"][0] <= fidelity["fid_ci"][1]
    assert fidelity["kid"]["num_subsets"] == 100 and fidelity["n_generated"] == config.eval.num_generated
    for block in (result["report_f_on_real"], result["reports"]["vs_reference"]):
        assert {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider", "rouge_l"} <= set(block)
        assert all(0.0 <= block[k] <= 1.0 for k in ("bleu_4", "rouge_l"))
    # every generated report is compared with the report of the study whose labels it was given
    assert result["reports"]["n_matched_reference_ids"] == config.eval.num_generated
    agreement = result["label_agreement"]
    notes = agreement["notes"]
    for key in ("classifier_auroc_generated", "classifier_auroc_generated_chance"):
        _finite_or_explained(agreement[key], notes)
    for key in ("labeler_f1_generated", "image_report_f1", "labeler_f1_generated_chance", "image_report_f1_chance"):
        _finite_or_explained(agreement[key]["micro_f1"], notes)
    # the shared sections and EMIXER's own agree where they measure the same thing
    shared_auroc = result["clinical"]["auroc_generated"]["macro"]
    own_auroc = agreement["classifier_auroc_generated"]
    assert own_auroc == shared_auroc if shared_auroc is None else own_auroc == pytest.approx(shared_auroc)
    eval_dir = os.path.join(workdir, "eval")
    with open(os.path.join(eval_dir, "emixer_test.json")) as f:
        record = json.load(f)
    assert record["protocol"]["extractor"] == "xray_gen_classifier_penultimate"
    assert record["protocol"]["image_count"] == config.eval.num_generated
    page = open(os.path.join(eval_dir, "emixer_test.html")).read()
    assert page.count('class="sample"') == min(8, config.eval.num_generated)
    assert "classifier AUROC, generated images vs requested labels" in page
    # the augmentation experiment: the evaluation classifier vs the same one on real + 16 generated
    aug_rows = result["augmentation"]["rows"]
    assert [r["num_synthetic"] for r in aug_rows] == [0] + list(config.eval.augmentation_images)
    assert aug_rows[0]["num_real"] == aug_rows[1]["num_real"] == config.data.phantom.train_size
    for row in aug_rows:
        assert 0.0 <= row["accuracy"] <= 1.0 and row["num_test"] == config.data.phantom.test_size
        _finite_or_explained(row["macro_auroc"], ["tiny test split"])
    archive = os.path.join(eval_dir, "augmentation", "aug_16", "synthetic")
    assert len(os.listdir(os.path.join(archive, "images"))) == 16
    assert aug_rows[0]["macro_auroc"] != aug_rows[1]["macro_auroc"]  # a second classifier, really trained

    # the limited-label table: a second run (same protocol) with 30% of the labels
    from xray_gen.models.emixer.tables import compare_label_fractions

    other = tmp_path / "labels30"
    shutil.copytree(eval_dir, other / "eval")
    record["metrics"]["label_fraction"], record["metrics"]["fidelity"]["frontal"]["fid"] = 0.3, 123.0
    (other / "eval" / "emixer_test.json").write_text(json.dumps(record))
    table = compare_label_fractions([workdir, str(other)], out_dir=str(tmp_path / "table"))
    assert [r["label_fraction"] for r in table["rows"]] == [0.3, 1.0] and not table["warnings"]
    assert "| 30% | 123.00 |" in table["markdown"] and (tmp_path / "table" / "label_fractions.md").exists()
    with pytest.raises(FileNotFoundError, match="run --mode=evaluate"):
        compare_label_fractions([str(tmp_path / "table")])
    from xray_gen.models.emixer.tables import main as table_main

    assert table_main([f"--workdirs={workdir},{other}", f"--out={tmp_path / 'cli'}"]) == 0
    assert (tmp_path / "cli" / "label_fractions.md").read_text() == table["markdown"]
    assert table_main([f"--workdirs={tmp_path / 'table'}", f"--out={tmp_path / 'cli'}"]) == 1  # named, no traceback


def test_projection_term_is_zero_for_unlabelled_rows(trained):
    """In the jitted training step (the loop's own compilation, from the cache): with no labelled
    row, changing the labels changes no discriminator loss; with labelled rows it does."""
    from xray_gen.training import loop
    from xray_gen.training.sharding import batch_sharding, make_mesh, replicated, to_global

    config, workdir = trained
    task = main.make_task(config, workdir)
    state, _ = loop.restore_latest(task, config, workdir)
    mesh = make_mesh(config.mesh.data)
    step = jax.jit(task.train_step, in_shardings=(replicated(mesh), replicated(mesh), batch_sharding(mesh)),
                   out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=0)
    batch = next(iter(task.train_loader()))
    rng = np.random.default_rng(0)

    def d_losses(labelled, targets):
        b = {**batch, "labeled_mask": np.full_like(batch["labeled_mask"], labelled),
             "targets": targets.astype(batch["targets"].dtype), "label_mask": np.ones_like(batch["label_mask"])}
        _, metrics = step(jax.tree.map(jnp.copy, state), {}, to_global(b, mesh))
        return {k: float(v) for k, v in jax.device_get(metrics).items() if k.startswith("d_")}

    a, b = (rng.integers(0, 2, batch["targets"].shape) for _ in range(2))
    unlabelled = d_losses(0.0, a), d_losses(0.0, b)
    assert unlabelled[0] == pytest.approx(unlabelled[1], rel=1e-6, abs=1e-7)
    labelled = d_losses(1.0, a), d_losses(1.0, b)
    assert abs(labelled[0]["d_image"] - labelled[1]["d_image"]) > 1e-6  # the control: labels do matter


class _FakeTokenizer:
    def encode_hierarchical(self, sentences, max_sentences, max_words):
        return np.zeros((max_sentences, max_words), np.int32), np.zeros((max_sentences, max_words), np.float32)


def test_label_fraction_marks_about_that_share_of_every_class():
    from xray_gen.models.emixer.task import ReportAndLabelInputs

    rng = np.random.default_rng(0)
    n = 600
    labels = rng.random((n, NUM_LABELS)) < 0.5
    examples = [{"study_id": f"s{i:05d}", "findings": "Clear lungs.", "impression": b"Normal."} for i in range(n)]
    masks = lambda fraction, seed: np.array([ReportAndLabelInputs(_FakeTokenizer(), 2, 4, fraction, seed).map(ex)
                                             ["labeled_mask"] for ex in examples])
    m = masks(0.3, 0)
    assert set(np.unique(m)) == {0.0, 1.0} and abs(m.mean() - 0.3) < 0.05
    for c in range(NUM_LABELS):  # about 30% of each class's positives (and negatives) keep their labels
        assert abs(m[labels[:, c]].mean() - 0.3) < 0.1 and abs(m[~labels[:, c]].mean() - 0.3) < 0.1
    np.testing.assert_array_equal(m, masks(0.3, 0))  # the same studies every epoch and every run
    assert (m != masks(0.3, 1)).any()  # a different seed picks another subset
    assert masks(1.0, 0).all() and np.all(m <= masks(0.5, 0))  # nested: more labels keep the 30% ones
    assert report_text(["the heart is enlarged", "no effusion."]) == "the heart is enlarged. no effusion."


def test_gradient_accumulation_step_runs_and_bad_split_is_named(trained):
    """train.grad_accum_steps=2 with emixer.d_steps=2 (the paper's two discriminator updates per step,
    each on its own half of the batch): each slice and the G/F batch are two microbatches."""
    from xray_gen.training import loop

    config, workdir = trained
    accum_config = config.copy_and_resolve_references()
    accum_config.train.grad_accum_steps = 2
    accum_config.emixer.d_steps = 2
    task = main.make_task(accum_config, workdir)
    state, _ = loop.restore_latest(task, accum_config, workdir)
    batch = jax.tree.map(jnp.asarray, next(iter(task.train_loader())))
    before = jax.device_get((state.gen["G"]["params"], state.disc["image"]["params"]))
    new, metrics = jax.jit(task.train_step)(state, {}, batch)
    assert all(np.isfinite(float(v)) for v in jax.device_get(metrics).values())
    assert int(new.step) == int(state.step) + 1  # two discriminator updates, one step
    after = jax.device_get((new.gen["G"]["params"], new.disc["image"]["params"]))
    for b, a in zip(before + (before[1]["rotation"],), after + (after[1]["rotation"],)):  # rotation head: SSGAN on
        assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(b), jax.tree.leaves(a)))
    accum_config.train.grad_accum_steps = 3
    with pytest.raises(ValueError, match="train.grad_accum_steps=3"):
        main.make_task(accum_config, workdir)
    from xray_gen.configs import classifier as classifier_config

    config_other = classifier_config.get_config("smoke")
    config_other.train.grad_accum_steps = 2
    with pytest.raises(ValueError, match="not implemented for classifier"):
        main.run(config_other, str(workdir) + "_classifier", "train")


def test_rotation_loss_off_leaves_the_rotation_head_alone(trained):
    """emixer.rotation_loss=False (BigGAN's critic step): no rotation term, so D's rotation head gets
    no gradient while the rest of D trains (with it on, the head moves: the accumulation test)."""
    from xray_gen.models.emixer.steps import disc_params
    from xray_gen.training import loop

    config, workdir = trained
    c = config.copy_and_resolve_references()
    c.emixer.rotation_loss = False
    task = main.make_task(c, workdir)
    state, _ = loop.restore_latest(task, c, workdir)
    state = state.replace(disc_opt=task.disc_tx.init(disc_params(state.disc)))  # no momentum from training
    new, metrics = jax.jit(task.train_step)(state, {}, jax.tree.map(jnp.asarray, next(iter(task.train_loader()))))
    moved = lambda name: any(not np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(jax.device_get(state.disc["image"]["params"][name])),
        jax.tree.leaves(jax.device_get(new.disc["image"]["params"][name]))))
    assert not moved("rotation") and moved("linear")
    assert float(metrics["d_rotation"]) == 0.0 and np.isfinite(float(metrics["d_loss"]))


def test_f_pretrain_phase_trains_f_alone(trained):
    """Phase 0 (emixer.f_pretrain_steps) moves only F's parameters and lowers its teacher-forced loss;
    entering the joint phase resets the G/F Adam moments."""
    from xray_gen.training import loop

    config, workdir = trained
    task = main.make_task(config, workdir)
    assert [task.phase(s) for s in range(3)] == [0, 1, 1]
    state, _ = loop.restore_latest(task, config, workdir)
    batch = jax.tree.map(jnp.asarray, next(iter(task.train_loader())))
    step = jax.jit(task.phase_step(0))
    new, first = step(state, {}, batch)
    for _ in range(5):
        new, metrics = step(new, {}, batch)
    assert float(metrics["f_loss"]) < float(first["f_loss"])
    same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert same(state.gen["G"], new.gen["G"]) and same(state.disc, new.disc)
    assert not same(state.gen["F"]["params"], new.gen["F"]["params"])
    fresh = task.enter_phase(new, 1)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(fresh.gen_opt) if x.dtype != jnp.int32)


def test_scale_gradient_keeps_values_and_scales_gradients():
    from xray_gen.models.emixer.steps import _scale_gradient

    x = {"w": jnp.array([1.5, -2.0])}
    f = lambda t, w: jnp.sum(_scale_gradient(t, w)["w"] ** 2)
    assert float(f(x, 0.1)) == float(jnp.sum(x["w"] ** 2))
    np.testing.assert_allclose(jax.grad(f)(x, 0.1)["w"], 0.1 * 2 * x["w"], rtol=1e-6)
    np.testing.assert_allclose(jax.grad(f)(x, 0.0)["w"], 0.0)
