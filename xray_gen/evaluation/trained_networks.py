"""The trained networks :mod:`xray_gen.evaluate` scores with, restored from training workdirs of
:mod:`xray_gen.main`: the in-domain classifier (:class:`Classifier`: penultimate features for
FID/KID/PRDC and privacy, probabilities with its validated thresholds for AUROC, prevalence and
image-report agreement) and the view-consistency net (:class:`VCN`).

It exists so that the sections see two small callables with their provenance (workdir, step,
checksum) and never the training code; JAX and the model code are imported only when a workdir is
given.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Tuple

import numpy as np

from xray_gen.data.schema import NUM_LABELS


def _workdir_config(workdir: str):
    import ml_collections

    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: not a training workdir of xray_gen.main")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


@dataclasses.dataclass
class Classifier:
    extractor: Any  # FeatureExtractor of features ++ probabilities
    feature_dim: int
    thresholds: np.ndarray
    thresholds_source: str
    resolution: int
    step: int
    workdir: str
    history: list

    def __call__(self, images) -> Tuple[np.ndarray, np.ndarray]:
        """(features, probabilities) of uint8 images."""
        if len(images) == 0:
            return np.zeros((0, self.feature_dim), np.float32), np.zeros((0, NUM_LABELS), np.float32)
        out = self.extractor(images)
        return out[:, :self.feature_dim], out[:, self.feature_dim:]

    def features(self, images) -> np.ndarray:
        return self(images)[0]


def load_classifier(workdir: str, batch_size: int) -> Classifier:
    """The trained classifier of a workdir (as XRayGAN's final_report restores it)."""
    import jax
    import jax.numpy as jnp

    from xray_gen.evaluation.features import classifier_extractor
    from xray_gen.models.classifier import ClassifierTask
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


@dataclasses.dataclass
class VCN:
    fn: Callable
    resolution: int
    weights_checksum: str
    workdir: str

    def __call__(self, frontal, lateral, batch: int = 64) -> np.ndarray:
        out = []
        for i in range(0, len(frontal), batch):
            f, l = frontal[i:i + batch], lateral[i:i + batch]
            m = len(f)
            if m < batch:  # one compiled shape
                f = np.concatenate([f, np.repeat(f[-1:], batch - m, 0)])
                l = np.concatenate([l, np.repeat(l[-1:], batch - m, 0)])
            out.append(np.asarray(self.fn(f, l))[:m])
        return np.concatenate(out) if out else np.zeros(0, np.float32)


def load_vcn(workdir: str) -> VCN:
    import jax

    from xray_gen.evaluation.features import params_checksum, preprocess
    from xray_gen.models.vcn import VCNTask
    from xray_gen.training import loop

    vc = _workdir_config(workdir)
    task = VCNTask(vc)
    state, _ = loop.restore_latest(task, vc, workdir)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    res = int(vc.data.resolution)

    @jax.jit
    def fn(f, l):
        f, l = preprocess(f, res, False), preprocess(l, res, False)
        return jax.nn.sigmoid(task.net.apply(variables, f, l, train=False))

    return VCN(fn=fn, resolution=res, weights_checksum=params_checksum(variables), workdir=os.path.abspath(workdir))
