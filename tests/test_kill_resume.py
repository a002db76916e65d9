"""A run killed with SIGKILL resumes from its last checkpoint and ends bit-identical to an unkilled run."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from xray_gen.configs import classifier as classifier_config
from xray_gen.models.classifier.task import ClassifierTask
from xray_gen.training import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = ["--config.train.num_steps=60", "--config.train.checkpoint_every=2", "--config.train.eval_every=0"]


def _command(workdir):
    return [sys.executable, "-m", "xray_gen.main", "--config=configs/classifier.py:smoke", f"--workdir={workdir}", *OVERRIDES]


def _restore(workdir):
    config = classifier_config.get_config("smoke")
    config.train.num_steps, config.train.checkpoint_every, config.train.eval_every = 60, 2, 0
    state, _ = loop.restore_latest(ClassifierTask(config), config, workdir)
    return jax.device_get(state)


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    subprocess.run(_command(full), cwd=REPO, check=True, capture_output=True, timeout=300)

    proc = subprocess.Popen(_command(killed), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_dir = os.path.join(killed, "checkpoints")
    deadline = time.time() + 240
    while time.time() < deadline:
        steps = [d for d in os.listdir(ckpt_dir) if d.isdigit()] if os.path.isdir(ckpt_dir) else []
        if any(int(s) >= 4 for s in steps):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finished = [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()]
    assert max(finished) < 60, "the run ended before it could be killed; raise num_steps"
    subprocess.run(_command(killed), cwd=REPO, check=True, capture_output=True, timeout=300)

    a, b = _restore(full), _restore(killed)
    assert int(a.step) == int(b.step) == 60
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    jax.tree.map(np.testing.assert_array_equal, a.opt_state, b.opt_state)
