"""xray_gen: train, sample and evaluate generative models of chest X-rays and reports.

Usage:
  python -m xray_gen.main --config=configs/<model>.py[:variant] --workdir=DIR [--mode=MODE]
         [--config.a.b=value ...]

Modes:
  train     train the model (resumes from the latest checkpoint in DIR if there is one)
  evaluate  load the latest checkpoint in DIR and write metrics JSON (with their protocol) to DIR/eval
  sample    load the latest checkpoint and write samples to DIR/samples (generative models)

Variants: a size, '' (paper-faithful), 'cpu' (minutes on a laptop) or 'smoke' (seconds, for tests),
and the model's options, comma-separated: e.g. configs/emixer.py:cpu,labels=0.3 (see each config).
Data: the embedded phantom by default; --config.data.source=openi|mimic_cxr|chestxray14|chexpert
with --config.data.manual_dir=YOUR_COPY for real data (never downloaded by xray_gen).

Example:
  python -m xray_gen.main --config=configs/classifier.py:cpu --workdir=/tmp/classifier

Several processes (hosts/GPUs): the same command in each; on SLURM and TPU pods the cluster is
detected, elsewhere add --coordinator_address=HOST:PORT --num_processes=N --process_id=I
(see launch/ and xray_gen/training/distributed.py).
"""

from __future__ import annotations

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from xray_gen.configs.overrides import unknown_override_keys
from xray_gen.runner import MODES, SAMPLE_OPTIONS, make_task, run  # noqa: F401  (the library entry points)

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Model config file, e.g. configs/classifier.py:cpu", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and outputs.")
_MODE = flags.DEFINE_enum("mode", "train", MODES, "What to do: " + ", ".join(MODES) + ".")
_SAMPLE = {
    "report": flags.DEFINE_string("report", None, 'sample: one report, e.g. "FINDINGS: ... IMPRESSION: ..."'),
    "report_file": flags.DEFINE_string("report_file", None, "sample: a text file (one report), or .jsonl/.csv of many"),
    "labels": flags.DEFINE_string("labels", None, 'sample: findings to condition on, e.g. "Cardiomegaly,Edema=0"'),
    "labels_file": flags.DEFINE_string("labels_file", None, "sample: a CSV of label vectors (one row per sample)"),
    "image": flags.DEFINE_string("image", None, "sample: an X-ray image (PNG) to write a report for"),
}
assert tuple(_SAMPLE) == SAMPLE_OPTIONS
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "multi-process: HOST:PORT of process 0 (env JAX_COORDINATOR_ADDRESS)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "multi-process: number of processes (env JAX_NUM_PROCESSES)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "multi-process: this process's index (env JAX_PROCESS_ID)")


def _parse_flags(argv):
    """absl flag parsing, turning a bad --config override into a message instead of a traceback."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError, ValueError) as err:
        problems = unknown_override_keys(argv) if not isinstance(err, ValueError) else []
        sys.exit("error: " + ("\n".join(problems) if problems else str(err)))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError("--config and --workdir are required (see --help)")
    from xray_gen.training import distributed

    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)  # before any device use
    logging.info(
        "JAX %s: process %d/%d, %d local / %d global devices (%s)", jax.__version__, jax.process_index(),
        jax.process_count(), jax.local_device_count(), jax.device_count(), jax.default_backend(),
    )
    sample_options = {k: flag.value for k, flag in _SAMPLE.items() if flag.value is not None}
    if sample_options and _MODE.value != "sample":
        raise app.UsageError(f"--{', --'.join(sample_options)} only apply to --mode=sample")
    run(_CONFIG.value, _WORKDIR.value, _MODE.value, **sample_options)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
