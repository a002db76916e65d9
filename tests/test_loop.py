"""The generic loop on a tiny regression task: exact resume, non-finite guard, SIGTERM, records."""

import json
import os
import signal
import threading

import flax
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from xray_gen.configs.default import get_default
from xray_gen.data.pipeline import make_loader
from xray_gen.training import loop
from xray_gen.training.checkpoint import CheckpointMismatchError, Checkpointer


class ArraySource:
    def __init__(self, n=64, dim=4, seed=0):
        rng = np.random.default_rng(seed)
        self.x = rng.normal(size=(n, dim)).astype(np.float32)
        self.y = (self.x @ np.arange(1, dim + 1, dtype=np.float32) + 0.1).astype(np.float32)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}

    def __repr__(self):
        return "ArraySource()"


@flax.struct.dataclass
class RegState:
    step: jax.Array
    rng: jax.Array
    w: jax.Array
    opt_state: optax.OptState


class RegressionTask(loop.Task):
    """Noisy SGD on linear regression; `nan_at` poisons the loss at that step."""

    name = "regression"

    def __init__(self, config, nan_at=-1):
        super().__init__(config)
        self.tx = optax.adam(0.05)
        self.nan_at = nan_at
        self.evals = []

    def init(self, rng):
        w = jax.random.normal(rng, (4,))
        return RegState(jnp.zeros((), jnp.int32), rng, w, self.tx.init(w))

    def train_step(self, state, frozen, batch):
        noise = jax.random.normal(jax.random.fold_in(state.rng, state.step), (4,)) * 0.01

        def loss_fn(w):
            loss = jnp.mean((batch["x"] @ (w + noise) - batch["y"]) ** 2)
            return jnp.where(state.step + 1 == self.nan_at, jnp.nan, loss)

        loss, g = jax.value_and_grad(loss_fn)(state.w)
        updates, opt_state = self.tx.update(g, state.opt_state)
        return state.replace(step=state.step + 1, w=optax.apply_updates(state.w, updates), opt_state=opt_state), {"loss": loss}

    def train_loader(self):
        return make_loader(ArraySource(), [], self.config.train.batch_size, seed=self.config.seed)

    def evaluate(self, state, step):
        self.evals.append(step)
        return state, {"w0": float(state.w[0])}

    def host_state(self):
        return {"evals": self.evals}

    def load_host_state(self, host_state):
        self.evals = list(host_state.get("evals", []))


def _config(num_steps=10, **train):
    c = get_default()
    c.model = "regression"
    c.train.update(dict(batch_size=8, num_steps=num_steps, log_every=2, eval_every=4, checkpoint_every=3, **train))
    c.mesh.data = 1
    return c


def test_resume_after_stop_continues_exactly(tmp_path):
    full = loop.train(RegressionTask(_config()), _config(), str(tmp_path / "full"))
    stopped_task = RegressionTask(_config(stop_at_step=5))
    loop.train(stopped_task, _config(stop_at_step=5), str(tmp_path / "split"))
    assert Checkpointer(str(tmp_path / "split" / "checkpoints")).latest_step() == 5
    resumed_task = RegressionTask(_config())
    resumed = loop.train(resumed_task, _config(), str(tmp_path / "split"))
    np.testing.assert_array_equal(np.asarray(full.w), np.asarray(resumed.w))
    assert int(resumed.step) == 10
    assert resumed_task.evals == [4, 8, 10]  # host state (eval history) came back from the checkpoint


def test_data_position_is_restored_not_restarted(tmp_path):
    """Resuming must not replay the first batches: a loader restarted from zero gives other params."""
    loop.train(RegressionTask(_config()), _config(stop_at_step=5), str(tmp_path / "a"))
    meta = Checkpointer(str(tmp_path / "a" / "checkpoints")).restore_meta()
    position = json.loads(meta["data"])
    assert position["last_seen_indices"] != {"0": -1}  # it moved past the start


def test_non_finite_loss_names_step_and_term_and_keeps_last_good_checkpoint(tmp_path):
    task = RegressionTask(_config(), nan_at=5)
    with pytest.raises(loop.NonFiniteLossError, match=r"'loss'.*step 5"):
        loop.train(task, _config(), str(tmp_path))
    assert Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [3]


def test_sigterm_checkpoints_and_exits_cleanly(tmp_path):
    class SlowSource(ArraySource):
        def __getitem__(self, i):
            threading.Event().wait(0.02)
            return super().__getitem__(i)

    task = RegressionTask(_config(num_steps=10_000))
    task.train_loader = lambda: make_loader(SlowSource(), [], 8, seed=0)
    timer = threading.Timer(3.0, lambda: os.kill(os.getpid(), signal.SIGTERM))
    timer.start()
    state = loop.train(task, _config(num_steps=10_000), str(tmp_path))
    timer.cancel()
    step = int(state.step)
    assert 0 < step < 10_000
    assert Checkpointer(str(tmp_path / "checkpoints")).latest_step() == step


def test_workdir_records_config_versions_devices(tmp_path):
    loop.train(RegressionTask(_config(num_steps=2)), _config(num_steps=2), str(tmp_path))
    for name in ("config.json", "versions.json", "devices.json"):
        assert os.path.exists(tmp_path / name), name
    assert json.load(open(tmp_path / "config.json"))["train"]["num_steps"] == 2
    assert "jax" in json.load(open(tmp_path / "versions.json"))



def test_checkpoint_of_another_model_is_refused_by_name_and_keeps_its_records(tmp_path):
    """Resuming a workdir whose checkpoint has other shapes names the directory and the step, and
    leaves the config.json of the run that wrote it (the record of what the checkpoint is)."""

    class WiderTask(RegressionTask):
        def init(self, rng):
            w = jax.random.normal(rng, (5,))
            return RegState(jnp.zeros((), jnp.int32), rng, w, self.tx.init(w))

    loop.train(RegressionTask(_config(num_steps=3)), _config(num_steps=3), str(tmp_path))
    before = (tmp_path / "config.json").read_text()
    with pytest.raises(CheckpointMismatchError, match=r"checkpoints \(step 3\) does not fit the model this config builds"):
        loop.train(WiderTask(_config(num_steps=6)), _config(num_steps=6), str(tmp_path))
    assert (tmp_path / "config.json").read_text() == before

class TwoPhaseTask(RegressionTask):
    """Phase 0 (steps 1-4): batch 8; phase 1: batch 4 and a halved update. Records phase entries."""

    def __init__(self, config, **kw):
        super().__init__(config, **kw)
        self.entered = []

    def phase(self, step):
        return 0 if step < 4 else 1

    def phase_step(self, phase):
        def step(state, frozen, batch):
            new, metrics = self.train_step(state, frozen, batch)
            if phase == 1:
                new = new.replace(w=state.w + 0.5 * (new.w - state.w))
            return new, {**metrics, "batch": jnp.float32(batch["x"].shape[0])}

        return step

    def phase_loader(self, phase):
        return make_loader(ArraySource(), [], 8 if phase == 0 else 4, seed=phase)

    def enter_phase(self, state, phase):
        self.entered.append(phase)
        return state


@pytest.mark.parametrize("stop_at", [2, 4, 6])  # inside phase 0, exactly at the boundary, inside phase 1
def test_phases_switch_once_and_resume_in_the_right_phase(tmp_path, stop_at):
    full_task = TwoPhaseTask(_config())
    full = loop.train(full_task, _config(), str(tmp_path / "full"))
    assert full_task.entered == [1]
    loop.train(TwoPhaseTask(_config()), _config(stop_at_step=stop_at), str(tmp_path / "split"))
    assert Checkpointer(str(tmp_path / "split" / "checkpoints")).restore_meta()["phase"] == (0 if stop_at <= 4 else 1)
    resumed_task = TwoPhaseTask(_config())
    resumed = loop.train(resumed_task, _config(), str(tmp_path / "split"))
    np.testing.assert_array_equal(np.asarray(full.w), np.asarray(resumed.w))
    assert resumed_task.entered == ([1] if stop_at <= 4 else [])


def test_atomic_open_gives_plain_open_permissions(tmp_path):
    import os
    import stat

    from xray_gen.files import atomic_open

    with atomic_open(str(tmp_path / "a.json")) as f:
        f.write("{}")
    with open(tmp_path / "b.json", "w") as f:
        f.write("{}")
    mode = lambda name: stat.S_IMODE(os.stat(tmp_path / name).st_mode)
    assert mode("a.json") == mode("b.json")


class EvaluatedRegressionTask(RegressionTask):
    """Its `--mode=evaluate` writes through eval_dir and fails once, at step 6."""

    def final_report(self, state, workdir, checkpoint_step=None):
        from xray_gen.evaluation.protocol import eval_dir

        step = int(state.step)
        if step == 6:
            raise RuntimeError("evaluation bug")
        os.makedirs(eval_dir(workdir, checkpoint_step), exist_ok=True)
        with open(os.path.join(eval_dir(workdir, checkpoint_step), "result.json"), "w") as f:
            json.dump({"step": step}, f)
        return {"metrics": {"w0": float(state.w[0]), "nested": {"step": step}, "undefined": float("nan"), "note": "x"}}


def test_evaluation_at_checkpoints_is_kept_apart_logged_and_never_fatal(tmp_path):
    from xray_gen.evaluation.html_report import read_curves

    config = _config(num_steps=9)
    config.train.eval_every = 0
    config.eval.at_checkpoints_every = 3
    state = loop.train(EvaluatedRegressionTask(config), config, str(tmp_path))
    assert int(state.step) == 9  # the failure at step 6 did not stop training
    assert sorted(os.listdir(tmp_path / "eval")) == ["step_3", "step_9"]
    assert json.loads((tmp_path / "eval" / "step_9" / "result.json").read_text()) == {"step": 9}
    curves = read_curves(str(tmp_path), "checkpoint_eval/*")
    assert set(curves) == {"checkpoint_eval/w0", "checkpoint_eval/nested.step"}  # numbers only, finite only
    assert [s for s, _ in curves["checkpoint_eval/nested.step"]] == [3, 9]


def test_metrics_window_spanning_two_phases_averages_each_metric_over_its_steps():
    """A log window that crosses a phase switch mixes steps with different metric names."""
    from xray_gen.training.loop import _check_and_average

    pending = [(1, {"f_loss": np.float32(2.0)}), (2, {"f_loss": np.float32(4.0)}),
               (3, {"g_loss": np.float32(1.0), "f_word_ce": np.float32(0.5)})]
    assert _check_and_average(pending) == {"f_loss": 3.0, "g_loss": 1.0, "f_word_ce": 0.5}
