"""`--mode=evaluate` for PGGAN: the paper's Results on `eval.split` (the real test split by default).

- Table 1: FID (in-domain classifier features) of each class vs No Finding among real images, the
  "stratified" floor (two patient-disjoint halves of the real split) and the generated set vs the
  real split ("Synthetic", with a bootstrap interval over the generated set).
- Label prevalence, real vs generated (uncurated EMA samples labelled by the classifier at its
  Youden thresholds; and the archive's labels when an archive exists), bootstrap 95% intervals.
- Table 2 (when WORKDIR/archive or archive.out_dir holds an exported archive): GAN-train, the same
  classifier config trained only on the archive and tested on the real test split, beside the
  classifier trained on real data.
Outputs: eval/pggan_<split>.json (+ protocol), eval/tables.{json,md}, eval/prevalence.png and a
self-contained eval/pggan_<split>.html.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging

from xray_gen.data import augment as aug
from xray_gen.data.schema import CHEXPERT_LABELS
from xray_gen.evaluation import synthetic
from xray_gen.evaluation.image_fidelity import inception_protocol, load_inception, view_fidelity
from xray_gen.evaluation.metrics import multilabel_auroc
from xray_gen.models import utility
from xray_gen.training.inference import predict
from xray_gen.training.sharding import mesh_for


def _real_outputs(cls_task, cls_state, config):
    """Classifier features/probabilities, labels, patient ids and images of the real eval split."""
    net, variables = cls_task.net, {"params": cls_state.params, "batch_stats": cls_state.batch_stats}

    def fn(variables, batch):
        logits, features = net.apply(variables, aug.to_float(batch["frontal"]), train=False)
        return {"probs": jax.nn.sigmoid(logits), "features": features, "targets": batch["targets"],
                "mask": batch["label_mask"], "patient": batch["patient"], "images": batch["frontal"]}

    loader = cls_task.eval_loader(config.eval.split)
    return predict(fn, variables, loader, mesh_for(config), config.eval.batch_size, config.eval.num_examples)


def _generated_outputs(task, state, cls_task, cls_state, n: int, seed: int, batch_size: int):
    """n uncurated EMA samples and the classifier's features/probabilities on them."""
    net, variables = cls_task.net, {"params": cls_state.params, "batch_stats": cls_state.batch_stats}

    @jax.jit
    def classify(variables, images):
        grey = images.mean(axis=-1, keepdims=True) if images.shape[-1] != 1 else images
        logits, features = net.apply(variables, grey, train=False)
        return jax.nn.sigmoid(logits), features

    images = task.sample_images(state, n, seed, batch_size)
    probs, features = [], []
    for i in range(0, n, batch_size):
        chunk = images[i:i + batch_size]
        pad = batch_size - len(chunk)  # one compiled shape
        p, f = jax.device_get(classify(variables, np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)]) if pad else chunk))
        probs.append(p[:len(chunk)])
        features.append(f[:len(chunk)])
    return images, np.concatenate(probs), np.concatenate(features)


def _archive_dir(task, workdir: str) -> str | None:
    directory = task.config.archive.out_dir or os.path.join(workdir, "archive")
    return directory if os.path.isfile(os.path.join(directory, "labels.csv")) else None


def final_report(task, state, workdir: str, checkpoint_step: int | None = None) -> dict:
    from xray_gen.evaluation.html_report import read_curves, write_html_report
    from xray_gen.evaluation.protocol import eval_dir as protocol_eval_dir, model_protocol, write_result_json

    c = task.config
    prepared = task.classifier()
    cls_task, cls_state = prepared.load()
    thresholds = cls_task.thresholds()
    real = _real_outputs(cls_task, cls_state, c)
    n_gen = int(c.eval.num_generated)
    images, gen_probs, gen_features = _generated_outputs(task, state, cls_task, cls_state, n_gen, c.sample.seed,
                                                         c.eval.batch_size)
    gen_labels = (gen_probs >= thresholds[None]).astype(np.float32)
    n_real = len(real["features"])
    # CheXpert's convention, as the classifier trains: not mentioned = negative; NaN only where
    # uncertain labels are ignored (data.uncertain_as = NaN).
    real_labels = np.where(real["mask"] > 0, real["targets"], np.nan).astype(np.float32)
    eval_dir = protocol_eval_dir(workdir, checkpoint_step)
    metrics = {"split": c.eval.split, "num_real": n_real, "num_generated": n_gen, "resolution": c.data.resolution,
               "feature_extractor": "xray_gen classifier (DenseNet) penultimate features"}

    inception = load_inception(c.eval.get("inception_weights", ""))
    metrics["fidelity"] = {"frontal": view_fidelity(
        gen_features, real["features"], bootstrap=c.eval.get("bootstrap", 0), seed=c.seed, inception=inception,
        generated_images=images, reference_images=real["images"])}
    if inception is not None:
        metrics["inception"] = inception_protocol(inception)
    try:
        stratified = synthetic.stratified_split_fid(real["features"], real_labels, real["patient"], seed=c.seed)
        metrics["fid_stratified_real_halves"] = stratified["fid"]
    except ValueError as e:
        stratified = None
        logging.warning("stratified-split FID skipped: %s", e)
    try:
        per_class = synthetic.per_class_fid(real["features"], real_labels, uncertain_as=c.data.uncertain_as)
    except ValueError as e:
        per_class = {}
        logging.warning("per-class FID skipped: %s", e)
    tables = {"Table 1: FID per split (real classes vs No Finding; generated vs real)": synthetic.fid_table(
        per_class, stratified, extra={"Synthetic": metrics["fidelity"]["frontal"].get("fid")})}

    prevalence = synthetic.prevalence_table(real_labels, gen_labels, seed=c.seed, uncertain_as=c.data.uncertain_as)
    tables["Label prevalence: real vs uncurated generated"] = prevalence
    plot_table = prevalence
    real_auroc = multilabel_auroc(real["targets"], real["probs"], real["mask"] > 0, class_names=CHEXPERT_LABELS)
    metrics["classifier_auroc_real"] = real_auroc["macro"]
    archive = _archive_dir(task, workdir)
    if archive:
        from xray_gen.data.archive_source import read_archive_index

        index = read_archive_index(archive)
        plot_table = synthetic.prevalence_table(real_labels, index["labels"], seed=c.seed,
                                                uncertain_as=c.data.uncertain_as)
        tables["Label prevalence: real vs archive"] = plot_table
        if c.eval.split != "test":
            logging.warning("GAN-train tests on the real test split, not eval.split=%s", c.eval.split)
        try:
            gan = utility.gan_train(archive, c.data, prepared.config, workdir)
        except ValueError as e:  # e.g. too few synthetic patients for a validation split
            gan = None
            metrics["gan_train"] = {"skipped": str(e)}
            logging.warning("GAN-train skipped: %s", e)
    if archive and gan is not None:
        metrics["gan_train"] = {"macro_auroc_generated": gan["macro_auroc"], "macro_auroc_ci95": gan["macro_auroc_ci95"],
                                "archive": gan["archive"], "train_steps": gan["train_steps"]}
        tables["Table 2: GAN-train test AUROC (classifier trained on the archive vs on real data)"] = (
            synthetic.utility_table(real_auroc, gan["auroc"]))
    else:
        logging.info("no archive found: export one with --mode=sample --config.archive.num_images=N for Table 2")
    os.makedirs(eval_dir, exist_ok=True)
    synthetic.write_tables(eval_dir, tables)
    synthetic.prevalence_plot(os.path.join(eval_dir, "prevalence.png"), plot_table)

    protocol = model_protocol(c, "pggan+classifier_features", cls_state.params, n_gen, c.eval.get("bootstrap", 0))
    result = write_result_json(os.path.join(eval_dir, f"pggan_{c.eval.split}.json"), metrics, protocol)
    per_class_plots = {
        "FID vs No Finding (real images)": {k: v["fid"] for k, v in per_class.items() if v["fid"] is not None},
        **{f"prevalence, {who}": {k: (v[who]["prevalence"], *v[who]["ci95"]) for k, v in plot_table["per_class"].items()}
           for who in ("real", "generated")},
    }
    samples = [{"condition": "uncurated EMA samples", "images": list(images[i:i + 4]), "captions": [""] * 4, "text": ""}
               for i in range(0, min(len(images), 16), 4)]
    samples += [{"condition": "real images", "images": list(real["images"][i:i + 4]),
                 "captions": [""] * 4, "text": ""} for i in range(0, min(n_real, 8), 4)]
    write_html_report(os.path.join(eval_dir, f"pggan_{c.eval.split}.html"), result, title=f"PGGAN evaluation ({c.eval.split})",
                      samples=samples, per_class=per_class_plots, curves=read_curves(workdir, tags=["train/*"]))
    return metrics
