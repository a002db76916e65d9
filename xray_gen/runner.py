"""What one command does with a config: build the model's task, train the runs it depends on, then
train, evaluate or sample it. The library entry point behind the CLI (tests and notebooks call
`run` too).

A task declares its prerequisites as data (`Task.prerequisites()`: name, config, directory): the
runner trains each as a run of its own (resumable; a finished one is only restored; their own
prerequisites first, each directory once per call) and records each one's config and a checksum
of its weights in the dependent run's `prerequisites.json`, so a result names exactly which frozen
networks it used. Tasks never train other runs themselves.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os

import jax
from absl import logging

from xray_gen.files import atomic_open

MODES = ("train", "evaluate", "sample")
# config.model -> "module:Task class"; imported only when chosen.
MODELS = {
    "classifier": "xray_gen.models.classifier.task:ClassifierTask",
    "vcn": "xray_gen.models.vcn.task:VCNTask",
    "xraygan": "xray_gen.models.xraygan.task:XRayGANTask",
    "pggan": "xray_gen.models.pggan.task:PGGANTask",
    "emixer": "xray_gen.models.emixer.task:EmixerTask",
    "cxr_irgen": "xray_gen.models.cxr_irgen.task:CxrIRGenTask",
    # CXR-IRGen's stages: prerequisite runs of cxr_irgen (stage configs are made by the task)
    "cxr_irgen.autoencoder": "xray_gen.models.cxr_irgen.stages:AutoencoderTask",
    "cxr_irgen.clip": "xray_gen.models.cxr_irgen.stages:ClipTask",
    "cxr_irgen.language": "xray_gen.models.cxr_irgen.stages:TextAutoencoderTask",
    "cxr_irgen.prior": "xray_gen.models.cxr_irgen.stages:PriorTask",
}
SAMPLE_OPTIONS = ("report", "report_file", "labels", "labels_file", "image")
PREREQUISITES_FILE = "prerequisites.json"


def make_task(config, workdir: str | None = None):
    """The Task object for `config.model`; unknown names fail listing the valid ones."""
    from xray_gen.data.pipeline import SOURCES

    if config.model not in MODELS:
        raise ValueError(f"unknown model {config.model!r}; valid models: {', '.join(MODELS)}")
    if config.data.source not in SOURCES:
        raise ValueError(f"unknown data.source {config.data.source!r}; valid: {', '.join(SOURCES)}")
    module_name, cls_name = MODELS[config.model].split(":")
    return getattr(importlib.import_module(module_name), cls_name)(config, workdir)


def train_prerequisites(task, _done: dict | None = None) -> dict:
    """Trains (or restores, when finished) every run `task` depends on, depth first, and records
    them in the task's workdir; returns {name: record}."""
    from xray_gen.evaluation.features import params_checksum
    from xray_gen.training import loop
    from xray_gen.training.checkpoint import CheckpointMismatchError

    done = {} if _done is None else _done
    records = {}
    for p in task.prerequisites():
        key = os.path.abspath(p.directory)
        if key not in done:
            sub = make_task(p.config, p.directory)
            train_prerequisites(sub, done)
            logging.info("%s: prerequisite %s in %s", task.name, p.name, p.directory)
            try:
                state = loop.train(sub, p.config, p.directory)
            except CheckpointMismatchError as e:
                raise task.prerequisite_mismatch(p, e) from e
            done[key] = {"directory": key, "model": p.config.model, "step": int(jax.device_get(state.step)),
                         "weights_sha256": params_checksum(jax.device_get(getattr(state, "params", state))),
                         "config": json.loads(p.config.to_json_best_effort())}
        records[p.name] = done[key]
    if records and task.workdir and jax.process_index() == 0:
        os.makedirs(task.workdir, exist_ok=True)
        with atomic_open(os.path.join(task.workdir, PREREQUISITES_FILE)) as f:
            json.dump(records, f, indent=1, sort_keys=True)
    return records


def run(config, workdir: str, mode: str, **sample_options):
    """`train` (prerequisites first), `evaluate` or `sample` the model of `config` in `workdir`."""
    from xray_gen.training import loop

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    task = make_task(config, workdir)
    if mode == "train":
        train_prerequisites(task)
        return loop.train(task, config, workdir)
    if mode == "sample":
        check_sample_options(task, config.model, sample_options)  # before the (slow) restore
    state, _ = loop.restore_latest(task, config, workdir)
    if mode == "evaluate":
        if not hasattr(task, "final_report"):
            raise ValueError(f"model {config.model!r} has no evaluation")
        result = task.final_report(state, workdir)
        logging.info("evaluation: %s", json.dumps(result, default=str)[:2000])
        return result
    return task.sample(state, workdir, **sample_options)


def check_sample_options(task, model: str, sample_options: dict) -> None:
    """The model samples at all, and takes every option given (a clear error naming the valid ones)."""
    if not hasattr(task, "sample"):
        raise ValueError(f"model {model!r} is not generative: valid modes for it are train, evaluate")
    accepted = [name for name in inspect.signature(task.sample).parameters if name in SAMPLE_OPTIONS]
    unknown = [name for name in sample_options if name not in accepted]
    if unknown:
        raise ValueError(f"model {model!r} does not take --{', --'.join(unknown)} when sampling; "
                         f"it takes: {', '.join('--' + a for a in accepted) or 'no sampling options'}")
