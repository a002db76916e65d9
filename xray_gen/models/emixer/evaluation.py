"""`--mode=evaluate` for EMIXER on `eval.split` (the real test split by default).

Generated set: `eval.num_generated` image + report pairs, conditioned on the split's label
vectors in order (cycled when more samples than studies are asked for), so generated pair i
has a real counterpart: the study whose labels conditioned it.
- Images: FID (the evaluation classifier's penultimate features) vs the real split, its bootstrap
  interval over the generated set (`eval.bootstrap`), KID.
- Reports (BLEU-1..4, CIDEr-D, ROUGE-L): F on the real images vs their real reports (the
  report generator alone), and generated reports vs the real report of the conditioning study.
- Label agreement: the classifier's AUROC on generated images for the requested labels, the
  report labeler's F1 of generated reports against them, and image-report agreement within
  generated pairs (classifier labels at its Youden thresholds vs the labeler's labels). Each has
  a chance baseline: the same number with the requested labels (or the partner report)
  shuffled across samples, averaged over `CHANCE_PERMUTATIONS` permutations.
- Augmentation (paper Table 1, scaled down; `eval.augmentation_images`, a list of sizes): the
  evaluation classifier vs the same classifier trained on real + N generated images, both on
  the real test split (`xray_gen.models.utility`).
`compare_label_fractions` builds the limited-label table (Table 3) from evaluated runs.
Outputs: eval/emixer_<split>.json (+ protocol) and a self-contained eval/emixer_<split>.html.
"""

from __future__ import annotations

import glob
import json
import math
import os

import jax
import numpy as np
from absl import logging

from xray_gen.data import augment as aug
from xray_gen.data.schema import CHEXPERT_LABELS, binarize
from xray_gen.evaluation.image_fidelity import inception_protocol, load_inception, view_fidelity
from xray_gen.evaluation.metrics import multilabel_auroc
from xray_gen.evaluation.text_metrics import label_agreement, nlg_metrics
from xray_gen.files import atomic_open
from xray_gen.images import to_uint8
from xray_gen.models.emixer.sampling import conditioning, decode_reports, generate_batches, load_classifier

CHANCE_PERMUTATIONS = 20
NUM_CARDS = 12


def _real_outputs(task, state, cls_net, cls_vars):
    """Per study of the eval split: classifier probs/features, F's report ids, labels, image."""
    from xray_gen.data.pipeline import ToModelInputs, make_loader, open_split
    from xray_gen.training.inference import predict
    from xray_gen.training.sharding import mesh_for

    c = task.config
    beam = int(c.sample.get("beam_size", 0))
    loader = make_loader(open_split(c.data, c.eval.split, views=("frontal",)),
                         [ToModelInputs.from_data_config(c.data, views=("frontal",))], c.eval.batch_size,
                         seed=c.seed, shuffle=False, num_epochs=1, drop_remainder=False)

    def fn(st, batch):
        images = aug.to_float(batch["frontal"])
        logits, features = cls_net.apply(st["cls"], images, train=False)
        f = task.F.apply(st["F"], images, beam_size=beam, method=task.F.beam_search) if beam > 1 else \
            task.F.apply(st["F"], images, method=task.F.greedy)
        return {"probs": jax.nn.sigmoid(logits), "features": features, "ids": f["ids"], "mask": f["mask"],
                "labels": batch["labels"], "targets": batch["targets"], "label_mask": batch["label_mask"],
                "images": batch["frontal"]}

    return predict(fn, {"cls": cls_vars, "F": state.gen["F"]}, loader, mesh_for(c), c.eval.batch_size,
                   c.eval.num_examples)


def _real_reports(config, n: int) -> list[str]:
    """The first n reports of the eval split (the loader above keeps the split's order)."""
    from xray_gen.data.pipeline import open_split
    from xray_gen.data.schema import Study

    source = open_split(config.data, config.eval.split, views=("frontal",))
    read = source.report if hasattr(source, "report") else \
        (lambda i: (lambda s: (s.findings, s.impression))(Study.from_example(source[i])))
    return [" ".join(" ".join(read(i)).split()) for i in range(n)]


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


def final_report(task, state, workdir: str, checkpoint_step: int | None = None) -> dict:
    from xray_gen.data.labeler import label_reports
    from xray_gen.evaluation.html_report import read_curves
    from xray_gen.evaluation.protocol import eval_dir as protocol_eval_dir, model_protocol, write_result_json

    c = task.config
    classifier = load_classifier(task)
    if classifier is None:
        raise FileNotFoundError(f"{workdir}: no evaluation classifier checkpoint (classifier_{c.data.resolution}/): "
                                "train the run first (--mode=train trains it before EMIXER)")
    cls_net, cls_vars, thresholds = classifier
    real = _real_outputs(task, state, cls_net, cls_vars)
    n_real = len(real["targets"])
    real_reports = _real_reports(c, n_real)
    f_on_real = decode_reports(task.tokenizer, real["ids"], real["mask"])

    n_gen = int(c.eval.num_generated)
    rows = np.arange(n_gen) % n_real  # the study whose labels condition generated pair i
    requested, requested_mask = real["targets"][rows], real["label_mask"][rows]
    y = conditioning(real["labels"][rows], c.data.uncertain_as)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(c.sample.seed), i))(np.arange(n_gen))
    gen = generate_batches(task, state, y, keys, int(c.eval.batch_size), classifier)
    gen_reports = decode_reports(task.tokenizer, gen["ids"], gen["mask"])
    gen_report_labels = label_reports(gen_reports).astype(np.float64)

    metrics = {"split": c.eval.split, "num_real": n_real, "num_generated": n_gen, "resolution": c.data.resolution,
               "label_fraction": float(c.emixer.label_fraction),
               "feature_extractor": "xray_gen classifier (DenseNet) penultimate features"}
    inception = load_inception(c.eval.get("inception_weights", ""))
    metrics["fidelity"] = {"frontal": view_fidelity(
        gen["features"], real["features"], bootstrap=c.eval.get("bootstrap", 0), seed=c.seed, inception=inception,
        generated_images=gen["images"], reference_images=real["images"])}
    if inception is not None:
        metrics["inception"] = inception_protocol(inception)

    metrics["report_f_on_real"] = {**nlg_metrics(f_on_real, real_reports),
                                   "clinical": _f1(label_agreement(f_on_real, real_reports)),
                                   "n_empty": sum(not t for t in f_on_real)}
    metrics["report_generated"] = {**nlg_metrics(gen_reports, [real_reports[i] for i in rows]),
                                   "n_empty": sum(not t for t in gen_reports)}
    agreement, per_class = label_agreement_metrics(requested, requested_mask, gen["probs"], thresholds,
                                                   gen_report_labels, seed=c.seed)
    metrics["label_agreement"] = agreement
    real_auroc = _auroc(real["targets"], real["probs"], real["label_mask"])
    metrics["classifier_auroc_real"] = real_auroc.pop("macro")
    per_class["classifier AUROC, real images (reference)"] = real_auroc
    eval_dir = protocol_eval_dir(workdir, checkpoint_step)
    sizes = [int(n) for n in c.eval.get("augmentation_images", ())]
    if sizes:
        metrics["augmentation"] = _augmentation(task, state, sizes, classifier, os.path.join(eval_dir, "augmentation"))
        per_class["augmentation: test AUROC per class, real only"] = metrics["augmentation"]["rows"][0]["auroc"]
        for row in metrics["augmentation"]["rows"][1:]:
            per_class[f"augmentation: test AUROC per class, {row['dataset']}"] = row["auroc"]
    else:
        metrics["not_done"] = "augmentation experiment (paper Table 1) skipped: eval.augmentation_images is empty"
    protocol = model_protocol(c, "emixer+classifier_features", cls_vars["params"], n_gen, c.eval.get("bootstrap", 0))
    result = write_result_json(os.path.join(eval_dir, f"emixer_{c.eval.split}.json"), metrics, protocol)
    _write_html(os.path.join(eval_dir, f"emixer_{c.eval.split}.html"), result, c, gen, gen_reports, real, rows,
                real_reports, per_class, read_curves(workdir, tags=["train/*"]))
    return metrics


def _augmentation(task, state, sizes, classifier, out_dir: str) -> dict:
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
        images = generate_batches(task, state, y, keys, int(c.eval.batch_size), classifier)["images"]
        grey = images.mean(-1, keepdims=True) if images.shape[-1] != 1 else images
        return to_uint8(grey), np.where(mask > 0, np.round(targets), np.nan)

    return augmentation_experiment(prepared.config, baseline, generate, sizes, out_dir)


def _write_html(path, result, c, gen, gen_reports, real, rows, real_reports, per_class, curves) -> None:
    """Sample cards (generated image beside the real image whose labels conditioned it, the
    generated report, the requested labels, the real report), metrics, per-class bars, curves."""
    from xray_gen.evaluation.html_report import write_html_report

    samples = []
    for i in range(min(NUM_CARDS, len(gen_reports))):
        r = rows[i]
        asked = [n for n, t, m in zip(CHEXPERT_LABELS, real["targets"][r], real["label_mask"][r]) if m > 0 and t > 0]
        samples.append({"condition": f"generated from {c.eval.split} label vectors",
                        "images": [gen["images"][i], real["images"][r]], "captions": ["generated", f"real study {r}"],
                        "text": f"REQUESTED: {', '.join(asked) or '(no positive label)'}\n"
                                f"GENERATED REPORT: {gen_reports[i] or '(empty)'}\nREAL REPORT: {real_reports[r]}"})
    write_html_report(path, result, title=f"EMIXER evaluation ({c.eval.split})", samples=samples,
                      per_class=per_class, curves=curves)
    logging.info("evaluation report: %s", path)


# ---- limited-label comparison (paper Table 3) -------------------------------------------------

COLUMNS = (  # (path in the metrics, header, format)
    ("fidelity.frontal.fid", "FID ↓", "{:.2f}"),
    ("label_agreement.classifier_auroc_generated", "Image AUROC ↑", "{:.3f}"),
    ("label_agreement.labeler_f1_generated.micro_f1", "Report F1 ↑", "{:.3f}"),
    ("label_agreement.image_report_f1.micro_f1", "Image-report F1 ↑", "{:.3f}"),
    ("report_generated.bleu_4", "BLEU-4 ↑", "{:.3f}"),
    ("report_generated.cider", "CIDEr ↑", "{:.3f}"),
    ("report_f_on_real.bleu_4", "BLEU-4 (F on real) ↑", "{:.3f}"),
)
PROTOCOL_FACTS = ("split", "num_generated", "resolution")


def _get(metrics: dict, path: str):
    for key in path.split("."):
        metrics = metrics.get(key) if isinstance(metrics, dict) else None
    return metrics


def compare_label_fractions(workdirs, split: str = "test", out_dir: str | None = None) -> dict:
    """The limited-label table from evaluated runs (each `eval/emixer_<split>.json`), sorted by
    label fraction: {"rows", "warnings", "markdown"}; with `out_dir`, also written there as
    label_fractions.json / .md. Runs evaluated under different protocols (split, count,
    resolution, classifier weights) are flagged: their numbers are not directly comparable."""
    from xray_gen.evaluation.protocol import read_result_json

    rows, warnings = [], []
    for w in workdirs:
        path = os.path.join(w, "eval", f"emixer_{split}.json")
        if not os.path.isfile(path):
            have = sorted(os.path.basename(p) for p in glob.glob(os.path.join(w, "eval", "emixer_*.json")))
            raise FileNotFoundError(f"{w}: no {path} (has: {', '.join(have) or 'no EMIXER evaluation'}); "
                                    "run --mode=evaluate on it first")
        record = read_result_json(path)
        m = record["metrics"]
        if "label_fraction" not in m:
            raise ValueError(f"{path}: not an EMIXER evaluation (no metrics.label_fraction)")
        rows.append({"workdir": w, "label_fraction": m["label_fraction"],
                     "values": {k: _get(m, k) for k, _, _ in COLUMNS},
                     "protocol": {**{k: m.get(k) for k in PROTOCOL_FACTS},
                                  "weights_checksum": record["protocol"].get("weights_checksum")}})
    rows.sort(key=lambda r: r["label_fraction"])
    for fact in (*PROTOCOL_FACTS, "weights_checksum"):
        values = {r["workdir"]: r["protocol"][fact] for r in rows}
        if len({json.dumps(v) for v in values.values()}) > 1:
            warnings.append(f"protocol differs in {fact}: " + ", ".join(f"{k}: {v}" for k, v in values.items()))
    fmt = lambda v, f: f.format(v) if isinstance(v, (int, float)) and math.isfinite(v) else "–"
    lines = ["| Labels | " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|--:|" + "--:|" * len(COLUMNS)]
    for r in rows:
        cells = [f"{r['label_fraction']:.0%}"] + [fmt(r["values"][k], f) for k, _, f in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"> **Warning:** {w}" for w in warnings]
    report = {"split": split, "rows": rows, "warnings": warnings, "markdown": "\n".join(lines) + "\n"}
    if out_dir:
        with atomic_open(os.path.join(out_dir, "label_fractions.json")) as f:
            json.dump(report, f, indent=2, allow_nan=False)
        with atomic_open(os.path.join(out_dir, "label_fractions.md")) as f:
            f.write(report["markdown"])
    return report


def main(argv=None) -> int:
    """`python -m xray_gen.models.emixer.evaluation --workdirs=W100,W30 --out=DIR`: the Table 3 comparison."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m xray_gen.models.emixer.evaluation",
                                     description="EMIXER limited-label table (paper Table 3) from evaluated workdirs: "
                                                 "writes OUT/label_fractions.json and .md and prints the markdown.")
    parser.add_argument("--workdirs", required=True, help="comma-separated workdirs, each run with --mode=evaluate")
    parser.add_argument("--split", default="test", help="which eval/emixer_<split>.json to read")
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args(argv)
    try:
        report = compare_label_fractions([w for w in args.workdirs.split(",") if w.strip()], args.split, args.out)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report["markdown"], end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
