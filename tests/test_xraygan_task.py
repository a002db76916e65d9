"""XRayGAN end to end at smoke size: frozen VCNs trained first, warm-up + two stages, phases logged."""

import os

import jax
import numpy as np

from xray_gen import main
from xray_gen.configs import xraygan as xraygan_config
from xray_gen.training.checkpoint import Checkpointer


def test_smoke_training_runs_all_phases_with_frozen_vcns(tmp_path):
    config = xraygan_config.get_config("smoke")
    workdir = str(tmp_path)
    state = main.run(config, workdir, "train")
    assert int(state.step) == 2 + 3 + 3  # warm-up + stage 0 + stage 1
    for res in (32, 64):
        assert Checkpointer(os.path.join(workdir, f"vcn_{res}", "checkpoints")).latest_step() == config.xraygan.vcn_steps
    assert os.path.exists(os.path.join(workdir, "tokenizer.model"))
    assert set(state.d_params) == {"frontal_0", "lateral_0", "frontal_1", "lateral_1"}
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(state.g_params)))
    meta = Checkpointer(os.path.join(workdir, "checkpoints")).restore_meta()
    assert meta["phase"] == 2  # the last stage's phase is in the checkpoint


def test_stage_boundaries_and_resolutions():
    from xray_gen.models.xraygan.task import XRayGANTask, stage_resolution

    task = XRayGANTask.__new__(XRayGANTask)  # phase arithmetic only: no tokenizer or networks needed
    task.phases = [("warmup", 0, 2), ("gan", 0, 3), ("gan", 1, 3)]
    task.boundaries = np.cumsum([2, 3, 3])
    assert [task.phase(s) for s in range(8)] == [0, 0, 1, 1, 1, 2, 2, 2]
    assert [stage_resolution(s) for s in range(4)] == [32, 64, 128, 256]
