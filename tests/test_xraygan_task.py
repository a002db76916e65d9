"""XRayGAN end to end at smoke size: frozen VCNs trained first, warm-up + two stages, phases logged."""

import json
import os

import jax
import numpy as np
from PIL import Image

from xray_gen import main
from xray_gen.configs import xraygan as xraygan_config
from xray_gen.training.checkpoint import Checkpointer


def test_smoke_training_runs_all_phases_with_frozen_vcns(tmp_path):
    config = xraygan_config.get_config("smoke")
    workdir = str(tmp_path)
    state = main.run(config, workdir, "train")
    assert int(state.step) == 2 + 3 + 3  # warm-up + stage 0 + stage 1
    assert Checkpointer(os.path.join(workdir, "classifier_64", "checkpoints")).latest_step() == 4
    for res in (32, 64):
        assert Checkpointer(os.path.join(workdir, f"vcn_{res}", "checkpoints")).latest_step() == config.xraygan.vcn_steps
    assert os.path.exists(os.path.join(workdir, "tokenizer.model"))
    assert set(state.d_params) == {"frontal_0", "lateral_0", "frontal_1", "lateral_1"}
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(state.g_params)))
    meta = Checkpointer(os.path.join(workdir, "checkpoints")).restore_meta()
    assert meta["phase"] == 2  # the last stage's phase is in the checkpoint

    # sampling from the checkpoint: test-split reports by default, then user reports of every kind
    summary = main.run(config, workdir, "sample")
    assert len(summary) == config.sample.num_reports
    grid = Image.open(os.path.join(workdir, "samples", "grid.png"))
    assert grid.size == (4 * 64, config.sample.num_reports * 64)  # generated pair + real pair per row
    reports = tmp_path / "reports.jsonl"
    reports.write_text("\n".join(json.dumps(r) for r in [
        {"id": "openi", "report": "FINDINGS: The heart is normal in size. No pleural effusion or pneumothorax. "
                                  "IMPRESSION: No acute cardiopulmonary abnormality."},
        {"id": "empty", "report": "   "},
        {"id": "unknown", "findings": "zzyzx qwerty"},
        {"id": "long", "findings": " ".join(["Mild cardiomegaly."] * 40) + " " + "very " * 60 + "long."},
        {"id": "odd", "impression": "Pneumothorax \u2603\u0000 on the right!!! <b>XXXX</b>"},
    ]))
    summary = main.run(config, workdir, "sample", report_file=str(reports))
    assert summary["openi"]["files"] == ["frontal.png", "lateral.png"]
    frontal = np.asarray(Image.open(os.path.join(workdir, "samples", "openi", "frontal.png")))
    assert frontal.shape == (64, 64) and frontal.dtype == np.uint8
    assert "files" not in summary["empty"] and any("skipped" in n for n in summary["empty"]["notes"])
    assert "files" in summary["long"] and any("kept the first" in n for n in summary["long"]["notes"])
    assert "files" in summary["odd"]
    with open(os.path.join(workdir, "samples", "summary.json")) as f:
        assert {"test_0", "openi", "empty"} <= set(json.load(f))  # both calls' reports are listed

    result = main.run(config, workdir, "evaluate")
    vc = result["pairs"]["view_consistency"]
    assert all(0.0 <= vc[k] <= 1.0 for k in ("generated", "real", "mismatched_generated"))
    for view in ("frontal", "lateral"):
        numbers = result["fidelity"][view]
        assert numbers["fid"] >= 0.0 and numbers["kid"]["num_subsets"] == 100
        assert result["matched"][view]["n"] == result["num_reports"] and -1.0 <= result["matched"][view]["ssim"] <= 1.0
    assert result["clinical"]["auroc_generated"]["n"] == result["num_reports"]
    assert os.path.exists(os.path.join(workdir, "eval", "xraygan_validation.json"))
    page = open(os.path.join(workdir, "eval", "xraygan_validation.html")).read()
    assert page.count("data:image/png;base64,") >= 4 * config.sample.num_reports  # generated + real pairs
    assert "AUROC generated" in page

    # --mode=evaluate and the folder evaluator are one code path: scoring the generated folder the
    # model wrote, with the run's classifier and VCN, gives the same numbers.
    from xray_gen import evaluate as folder

    again = folder.evaluate(os.path.join(workdir, "eval", "xraygan_validation_generated"), "phantom/validation",
                            str(tmp_path / "folder"), config.data, classifier_workdir=os.path.join(workdir, "classifier_64"),
                            vcn_workdir=os.path.join(workdir, "vcn_64"), num_examples=config.eval.num_examples,
                            train_examples=config.eval.train_examples, bootstrap=config.eval.bootstrap,
                            report_bootstrap=config.eval.report_bootstrap, num_pairs=config.eval.diversity_pairs,
                            seed=config.seed)["metrics"]
    for section in ("fidelity", "matched", "clinical", "pairs", "reports"):
        assert json.dumps(again[section], sort_keys=True) == json.dumps(result[section], sort_keys=True), section


def test_stage_boundaries_and_resolutions():
    from xray_gen.models.xraygan.steps import Schedule, stage_resolution

    x = xraygan_config.get_config("smoke").xraygan
    x.warmup_steps, x.stage_steps = 2, (3, 3)
    schedule = Schedule.from_config(x)
    assert schedule.phases == (("warmup", 0, 2), ("gan", 0, 3), ("gan", 1, 3)) and schedule.boundaries == (2, 5, 8)
    assert [schedule.phase_at(s) for s in range(9)] == [0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert [stage_resolution(s) for s in range(4)] == [32, 64, 128, 256]


def test_load_reports_formats_and_errors(tmp_path):
    import pytest

    from xray_gen.models.xraygan.generate import load_reports

    one = load_reports(report="FINDINGS: Clear lungs. IMPRESSION: Normal.")
    assert one == [{"id": "report", "findings": "Clear lungs.", "impression": "Normal."}]
    headerless = load_reports(report="Heart size normal.")[0]  # no headers: kept (extract_sections' fallback)
    assert "Heart size normal." in headerless["findings"] + headerless["impression"]
    csv_file = tmp_path / "r.csv"
    csv_file.write_text("id,findings,impression\na/1,Small effusion.,Effusion.\n")
    assert load_reports(report_file=str(csv_file)) == [{"id": "a_1", "findings": "Small effusion.", "impression": "Effusion."}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"report": "ok"}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        load_reports(report_file=str(bad))
    no_cols = tmp_path / "x.csv"
    no_cols.write_text("text\nhello\n")
    with pytest.raises(ValueError, match="'report' column"):
        load_reports(report_file=str(no_cols))
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_reports(report_file=str(tmp_path / "missing.txt"))


def test_vc_reward_gradients_reach_both_generators_and_leave_the_vcn_alone():
    import jax.numpy as jnp
    import optax

    from xray_gen.models.vcn.networks import ViewConsistencyNet
    from xray_gen.models.xraygan.losses import vc_reward_loss
    from xray_gen.models.xraygan.networks import XRayGANGenerator

    gen = XRayGANGenerator(base_width=16, stage_width=8, num_stages=1, num_res=1)
    vcn = ViewConsistencyNet(stage_sizes=(1, 1), widths=(4, 8), small_input=True, embed_dim=8)
    c = jax.random.normal(jax.random.PRNGKey(0), (2, 16))
    g_params = gen.init(jax.random.PRNGKey(1), c)
    x32 = jnp.zeros((2, 32, 32, 1))
    vcn_vars = vcn.init(jax.random.PRNGKey(2), x32, x32)

    def loss(g_params, vcn_vars):
        out = gen.apply(g_params, c, stage=0)
        p = jax.nn.sigmoid(vcn.apply(vcn_vars, out["frontal"][0], out["lateral"][0], train=False))
        return vc_reward_loss(p)

    g_grads = jax.grad(loss)(g_params, vcn_vars)
    assert float(optax.tree.norm(g_grads["params"]["frontal"])) > 0
    assert float(optax.tree.norm(g_grads["params"]["lateral"])) > 0
    # In the task the VCN's variables are the step's `frozen` argument (outside every optimised
    # pytree): its parameters change only if something differentiates with respect to them.
    from xray_gen.models.xraygan.steps import XRayGANState

    assert "vcn" not in XRayGANState.__dataclass_fields__



def test_learning_rate_milestones_and_step_decay_per_stage():
    from xray_gen.models.xraygan.steps import Schedule

    x = xraygan_config.get_config("official").xraygan  # x0.2 at 45/70/90 % of each stage
    x.num_stages, x.stage_steps = 2, (100, 100)
    schedule = Schedule.from_config(x)
    lr = lambda step, phase: float(schedule.learning_rate(x, step, phase))
    np.testing.assert_allclose([lr(s, 0) for s in (0, 44, 45, 69, 70, 90, 99)],
                               3e-4 * np.array([1, 1, 0.2, 0.2, 0.04, 0.008, 0.008]), rtol=1e-6)
    np.testing.assert_allclose([lr(100, 1), lr(145, 1)], [3e-4, 3e-4 * 0.2], rtol=1e-6)  # restarts per stage
    x = xraygan_config.get_config("").xraygan  # paper: x0.2 every lr_decay_every steps
    every = x.lr_decay_every
    x.stage_steps = (3 * every,) * 4
    schedule = Schedule.from_config(x)
    lr = lambda step, phase: float(schedule.learning_rate(x, step, phase))
    start = schedule.start(2)
    np.testing.assert_allclose([lr(start, 2), lr(start + every, 2), lr(start + 2 * every + 1, 2)],
                               2e-4 * np.array([1, 0.2, 0.04]), rtol=1e-6)
