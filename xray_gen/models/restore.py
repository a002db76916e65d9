"""Trained networks restored from training workdirs of :mod:`xray_gen.main` as the evaluator's
callables (:mod:`xray_gen.evaluation.trained_networks`): the in-domain classifier and the
view-consistency net that `xray_gen.evaluate` scores generated images with. JAX and the model code
are imported only when a workdir is given."""

from __future__ import annotations

import json
import os

import numpy as np

from xray_gen.data.schema import NUM_LABELS
from xray_gen.evaluation.trained_networks import VCN, Classifier


def _workdir_config(workdir: str):
    import ml_collections

    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: not a training workdir of xray_gen.main")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def load_classifier(workdir: str, batch_size: int) -> Classifier:
    """The trained classifier of a workdir (as XRayGAN's final_report restores it)."""
    import jax
    import jax.numpy as jnp

    from xray_gen.evaluation.features import classifier_extractor
    from xray_gen.models.classifier.task import ClassifierTask
    from xray_gen.training import loop

    cc = _workdir_config(workdir)
    task = ClassifierTask(cc)
    state, meta = loop.restore_latest(task, cc, workdir)
    variables = {"params": state.params, "batch_stats": state.batch_stats}

    def apply_fn(v, x):
        logits, feats = task.net.apply(v, x, train=False)
        feats = feats.reshape(feats.shape[0], -1)
        return jnp.concatenate([feats, jax.nn.sigmoid(logits)], axis=-1)

    res = int(cc.data.resolution)
    extractor = classifier_extractor(apply_fn, variables, name="xray_gen_classifier_penultimate",
                                     resize_to=res, batch_size=batch_size)
    dim = int(extractor(np.zeros((1, res, res), np.uint8)).shape[1]) - NUM_LABELS
    validated = task.tracker.get("thresholds") is not None
    source = ("per-class Youden-J thresholds of the classifier's last validation" if validated
              else "0.5 for every class (the classifier was never validated)")
    return Classifier(extractor=extractor, feature_dim=dim, thresholds=task.thresholds(),
                      thresholds_source=source, resolution=res,
                      step=int(jax.device_get(state.step)), workdir=os.path.abspath(workdir),
                      history=list(task.tracker.get("history") or []))


def load_vcn(workdir: str) -> VCN:
    import jax

    from xray_gen.evaluation.features import params_checksum, preprocess
    from xray_gen.models.vcn.task import VCNTask
    from xray_gen.training import loop

    vc = _workdir_config(workdir)
    task = VCNTask(vc)
    state, _ = loop.restore_latest(task, vc, workdir)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    res = int(vc.data.resolution)

    @jax.jit
    def pair_probability(variables, f, l):  # the weights are an argument, not constants of the program
        f, l = preprocess(f, res, False), preprocess(l, res, False)
        return jax.nn.sigmoid(task.net.apply(variables, f, l, train=False))

    return VCN(fn=lambda f, l: pair_probability(variables, f, l), resolution=res, weights_checksum=params_checksum(variables), workdir=os.path.abspath(workdir))
