"""`--mode=evaluate` for PGGAN: the paper's Results on `eval.split` (the real test split by default).

Generated set: `eval.num_generated` uncurated EMA samples (z ~ N(0, 1)), written as a folder and
scored by the one evaluator (`xray_gen.evaluation.evaluator`): `fidelity` (FID/KID in the in-domain
classifier's features vs the real split, bootstrap interval), `clinical` (label prevalence: the
classifier at its Youden thresholds on generated *and* real images, so a rare class is not
inflated by comparing predicted with annotated labels; the annotated real prevalence beside it),
`privacy`. PGGAN's own section `pggan_tables`:
- Table 1: FID of each class vs No Finding among real images, the "stratified" floor (two
  patient-disjoint halves of the real split) and the generated set vs the real split ("Synthetic");
- label prevalence, real vs generated (both labelled by the classifier), bootstrap 95% intervals;
  and real vs the archive's labels when an archive exists;
- Table 2 (when WORKDIR/archive or archive.out_dir holds an exported archive): GAN-train, the same
  classifier config trained only on the archive and tested on the real test split, beside the
  classifier trained on real data.
Outputs: eval/pggan_<split>.json (+ protocol), eval/pggan_<split>.html, eval/tables.{json,md},
eval/prevalence.png and the generated folder eval/pggan_<split>_generated/.
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging

from xray_gen.data.schema import CHEXPERT_LABELS
from xray_gen.evaluation import fid, synthetic
from xray_gen.evaluation.metrics import multilabel_auroc
from xray_gen.models import utility


def _archive_dir(task, workdir: str) -> str | None:
    directory = task.config.archive.out_dir or os.path.join(workdir, "archive")
    return directory if os.path.isfile(os.path.join(directory, "labels.csv")) else None


def tables_section(task, workdir: str, out_dir: str):
    """The evaluator section `pggan_tables` (reads the classifier's cached outputs on the generated
    and real images from the evaluator's context; writes tables.{json,md} and prevalence.png)."""
    from xray_gen.evaluation.sections.context import pos_mask

    c = task.config

    def section(ctx) -> dict:
        if ctx.classifier is None:
            return {"status": "skipped: no classifier"}
        gen_features, gen_probs = ctx.classified("gen", "frontal")
        real_features, real_probs = ctx.classified("ref", "frontal")
        thresholds = ctx.classifier.thresholds
        targets, valid = pos_mask(ctx.ref.labels[ctx.ref.index["frontal"]], c.data.uncertain_as)
        # CheXpert's convention, as the classifier trains: not mentioned = negative; NaN only where
        # uncertain labels are ignored (data.uncertain_as = NaN).
        real_labels = np.where(valid, targets, np.nan).astype(np.float32)
        patients = np.asarray([ctx.ref.patients[i] for i in ctx.ref.index["frontal"]])
        out = {}
        try:
            stratified = synthetic.stratified_split_fid(real_features, real_labels, patients, seed=c.seed)
            out["fid_stratified_real_halves"] = stratified["fid"]
        except ValueError as e:
            stratified = None
            out["fid_stratified_real_halves"] = f"skipped: {e}"
        try:
            per_class = synthetic.per_class_fid(real_features, real_labels, uncertain_as=c.data.uncertain_as)
        except ValueError as e:
            per_class = {}
            logging.warning("per-class FID skipped: %s", e)
        tables = {"Table 1: FID per split (real classes vs No Finding; generated vs real)": synthetic.fid_table(
            per_class, stratified, extra={"Synthetic": fid.fid_between(gen_features, real_features)})}
        predicted = lambda probs: (probs >= thresholds[None]).astype(np.float32)
        prevalence = synthetic.prevalence_table(predicted(real_probs), predicted(gen_probs), seed=c.seed)
        tables["Label prevalence: real vs uncurated generated (both labelled by the classifier)"] = prevalence
        plot_table = prevalence
        real_auroc = multilabel_auroc(targets, real_probs, valid, class_names=CHEXPERT_LABELS)
        out["classifier_auroc_real"] = real_auroc["macro"]
        archive = _archive_dir(task, workdir)
        gan = None
        if archive:
            from xray_gen.data.archive_source import read_archive_index

            index = read_archive_index(archive)
            plot_table = synthetic.prevalence_table(real_labels, index["labels"], seed=c.seed,
                                                    uncertain_as=c.data.uncertain_as)
            tables["Label prevalence: real (annotated) vs archive"] = plot_table
            if c.eval.split != "test":
                logging.warning("GAN-train tests on the real test split, not eval.split=%s", c.eval.split)
            try:
                gan = utility.gan_train(archive, c.data, task.classifier().config, workdir)
            except ValueError as e:  # e.g. too few synthetic patients for a validation split
                out["gan_train"] = {"skipped": str(e)}
                logging.warning("GAN-train skipped: %s", e)
        if gan is not None:
            out["gan_train"] = {"macro_auroc_generated": gan["macro_auroc"], "macro_auroc_ci95": gan["macro_auroc_ci95"],
                                "archive": gan["archive"], "train_steps": gan["train_steps"]}
            tables["Table 2: GAN-train test AUROC (classifier trained on the archive vs on real data)"] = (
                synthetic.utility_table(real_auroc, gan["auroc"]))
        elif not archive:
            logging.info("no archive found: export one with --mode=sample --config.archive.num_images=N for Table 2")
        os.makedirs(out_dir, exist_ok=True)
        synthetic.write_tables(out_dir, tables)
        synthetic.prevalence_plot(os.path.join(out_dir, "prevalence.png"), plot_table)
        ctx.per_class["FID vs No Finding (real images)"] = {k: v["fid"] for k, v in per_class.items()
                                                           if v["fid"] is not None}
        for who in ("real", "generated"):
            ctx.per_class[f"prevalence, {who}"] = {k: (v[who]["prevalence"], *v[who]["ci95"])
                                                  for k, v in plot_table["per_class"].items()}
        return out

    return section


def final_report(task, state, workdir: str, checkpoint_step: int | None = None) -> dict:
    from xray_gen.evaluation import evaluator
    from xray_gen.evaluation.generated_folder import write_generated
    from xray_gen.evaluation.html_report import read_curves
    from xray_gen.evaluation.image_fidelity import load_inception
    from xray_gen.evaluation.protocol import eval_dir
    from xray_gen.models import restore

    c = task.config
    n_gen = int(c.eval.num_generated)
    images = task.sample_images(state, n_gen, c.sample.seed, c.eval.batch_size)
    grey = images.mean(-1, keepdims=True) if images.shape[-1] != 1 else images
    name = f"pggan_{c.eval.split}"
    out_dir = eval_dir(workdir, checkpoint_step)
    generated = os.path.join(out_dir, f"{name}_generated")
    write_generated(generated, [{"image": image, "view": "frontal"} for image in grey])
    scorers = evaluator.Scorers(classifier=restore.load_classifier(task.classifier().directory, c.eval.batch_size),
                                inception=load_inception(c.eval.get("inception_weights", "")))
    record = evaluator.evaluate(generated, f"{c.data.source}/{c.eval.split}", out_dir, c.data, scorers,
                                evaluator.settings_from_config(c), name=name,
                                extra_metrics={"split": c.eval.split, "num_generated": n_gen,
                                               "resolution": c.data.resolution},
                                extra_sections=[("pggan_tables", tables_section(task, workdir, out_dir))],
                                curves=read_curves(workdir, tags=["train/*"]),
                                title=f"PGGAN evaluation ({c.eval.split})")
    return record["metrics"]
