"""XRayGAN stopped mid-stage (or at a stage boundary) resumes in the right stage and ends bit-identical
to an uninterrupted run, the stage switch happening after the resume.

Smoke schedule (steps): warm-up 1-2 (phase 0), stage 0 at 32 px 3-5 (phase 1), stage 1 at 64 px 6-8
(phase 2); checkpoints every 2 steps. The interrupted run is stopped twice (`train.stop_at_step`):
at step 2, exactly at the warm-up/stage-0 boundary, and at step 3, inside stage 0; its last part
resumes inside stage 0 and crosses the stage-0 -> stage-1 switch. Each stop costs no extra
compilation (every phase is compiled once per part that trains in it, as a single stop would).
The costly `prepare()` (two VCNs and the classifier) runs once, in the uninterrupted run; the
stopped run gets copies of their finished workdirs (and the tokenizer), which `prepare()` resumes
as complete, i.e. skips.
"""

import os
import shutil

import jax
import numpy as np

from xray_gen import main
from xray_gen.configs import xraygan as xraygan_config
from xray_gen.models.xraygan.task import XRayGANTask
from xray_gen.training.checkpoint import Checkpointer

PREPARED = ("vcn_32", "vcn_64", "classifier_64", "tokenizer.model")
FINAL_STEP = 2 + 3 + 3


def _spy(mp, calls):
    """Records XRayGANTask's prepare / phase_step / phase_loader / enter_phase calls (with their phase)
    and every checkpoint save (directory, step)."""
    for name in ("prepare", "phase_step", "phase_loader", "enter_phase"):
        original = getattr(XRayGANTask, name)

        def wrapper(self, *args, _original=original, _name=name):
            calls.append((_name, args[-1] if args else None))  # the phase is every method's last argument
            return _original(self, *args)

        mp.setattr(XRayGANTask, name, wrapper)
    original_save = Checkpointer.save

    def save(self, step, state, meta):
        calls.append(("save", (self.directory, int(step))))
        return original_save(self, step, state, meta)

    mp.setattr(Checkpointer, "save", save)


def _of(calls, name):
    return [value for n, value in calls if n == name]


def _saved_steps(calls, workdir):
    """Steps of the checkpoints saved in `workdir`'s own checkpoint directory."""
    own = os.path.abspath(os.path.join(workdir, "checkpoints"))
    return [step for directory, step in _of(calls, "save") if directory == own]


def _meta(workdir):
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        return ckpt.latest_step(), ckpt.restore_meta()
    finally:
        ckpt.close()


def _train(workdir, calls, stop_at_step=-1):
    """One `main.run(..., "train")` of the smoke config; returns its final state on the host."""
    calls.clear()
    config = xraygan_config.get_config("smoke")
    config.train.stop_at_step = stop_at_step
    return jax.device_get(main.run(config, workdir, "train"))


def test_stopped_mid_stage_resumes_in_its_stage_and_matches_uninterrupted(tmp_path, monkeypatch):
    calls = []
    _spy(monkeypatch, calls)

    # Run A, uninterrupted: prepares the VCNs and the classifier, enters phases 1 and 2 once each.
    full = str(tmp_path / "full")
    full_state = _train(full, calls)
    assert int(full_state.step) == FINAL_STEP
    assert _of(calls, "prepare") == [None]
    assert _of(calls, "phase_loader") == [0, 1, 2] and _of(calls, "enter_phase") == [1, 2]
    assert _saved_steps(calls, full) == [2, 4, 6, 8]
    assert _meta(full)[1]["phase"] == 2

    split = str(tmp_path / "split")
    os.makedirs(split)
    for name in PREPARED:  # run A's finished VCNs, classifier and vocabulary
        src, dst = os.path.join(full, name), os.path.join(split, name)
        (shutil.copytree if os.path.isdir(src) else shutil.copy2)(src, dst)

    # Run B, part 1: a fresh start stopped exactly at the end of the warm-up (a phase boundary).
    # prepare() runs but finds the copied runs complete: nothing is trained or saved outside B's own checkpoints.
    assert int(_train(split, calls, stop_at_step=2).step) == 2
    assert _of(calls, "prepare") == [None]
    assert _saved_steps(calls, split) == [2]
    assert len(_of(calls, "save")) == 1, f"prepare() retrained a copied run: {_of(calls, 'save')}"
    for res in (32, 64):
        vcn_steps = xraygan_config.get_config("smoke").xraygan.vcn_steps
        assert Checkpointer(os.path.join(split, f"vcn_{res}", "checkpoints")).latest_step() == vcn_steps
    step, meta = _meta(split)
    assert (step, meta["phase"]) == (2, 0)  # the checkpoint closed the warm-up

    # Part 2: resumes at the boundary, so enters stage 0 (phase 1) on resume; stopped inside it, after step 3.
    assert int(_train(split, calls, stop_at_step=3).step) == 3
    assert _of(calls, "prepare") == []
    assert _of(calls, "enter_phase") == [1] and _of(calls, "phase_loader") == [1] and _of(calls, "phase_step") == [1]
    assert _saved_steps(calls, split) == [3]
    step, meta = _meta(split)
    assert (step, meta["phase"]) == (3, 1) and meta["data"]  # mid-stage: stage 0's phase and its data position

    # Part 3: resumes inside stage 0 (no phase entry: its loader continues from the saved position),
    # then switches to stage 1 (64 px) at step 5 in the resumed loop, and runs to the end.
    resumed = _train(split, calls)
    assert _of(calls, "prepare") == []
    assert _of(calls, "phase_loader") == [1, 2] and _of(calls, "phase_step") == [1, 2]
    assert _of(calls, "enter_phase") == [2]
    assert _saved_steps(calls, split) == [4, 6, 8]
    step, meta = _meta(split)
    assert (step, meta["phase"]) == (FINAL_STEP, 2)

    # Bit-identical to the uninterrupted run: every leaf of every field.
    assert int(resumed.step) == FINAL_STEP
    assert jax.tree.structure(resumed) == jax.tree.structure(full_state)
    for name in ("step", "rng", "g_params", "d_params", "g_opt", "d_opt"):
        jax.tree.map(lambda a, b, name=name: np.testing.assert_array_equal(a, b, err_msg=name),
                     getattr(full_state, name), getattr(resumed, name))
