"""EMIXER's `--mode=evaluate` on `eval.split` (the real test split by default).

Generated set: `eval.num_generated` image + report pairs, conditioned on the split's label
vectors in order (cycled when more samples than studies are asked for), so generated pair i has a
real counterpart: the study whose labels conditioned it (its id in metadata.csv). The folder is
scored by the one evaluator (`xray_gen.evaluation.evaluator`): FID/KID and the rest of `fidelity`,
`clinical` (the classifier's AUROC of the generated images for the requested labels), `reports`
(NLG against the conditioning study's report, the labeler's F1 against the requested labels),
`pairs` (image-report agreement), `privacy`. EMIXER's own sections:
- `label_agreement`: those three agreements beside their chance baselines (the requested labels,
  or the partner report, shuffled across samples; mean of `CHANCE_PERMUTATIONS` permutations);
- `report_f_on_real`: F alone on the real images vs their reports;
- `augmentation` (paper Table 1, scaled down; `eval.augmentation_images`, a list of sizes): the
  evaluation classifier vs the same classifier trained on real + N generated images, both on the
  real test split (`xray_gen.models.utility`).
Outputs: eval/emixer_<split>.json (+ protocol), eval/emixer_<split>.html and the generated folder
eval/emixer_<split>_generated/. Table 3 (label fractions) is built from these files by tables.py.
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np

from xray_gen.data import augment as aug
from xray_gen.data.schema import CHEXPERT_LABELS, binarize
from xray_gen.evaluation.metrics import multilabel_auroc
from xray_gen.evaluation.text_metrics import label_agreement, nlg_metrics
from xray_gen.images import to_uint8
from xray_gen.models.emixer import steps
from xray_gen.models.emixer.generate import conditioning, decode_reports, generate_batches

CHANCE_PERMUTATIONS = 20


def _real_split(task, state):
    """Per study of the eval split (first `eval.num_examples`): F's report ids of the real image and
    the labels; the study ids and report texts."""
    from xray_gen.data.pipeline import ToModelInputs, make_loader, open_split
    from xray_gen.evaluation.real_splits import study_text
    from xray_gen.training.inference import predict
    from xray_gen.training.sharding import mesh_for

    c = task.config
    beam = int(c.sample.get("beam_size", 0))
    source = open_split(c.data, c.eval.split, views=("frontal",))
    loader = make_loader(source, [ToModelInputs.from_data_config(c.data, views=("frontal",))], c.eval.batch_size,
                         seed=c.seed, shuffle=False, num_epochs=1, drop_remainder=False)

    def fn(f_vars, batch):
        f = steps.describe(task.nets, f_vars, aug.to_float(batch["frontal"]), beam)
        return {"ids": f["ids"], "mask": f["mask"], "labels": batch["labels"]}

    out = predict(fn, state.gen["F"], loader, mesh_for(c), c.eval.batch_size, c.eval.num_examples)
    examples = [source[i] for i in range(len(out["labels"]))]  # the loader kept the split's order
    out["study_ids"] = [str(ex.get("study_id", i)) for i, ex in enumerate(examples)]
    out["reports"] = [" ".join(study_text(ex).split()) for ex in examples]
    return out


def _as_reference(targets: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Binarised requested labels as a labeler-style array (1/0, NaN where not used)."""
    return np.where(mask > 0, targets, np.nan)


def _auroc(targets, probs, mask) -> dict:
    return multilabel_auroc(targets, probs, mask > 0, class_names=CHEXPERT_LABELS)


def _f1(agreement: dict) -> dict:
    return {"micro_f1": agreement["micro"]["f1"], "macro_f1": agreement["macro"]["f1"]}


def _mean_defined(values) -> float | None:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else None


def label_agreement_metrics(requested: np.ndarray, requested_mask: np.ndarray, probs: np.ndarray,
                            thresholds: np.ndarray, report_labels: np.ndarray, seed: int = 0,
                            permutations: int = CHANCE_PERMUTATIONS) -> tuple[dict, dict]:
    """(metrics, per-class values) of the three agreements and their shuffled-label baselines.

    requested/requested_mask: the binarised (N, 14) conditioning labels; probs: the classifier's
    probabilities on the generated images; report_labels: the labeler's labels of the generated
    reports. A value that is undefined (e.g. no requested positive of any class) is None, and
    `notes` says why.
    """
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(len(requested)) for _ in range(permutations)]
    reference = _as_reference(requested, requested_mask)
    image_labels = (probs >= thresholds[None]).astype(np.float64)  # a NaN threshold: never positive

    auroc = _auroc(requested, probs, requested_mask)
    report_vs = label_agreement(report_labels, reference)
    pair = label_agreement(report_labels, image_labels)
    chance_auroc = [_auroc(requested[p], probs, requested_mask[p])["macro"] for p in perms]
    chance_report = [_f1(label_agreement(report_labels, reference[p])) for p in perms]
    chance_pair = [_f1(label_agreement(report_labels, image_labels[p])) for p in perms]
    mean_f1 = lambda chance: {k: _mean_defined([c[k] for c in chance]) for k in ("micro_f1", "macro_f1")}
    metrics = {
        "classifier_auroc_generated": auroc["macro"],
        "classifier_auroc_generated_chance": _mean_defined(chance_auroc),
        "labeler_f1_generated": _f1(report_vs),
        "labeler_f1_generated_chance": mean_f1(chance_report),
        "image_report_f1": _f1(pair),
        "image_report_f1_chance": mean_f1(chance_pair),
        "image_positive_rate": float(image_labels.mean()),
        "report_positive_rate": float(np.mean((report_labels == 1.0) | (report_labels == -1.0))),
        "chance_protocol": f"requested labels (or the paired image's labels) permuted across samples, "
                           f"mean of {permutations} permutations (seed {seed})",
    }
    notes = []
    if not math.isfinite(auroc["macro"]):
        notes.append("classifier AUROC undefined: no class has both requested positives and negatives")
    if report_vs["micro"]["f1"] is None:
        notes.append("labeler F1 undefined: no requested positive and no positive mention in the generated reports")
    if pair["micro"]["f1"] is None:
        notes.append("image-report F1 undefined: neither the classifier nor the labeler found a positive")
    metrics["notes"] = notes
    per_class = {
        "classifier AUROC, generated images vs requested labels": {k: v for k, v in auroc.items() if k != "macro"},
        "labeler F1, generated reports vs requested labels": {k: v["f1"] for k, v in report_vs["per_class"].items()},
    }
    return metrics, per_class


def label_agreement_section(uncertain_as: float):
    """The evaluator section `label_agreement` (reads the generated frontals, their requested labels
    and reports, and the classifier's cached probabilities from the evaluator's context)."""
    from xray_gen.data.labeler import label_reports
    from xray_gen.evaluation.generated_folder import strip_headers

    def section(ctx) -> dict:
        if ctx.classifier is None:
            return {"status": "skipped: no classifier"}
        rows = ctx.gen.rows("frontal")
        targets, mask = binarize(ctx.gen.labels[rows], uncertain_as)
        _, probs = ctx.classified("gen", "frontal")
        report_labels = label_reports([strip_headers(ctx.gen.reports[r]) for r in rows]).astype(np.float64)
        metrics, per_class = label_agreement_metrics(targets, mask, probs, ctx.classifier.thresholds, report_labels,
                                                     seed=ctx.seed)
        ctx.per_class.update(per_class)
        return metrics

    return section


def final_report(task, state, workdir: str, checkpoint_step: int | None = None) -> dict:
    from xray_gen.evaluation import evaluator
    from xray_gen.evaluation.generated_folder import write_generated
    from xray_gen.evaluation.html_report import read_curves
    from xray_gen.evaluation.image_fidelity import load_inception
    from xray_gen.evaluation.protocol import eval_dir
    from xray_gen.models import restore

    c = task.config
    prepared = task.classifier()
    try:
        classifier = restore.load_classifier(prepared.directory, c.eval.batch_size)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{workdir}: no evaluation classifier ({e}): train the run first "
                                "(--mode=train trains it before EMIXER)") from e
    real = _real_split(task, state)
    n_real = len(real["labels"])
    f_on_real = decode_reports(task.tokenizer, real["ids"], real["mask"])

    n_gen = int(c.eval.num_generated)
    rows = np.arange(n_gen) % n_real  # the study whose labels condition generated pair i
    y = conditioning(real["labels"][rows], c.data.uncertain_as)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(c.sample.seed), i))(np.arange(n_gen))
    gen = generate_batches(task, state, y, keys, int(c.eval.batch_size))
    gen_reports = decode_reports(task.tokenizer, gen["ids"], gen["mask"])
    images = gen["images"].mean(-1, keepdims=True) if gen["images"].shape[-1] != 1 else gen["images"]
    name = f"emixer_{c.eval.split}"
    out_dir = eval_dir(workdir, checkpoint_step)
    generated = os.path.join(out_dir, f"{name}_generated")
    write_generated(generated, [{"image": images[i], "view": "frontal", "id": real["study_ids"][r],
                                 "report": gen_reports[i], "labels": real["labels"][r]} for i, r in enumerate(rows)])

    extra = {"split": c.eval.split, "num_real": n_real, "num_generated": n_gen, "resolution": c.data.resolution,
             "label_fraction": float(c.emixer.label_fraction),
             "report_f_on_real": {**nlg_metrics(f_on_real, real["reports"]),
                                  "clinical": _f1(label_agreement(f_on_real, real["reports"])),
                                  "n_empty": sum(not t for t in f_on_real)}}
    sizes = [int(n) for n in c.eval.get("augmentation_images", ())]
    if sizes:
        extra["augmentation"] = _augmentation(task, state, sizes, os.path.join(out_dir, "augmentation"))
    else:
        extra["not_done"] = "augmentation experiment (paper Table 1) skipped: eval.augmentation_images is empty"
    scorers = evaluator.Scorers(classifier=classifier,
                                inception=load_inception(c.eval.get("inception_weights", "")))
    curves = read_curves(workdir, tags=["train/*"])
    record = evaluator.evaluate(generated, f"{c.data.source}/{c.eval.split}", out_dir, c.data, scorers,
                                evaluator.settings_from_config(c), name=name, extra_metrics=extra,
                                extra_sections=[("label_agreement", label_agreement_section(c.data.uncertain_as))],
                                curves=curves, title=f"EMIXER evaluation ({c.eval.split})")
    return record["metrics"]


def _augmentation(task, state, sizes, out_dir: str) -> dict:
    """Paper Table 1 scaled down (`xray_gen.models.utility`): the evaluation classifier vs
    the same classifier trained on real + N generated images, conditioned on training label vectors."""
    from xray_gen.data.pipeline import open_split, source_labels
    from xray_gen.models.utility import augmentation_experiment

    c = task.config
    train_labels = source_labels(open_split(c.data, "train", views=("frontal",)))
    prepared = task.classifier()
    _, baseline = prepared.load()

    def generate(n):
        raw = train_labels[np.arange(n) % len(train_labels)]
        y = conditioning(raw, c.data.uncertain_as)
        targets, mask = binarize(raw, c.data.uncertain_as)
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(c.sample.seed + 1), i))(np.arange(n))
        images = generate_batches(task, state, y, keys, int(c.eval.batch_size))["images"]
        grey = images.mean(-1, keepdims=True) if images.shape[-1] != 1 else images
        return to_uint8(grey), np.where(mask > 0, np.round(targets), np.nan)

    return augmentation_experiment(prepared.config, baseline, generate, sizes, out_dir)
