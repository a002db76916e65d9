"""Two local CPU processes joined by jax.distributed train exactly like one process with two devices,
save per-process data positions, and resume in a second two-process launch.

The launches go through launch/local_multiprocess.sh (what users run), each process with one CPU
device and the coordinator on a free localhost port; timeouts kill the whole process group, so a
hung coordinator fails the test instead of hanging the suite.
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from xray_gen import main
from xray_gen.configs import classifier as classifier_config
from xray_gen.data.samplers import GlobalBatchSampler
from xray_gen.evaluation.html_report import read_curves
from xray_gen.training import distributed
from xray_gen.training.checkpoint import Checkpointer, data_meta, local_data_position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# classifier smoke at 16 px, every step logged, checkpoints at 2 and 4, no evaluation (keeps it fast).
OVERRIDES = {"train.num_steps": 4, "train.log_every": 1, "train.checkpoint_every": 2, "train.eval_every": 0,
             "data.resolution": 16}
LAUNCH_TIMEOUT_S = 150


def _launch(workdir, log_dir, cache_dir, extra=()):
    """Runs launch/local_multiprocess.sh with two processes; returns process 0's log."""
    args = [f"--config.{k}={v}" for k, v in OVERRIDES.items()] + list(extra)
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS") and not k.startswith("SLURM_")}
    env.update(NUM_PROCESSES="2", PYTHON=sys.executable, LOG_DIR=str(log_dir), JAX_COMPILATION_CACHE_DIR=str(cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5", TF_CPP_MIN_LOG_LEVEL="3")
    command = ["bash", os.path.join(REPO, "launch", "local_multiprocess.sh"), "--config=configs/classifier.py:smoke",
               f"--workdir={workdir}", *args]
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both processes: nothing outlives the test
        proc.communicate()
        pytest.fail(f"two-process launch did not finish in {LAUNCH_TIMEOUT_S} s:\n{_logs(log_dir)}")
    assert proc.returncode == 0, f"launcher exited with {proc.returncode}: {stderr.decode()[-2000:]}\n{_logs(log_dir)}"
    with open(os.path.join(log_dir, "process_0.log")) as f:
        return f.read()


def _logs(log_dir):
    out = []
    for name in sorted(os.listdir(log_dir)) if os.path.isdir(log_dir) else []:
        with open(os.path.join(log_dir, name), errors="replace") as f:
            out.append(f"--- {name} (tail)\n" + f.read()[-3000:])
    return "\n".join(out)


def _losses(workdir):
    return dict(read_curves(workdir, "train/loss")["train/loss"])


@pytest.mark.timeout(2 * LAUNCH_TIMEOUT_S + 120)
def test_two_processes_match_one_process_and_resume(tmp_path):
    # Reference: one process with the session's two fake CPU devices, the same global batch of 8.
    config = classifier_config.get_config("smoke")
    for key, value in OVERRIDES.items():
        group, name = key.split(".")
        config[group][name] = value
    main.run(config, str(tmp_path / "single"), "train")
    expected = _losses(str(tmp_path / "single"))
    assert sorted(expected) == [1, 2, 3, 4]

    # Two processes, one CPU device each: stopped (as if preempted) at step 2, then resumed to 4.
    workdir, cache = tmp_path / "multi", tmp_path / "jax_cache"
    _launch(workdir, tmp_path / "logs_1", cache, extra=["--config.train.stop_at_step=2"])
    ckpt = Checkpointer(str(workdir / "checkpoints"))
    assert ckpt.all_steps() == [2]
    meta = ckpt.restore_meta()
    ckpt.close()
    positions = meta["data_by_process"]
    assert len(positions) == 2 and positions[0] == meta["data"]
    assert [json.loads(p)["sampler"].endswith(f"process_index={i}, process_count=2)") for i, p in enumerate(positions)] == [True, True]
    assert _losses(str(workdir)).keys() == {1, 2}

    log = _launch(workdir, tmp_path / "logs_2", cache)
    assert "Resumed classifier from step 2" in log
    got = _losses(str(workdir))
    assert sorted(got) == [1, 2, 3, 4]
    # Same examples in the same rows, same augmentation: equal up to the order of float sums.
    np.testing.assert_allclose([got[s] for s in range(1, 5)], [expected[s] for s in range(1, 5)], rtol=1e-5, atol=1e-6)
    assert len({round(v, 4) for v in expected.values()}) == 4  # distinct per step: a wrong batch would show


@pytest.mark.parametrize("num_records,batch,processes,epochs", [(64, 8, 2, None), (25, 8, 2, 1), (30, 12, 4, 1), (7, 4, 2, 2)])
def test_global_batch_sampler_rows_reproduce_single_process_order(num_records, batch, processes, epochs):
    def sampler(index, count):
        return GlobalBatchSampler(num_records, batch, shuffle=True, num_epochs=epochs, seed=3, process_index=index,
                                  process_count=count)

    single = sampler(0, 1)
    parts = [sampler(p, processes) for p in range(processes)]
    assert len({len(s) for s in parts}) == 1  # equal batch counts: no process waits alone in a collective
    local = batch // processes
    n = min(len(parts[0]), 3 * local * num_records)
    keys, rngs = [], []
    for start in range(0, n, local):
        for s in parts:
            for i in range(start, min(start + local, n)):
                meta = s[i]
                assert meta.index == i  # grain's iterator state counts local records
                keys.append(meta.record_key)
                rngs.append(meta.rng.integers(1 << 30))
    assert keys == [single[i].record_key for i in range(len(keys))]
    assert rngs == [single[i].rng.integers(1 << 30) for i in range(len(keys))]
    if epochs is not None:  # the whole split is read, less fewer than `processes` records
        assert num_records * epochs - processes < len(keys) <= num_records * epochs


def test_global_batch_sampler_rejects_uneven_batch():
    with pytest.raises(ValueError, match="not divisible by 3 processes"):
        GlobalBatchSampler(10, 8, shuffle=False, num_epochs=1, seed=0, process_index=0, process_count=3)


def test_data_positions_round_trip_and_reject_another_process_count():
    meta = data_meta('{"position": 1}')
    assert meta == {"data": '{"position": 1}'}  # one process: the single-process format is unchanged
    assert local_data_position(meta) == '{"position": 1}'
    assert local_data_position({}) is None
    with pytest.raises(ValueError, match="of 2 process"):
        local_data_position({"data": "a", "data_by_process": ["a", "b"]})


def test_initialize_is_single_process_without_settings_and_names_missing_flags(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("SLURM_", "OMPI_")) or name in distributed.ENV_VARS.values():
            monkeypatch.delenv(name)
    monkeypatch.setattr(distributed, "cluster_hint", lambda: None)
    assert distributed.initialize() is False
    with pytest.raises(ValueError, match="missing: --num_processes .*--process_id"):
        distributed.initialize(coordinator_address="127.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two'"):
        distributed.initialize()
    with pytest.raises(ValueError, match="--process_id=2 must be in"):
        distributed.initialize("127.0.0.1:1234", 2, 2)


def test_cluster_hint_reads_slurm_and_open_mpi(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("SLURM_", "OMPI_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    single_task = distributed.cluster_hint()
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distributed.cluster_hint() == "slurm"
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    assert distributed.cluster_hint() == "open mpi"
    assert single_task in (None, "cloud tpu")  # a one-task SLURM job is a single-process run
