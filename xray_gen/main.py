"""xray_gen: train, sample and evaluate generative models of chest X-rays and reports.

Usage:
  python -m xray_gen.main --config=configs/<model>.py[:variant] --workdir=DIR [--mode=MODE]
         [--config.a.b=value ...]

Modes:
  train     train the model (resumes from the latest checkpoint in DIR if there is one)
  evaluate  load the latest checkpoint in DIR and write metrics JSON (with their protocol) to DIR/eval
  sample    load the latest checkpoint and write samples to DIR/samples (generative models)

Variants: '' (paper-faithful), 'cpu' (minutes on a laptop), 'smoke' (seconds, for tests).
Data: the embedded phantom by default; --config.data.source=openi|mimic_cxr|chestxray14|chexpert
with --config.data.manual_dir=YOUR_COPY for real data (never downloaded by xray_gen).

Example:
  python -m xray_gen.main --config=configs/classifier.py:cpu --workdir=/tmp/classifier

Several processes (hosts/GPUs): the same command in each; on SLURM and TPU pods the cluster is
detected, elsewhere add --coordinator_address=HOST:PORT --num_processes=N --process_id=I
(see launch/ and xray_gen/training/distributed.py).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

MODES = ("train", "evaluate", "sample")
# model name -> "module:Task class"; imported only when chosen.
MODELS = {
    "classifier": "xray_gen.models.classifier:ClassifierTask",
    "vcn": "xray_gen.models.vcn:VCNTask",
    "xraygan": "xray_gen.models.xraygan.task:XRayGANTask",
    "pggan": "xray_gen.models.pggan.task:PGGANTask",
    "emixer": "xray_gen.models.emixer.task:EmixerTask",
    "cxr_irgen": "xray_gen.models.cxr_irgen.task:CxrIRGenTask",
}

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Model config file, e.g. configs/classifier.py:cpu", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and outputs.")
_MODE = flags.DEFINE_enum("mode", "train", MODES, "What to do: " + ", ".join(MODES) + ".")
_REPORT = flags.DEFINE_string("report", None, 'sample: one report, e.g. "FINDINGS: ... IMPRESSION: ..."')
_REPORT_FILE = flags.DEFINE_string("report_file", None, "sample: a text file (one report), or .jsonl/.csv of many")
_LABELS = flags.DEFINE_string("labels", None, 'sample: findings to condition on, e.g. "Cardiomegaly,Pleural Effusion"')
_LABELS_FILE = flags.DEFINE_string("labels_file", None, "sample: a CSV of label vectors (one row per sample)")
_IMAGE = flags.DEFINE_string("image", None, "sample: an X-ray image (PNG) to write a report for")
SAMPLE_FLAGS = ("report", "report_file", "labels", "labels_file", "image")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "multi-process: HOST:PORT of process 0 (env JAX_COORDINATOR_ADDRESS)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "multi-process: number of processes (env JAX_NUM_PROCESSES)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "multi-process: this process's index (env JAX_PROCESS_ID)")


# Models whose train_step averages train.grad_accum_steps microbatches (training/accumulation.py).
ACCUMULATING_MODELS = ("emixer", "cxr_irgen")


def make_task(config, workdir: str | None = None):
    """The Task object for `config.model`; unknown names fail listing the valid ones."""
    from xray_gen.data.pipeline import SOURCES

    if config.model not in MODELS:
        raise ValueError(f"unknown model {config.model!r}; valid models: {', '.join(MODELS)}")
    if config.data.source not in SOURCES:
        raise ValueError(f"unknown data.source {config.data.source!r}; valid: {', '.join(SOURCES)}")
    module_name, cls_name = MODELS[config.model].split(":")
    return getattr(importlib.import_module(module_name), cls_name)(config, workdir)


def run(config, workdir: str, mode: str, **sample_options):
    """Library entry point behind the CLI (also used by tests and notebooks)."""
    from xray_gen.training import loop

    accum = config.train.get("grad_accum_steps", 1)
    if accum != 1 and config.model not in ACCUMULATING_MODELS:
        raise ValueError(f"train.grad_accum_steps={accum}: gradient accumulation is implemented for "
                         f"{', '.join(ACCUMULATING_MODELS)}, not {config.model}")
    task = make_task(config, workdir)
    if mode == "train":
        return loop.train(task, config, workdir)
    if mode == "sample":
        _check_sample_options(task, config.model, sample_options)  # before the (slow) restore
    state, _ = loop.restore_latest(task, config, workdir)
    if mode == "evaluate":
        result = task.final_report(state, workdir)
        logging.info("evaluation: %s", json.dumps(result, default=str)[:2000])
        return result
    return task.sample(state, workdir, **sample_options)


def _check_sample_options(task, model: str, sample_options: dict) -> None:
    if not hasattr(task, "sample"):
        raise ValueError(f"model {model!r} is not generative: valid modes for it are train, evaluate")
    accepted = [name for name in inspect.signature(task.sample).parameters if name in SAMPLE_FLAGS]
    unknown = [name for name in sample_options if name not in accepted]
    if unknown:
        raise ValueError(f"model {model!r} does not take --{', --'.join(unknown)} when sampling; "
                         f"it takes: {', '.join('--' + a for a in accepted) or 'no sampling options'}")


def _unknown_config_keys(argv) -> list[str]:
    """Messages for `--config.a.b=` overrides that name no field, each listing the valid keys."""
    config_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if config_arg is None:
        return []
    path, _, variant = config_arg.partition(":")
    spec = importlib.util.spec_from_file_location("_xray_gen_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(variant)
    problems = []
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        node, walked = config, []
        for key in arg[len("--config."):].split("=", 1)[0].split("."):
            if not hasattr(node, "keys") or key not in node:
                valid = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(not a group)"
                where = ".".join(walked) or "the top level"
                problems.append(f"unknown config key {'.'.join(walked + [key])!r}; valid keys under {where}: {valid}")
                break
            node, walked = node[key], walked + [key]
    return problems


def _parse_flags(argv):
    """absl flag parsing, turning a bad --config override into a message instead of a traceback."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError, ValueError) as err:
        problems = _unknown_config_keys(argv) if not isinstance(err, ValueError) else []
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
    values = dict(zip(SAMPLE_FLAGS, (_REPORT.value, _REPORT_FILE.value, _LABELS.value, _LABELS_FILE.value, _IMAGE.value)))
    sample_options = {k: v for k, v in values.items() if v is not None}
    if sample_options and _MODE.value != "sample":
        raise app.UsageError(f"--{', --'.join(sample_options)} only apply to --mode=sample")
    run(_CONFIG.value, _WORKDIR.value, _MODE.value, **sample_options)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
