"""`--mode=sample` with `archive.num_images > 0`: a trained PGGAN run -> a labelled synthetic archive.

Wires the run's EMA generator and a classifier (the DenseNet trained on first start, or the
critic fine-tuned as a classifier) into `archive.export_archive`. The same classifier drives the
optimisation and labels every exported image (its validation Youden thresholds), so an image's
labels and the threshold it was optimised past are on one scale.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from xray_gen.data.pipeline import open_split
from xray_gen.data.schema import CHEXPERT_LABELS, binarize
from xray_gen.training import loop

CLASSIFIERS = ("densenet", "discriminator")


def class_proportions(config) -> np.ndarray:
    """`archive.class_proportions` (JSON {label: weight}) or, by default, the share of positives
    of each class among the training labels (the paper: proportions similar to the source)."""
    text = config.archive.class_proportions
    if text:
        try:
            given = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"archive.class_proportions must be JSON like '{{\"Cardiomegaly\": 0.3}}': {e}") from e
        if not isinstance(given, dict):
            raise ValueError(f"archive.class_proportions must be a JSON object, got {text!r}")
        unknown = [k for k in given if k not in CHEXPERT_LABELS]
        if unknown:
            raise ValueError(f"archive.class_proportions: unknown label(s) {unknown}; valid: {', '.join(CHEXPERT_LABELS)}")
        out = np.array([float(given.get(name, 0.0)) for name in CHEXPERT_LABELS])
        if np.any(out < 0) or out.sum() <= 0:
            raise ValueError(f"archive.class_proportions must be non-negative with a positive sum, got {text!r}")
        return out
    source = open_split(config.data, "train", views=("frontal",))
    n = min(len(source), 5_000)
    labels = np.stack([np.asarray(source[i]["labels"], np.float32) for i in range(n)])
    targets, mask = binarize(labels, config.data.uncertain_as)
    return (targets * mask).sum(0)


def _classifier(task, state):
    """(logits function of float images, thresholds) of the classifier named by archive.classifier."""
    name = task.config.archive.classifier
    if name not in CLASSIFIERS:
        raise ValueError(f"archive.classifier must be one of {', '.join(CLASSIFIERS)}, got {name!r}")
    if name == "densenet":
        cls_task, cls_state = task.classifier().load()
    else:
        from xray_gen.models.pggan.critic_classifier import critic_classifier

        cls_task, cc, directory = critic_classifier(task, jax.device_get(state.d_params))
        logging.info("fine-tuning the critic as a classifier in %s", directory)
        loop.train(cls_task, cc, directory)  # resumable; a finished run only restores
        cls_state, _ = loop.restore_latest(cls_task, cc, directory)
    variables = {"params": cls_state.params, "batch_stats": cls_state.batch_stats}
    net = cls_task.net

    def logits_fn(v, images):
        grey = jnp.mean(images, axis=-1, keepdims=True) if images.shape[-1] != 1 else images
        return net.apply(v, grey, train=False)[0]

    return jax.tree_util.Partial(logits_fn, variables), cls_task.thresholds()


def export(task, state, workdir: str) -> dict:
    from xray_gen.models.pggan.archive import export_archive

    c, a = task.config, task.config.archive
    out_dir = a.out_dir or os.path.join(workdir, "archive")
    logits_fn, thresholds = _classifier(task, state)
    generate_fn = jax.tree_util.Partial(lambda g, z: task.generate(g, z), state.g_ema)
    proportions = class_proportions(c)
    logging.info("archive: %d images into %s, class proportions %s", a.num_images, out_dir,
                 dict(zip(CHEXPERT_LABELS, np.round(proportions / proportions.sum(), 3).tolist())))
    return export_archive(
        out_dir, generate_fn=generate_fn, optimise_logits_fn=logits_fn, label_fn=logits_fn,
        thresholds=thresholds, latent_dim=c.pggan.latent_dim, num_images=a.num_images,
        class_proportions=proportions, seed=a.seed, shard_patients=a.shard_patients,
        series_min=a.series_min, series_max=a.series_max, neighbour_std=a.neighbour_std,
        truncation=a.truncation, max_steps=a.max_steps, learning_rate=a.learning_rate,
        max_attempts=a.max_attempts, batch_size=a.batch_size,
        extra_settings={"checkpoint_step": int(jax.device_get(state.step)), "classifier": a.classifier})
