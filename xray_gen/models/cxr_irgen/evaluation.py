"""`--mode=evaluate` for CXR-IRGen on `eval.split` (the test split by default), the paper's tables
scaled down:

- Conditioning set: the first `eval.num_examples` studies of the split; generated pair i is
  conditioned on study i's labels (prompt + a training reference image), so it has a real image and
  a real report to compare with.
- Table 1: FID of generated vs real images (the evaluation classifier's penultimate features; a
  bootstrap interval over the generated set), KID; PSNR and SSIM of each generated image against
  the real image of the study whose labels conditioned it.
- Table 2: clinical AUROC per pathology (Atelectasis, Cardiomegaly, Lung Opacity, Pleural Effusion,
  Pneumonia): `eval.per_pathology` images generated for the pathology alone and as many for
  "No Finding"; the classifier's probability of the pathology separates them (and the same on real
  images of the split, the paper's "Original" row). Also the classifier's macro AUROC on the
  conditioning set against the requested labels.
- Tables 3-4: BLEU-1..4 / ROUGE-L (nlg_metrics) and labeler F1 (label_agreement) of reports written
  from the real images and from the generated images, against the real reports of the studies.
- Image-report agreement of generated pairs: the classifier's labels of the generated image (at its
  Youden thresholds) vs the labeler's labels of the generated report, with a chance baseline (the
  reports shuffled across pairs).
Outputs: eval/cxr_irgen_<split>.json (+ protocol) and a self-contained eval/cxr_irgen_<split>.html.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from sklearn.metrics import roc_auc_score

from xray_gen.data import augment as aug
from xray_gen.data.pipeline import ToModelInputs, open_split
from xray_gen.data.schema import CHEXPERT_LABELS, binarize, empty_labels
from xray_gen.evaluation.image_fidelity import inception_protocol, load_inception, view_fidelity
from xray_gen.evaluation.metrics import multilabel_auroc, psnr, ssim
from xray_gen.evaluation.text_metrics import label_agreement, nlg_metrics
from xray_gen.models.cxr_irgen.conditioning import label_prompt
from xray_gen.models.cxr_irgen.inputs import report_text
from xray_gen.models.cxr_irgen.sampling import condition_inputs, decode_reports, generate_pairs, reports_for_images

NO_FINDING = CHEXPERT_LABELS.index("No Finding")
NUM_CARDS = 8


def _classify(cls_task, cls_state, images: np.ndarray, batch_size: int):
    """(probs, features) of float [-1, 1] images, in fixed-size batches."""
    net = cls_task.net
    variables = {"params": cls_state.params, "batch_stats": cls_state.batch_stats}
    run = jax.jit(lambda v, x: (lambda lf: (jax.nn.sigmoid(lf[0]), lf[1]))(net.apply(v, x, train=False)))
    probs, feats = [], []
    for i in range(0, len(images), batch_size):
        chunk = images[i:i + batch_size]
        pad = batch_size - len(chunk)
        p, f = jax.device_get(run(variables, np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)]) if pad else chunk))
        probs.append(np.asarray(p)[:len(chunk)])
        feats.append(np.asarray(f)[:len(chunk)])
    return np.concatenate(probs), np.concatenate(feats)


def _auroc(pos: np.ndarray, neg: np.ndarray):
    if len(pos) == 0 or len(neg) == 0:
        return None
    return float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))


def _pathology_table(task, state, cls, pathologies, n: int, real_raw, real_probs, batch_size: int) -> dict:
    """Paper Table 2: AUROC of the pathology's probability, pathology-conditioned vs No-Finding-
    conditioned generated images (and real images of the split, positives vs No Finding)."""
    requests = {name: empty_labels() for name in list(pathologies) + ["No Finding"]}
    for name, vec in requests.items():
        vec[CHEXPERT_LABELS.index(name)] = 1.0
    probs = {}
    seed0 = int(task.config.sample.seed) + 100_000
    for k, (name, vec) in enumerate(requests.items()):
        seeds = [seed0 + k * n + i for i in range(n)]
        inputs, _ = condition_inputs(task, np.repeat(vec[None], n, 0), seeds)
        images = generate_pairs(task, state, inputs, seeds, batch_size)["images"]
        probs[name] = _classify(*cls, images, batch_size)[0]
    table = {"generated": {}, "real": {}}
    real_nf = real_raw[:, NO_FINDING] == 1.0
    for name in pathologies:
        j = CHEXPERT_LABELS.index(name)
        table["generated"][name] = _auroc(probs[name][:, j], probs["No Finding"][:, j])
        table["real"][name] = _auroc(real_probs[real_raw[:, j] == 1.0, j], real_probs[real_nf, j])
    for who in ("generated", "real"):
        values = [v for v in table[who].values() if v is not None]
        table[who]["mean"] = float(np.mean(values)) if values else None
    table["images_per_condition"] = n
    return table


def final_report(task, state, workdir: str, checkpoint_step: int | None = None) -> dict:
    from xray_gen.evaluation.html_report import read_curves, write_html_report
    from xray_gen.evaluation.protocol import eval_dir as protocol_eval_dir, model_protocol, write_result_json

    c, x = task.config, task.config.cxr_irgen
    bs = int(c.eval.batch_size)
    cls_task, cls_state = task.classifier().load()
    cls = (cls_task, cls_state)
    thresholds = cls_task.thresholds()

    source = open_split(c.data, c.eval.split, views=("frontal",))
    n = min(len(source), int(c.eval.num_examples))
    to_inputs = ToModelInputs.from_data_config(c.data, views=("frontal",))
    examples = [source[i] for i in range(n)]
    raw = np.stack([np.asarray(ex["labels"], np.float32) for ex in examples])
    real_u8 = np.stack([to_inputs.map(ex)["frontal"] for ex in examples])
    real = np.asarray(aug.to_float(real_u8))
    real_reports = [report_text(ex, tuple(x.report_sections)) for ex in examples]
    seeds = [int(c.sample.seed) + i for i in range(n)]
    inputs, chosen = condition_inputs(task, raw, seeds)
    gen = generate_pairs(task, state, inputs, seeds, bs)
    gen_texts = decode_reports(task.report_tokenizer, gen["report_ids"])
    real_ids = reports_for_images(task, state, real_u8, bs, c.sample.seed)["report_ids"]
    real_texts = decode_reports(task.report_tokenizer, real_ids)

    gen_probs, gen_feats = _classify(*cls, gen["images"], bs)
    real_probs, real_feats = _classify(*cls, real, bs)
    metrics = {"split": c.eval.split, "num_conditioning_studies": n, "resolution": c.data.resolution,
               "backbone": x.backbone, "reference_image": bool(x.reference_image),
               "references_found": float(np.mean([j is not None for j in chosen])) if x.reference_image else None,
               "sampler": {"sampler": c.sample.sampler, "steps": int(c.sample.num_steps),
                           "guidance_scale": c.sample.guidance_scale},
               "feature_extractor": "xray_gen classifier (DenseNet) penultimate features"}
    inception = load_inception(c.eval.get("inception_weights", ""))
    metrics["fidelity"] = {"frontal": view_fidelity(gen_feats, real_feats, bootstrap=c.eval.get("bootstrap", 0),
                                                    seed=c.seed, inception=inception, generated_images=gen["images"],
                                                    reference_images=real)}
    if inception is not None:
        metrics["inception"] = inception_protocol(inception)
    metrics["psnr"] = float(np.mean(psnr(gen["images"], real)))
    metrics["ssim"] = float(np.mean(ssim(gen["images"], real)))

    targets, mask = binarize(raw, c.data.uncertain_as)
    per_class = {}
    for who, probs in (("generated", gen_probs), ("real", real_probs)):
        auroc = multilabel_auroc(targets, probs, mask > 0, class_names=CHEXPERT_LABELS)
        metrics[f"clinical_auroc_{who}_vs_requested"] = auroc.pop("macro")
        per_class[f"classifier AUROC on {who} images vs the conditioning labels"] = auroc
    metrics["pathology_auroc"] = _pathology_table(task, state, cls, tuple(c.eval.pathologies), int(c.eval.per_pathology),
                                                  raw, real_probs, bs)
    per_class["Table 2 AUROC, generated (pathology vs No Finding)"] = {
        k: v for k, v in metrics["pathology_auroc"]["generated"].items() if v is not None}

    metrics["reports_from_real_images"] = {**nlg_metrics(real_texts, real_reports),
                                           "labeler": label_agreement(real_texts, real_reports)}
    metrics["reports_from_generated_images"] = {**nlg_metrics(gen_texts, real_reports),
                                                "labeler": label_agreement(gen_texts, real_reports)}
    image_labels = np.where(gen_probs >= thresholds[None], 1.0, 0.0).astype(np.float32)
    agreement = label_agreement(gen_texts, image_labels)
    rng = np.random.default_rng(c.seed)
    chance = [label_agreement([gen_texts[i] for i in rng.permutation(n)], image_labels)["micro"]["f1"]
              for _ in range(5)] if n >= 2 else []
    chance = [v for v in chance if v is not None]
    metrics["image_report_agreement"] = {"micro_f1": agreement["micro"]["f1"], "macro_f1": agreement["macro"]["f1"],
                                         "chance_micro_f1": float(np.mean(chance)) if chance else None}

    protocol = model_protocol(c, "cxr_irgen+classifier_features", cls_state.params, n, c.eval.get("bootstrap", 0))
    eval_dir = protocol_eval_dir(workdir, checkpoint_step)
    result = write_result_json(os.path.join(eval_dir, f"cxr_irgen_{c.eval.split}.json"), metrics, protocol)
    samples = [{"condition": label_prompt(raw[i]), "images": [gen["images"][i], real[i]],
                "captions": ["generated", "real study"],
                "text": f"GENERATED: {gen_texts[i]}\nREAL: {real_reports[i]}"} for i in range(min(n, NUM_CARDS))]
    html = os.path.join(eval_dir, f"cxr_irgen_{c.eval.split}.html")
    write_html_report(html, result, title=f"CXR-IRGen evaluation ({c.eval.split})", samples=samples,
                      per_class=per_class, curves=read_curves(workdir, tags=["train/*"]))
    logging.info("evaluation: %s", html)
    return metrics
