"""`--mode=evaluate` for CXR-IRGen on `eval.split` (the test split by default), the paper's tables
scaled down.

Generated set: the first `eval.num_examples` studies of the split; generated pair i is conditioned
on study i's labels (prompt + a training reference image), so it has a real image and a real report
to compare with (its id in metadata.csv). The folder is scored by the one evaluator
(`xray_gen.evaluation.evaluator`):
- Table 1: `fidelity` (FID of generated vs real images in the evaluation classifier's penultimate
  features, bootstrap interval, KID), `matched` (PSNR and SSIM of each generated image against the
  real image of the study whose labels conditioned it);
- `clinical`: the classifier's macro AUROC of the generated images against the requested labels;
- Tables 3-4 (generated images): `reports.vs_reference` (BLEU-1..4, ROUGE-L, labeler agreement of
  the reports written from the generated images vs the studies' real reports);
- `pairs.image_report_agreement`: the classifier's labels of the generated image vs the labeler's
  labels of the generated report, with a chance level (reports shuffled across pairs).
CXR-IRGen's own sections:
- `pathology_auroc` (Table 2, per pathology: Atelectasis, Cardiomegaly, Lung Opacity, Pleural
  Effusion, Pneumonia): `eval.per_pathology` images generated for the pathology alone and as many
  for "No Finding"; the classifier's probability of the pathology separates them (and the same on
  the split's real images, the paper's "Original" row);
- `reports_from_real_images` (Tables 3-4, real images): the language module alone.
Outputs: eval/cxr_irgen_<split>.json (+ protocol), eval/cxr_irgen_<split>.html and the generated
folder eval/cxr_irgen_<split>_generated/.
"""

from __future__ import annotations

import os

import numpy as np
from sklearn.metrics import roc_auc_score

from xray_gen.data.pipeline import ToModelInputs, open_split
from xray_gen.data.schema import CHEXPERT_LABELS, empty_labels
from xray_gen.evaluation.text_metrics import label_agreement, nlg_metrics
from xray_gen.images import to_uint8
from xray_gen.models.cxr_irgen.inputs import report_text
from xray_gen.models.cxr_irgen.generate import condition_inputs, decode_reports, generate_pairs, reports_for_images

NO_FINDING = CHEXPERT_LABELS.index("No Finding")


def _auroc(pos: np.ndarray, neg: np.ndarray):
    if len(pos) == 0 or len(neg) == 0:
        return None
    return float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))


def _pathology_table(task, state, classifier, pathologies, n: int, real_raw, real_probs, batch_size: int) -> dict:
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
        probs[name] = classifier(to_uint8(images))[1]
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


def report_column(sections) -> str:
    """The metadata column the generated reports go in, so the evaluator compares them with the
    same sections of the real reports (findings [+ impression])."""
    sections = tuple(sections)
    return {("findings",): "findings", ("impression",): "impression"}.get(sections, "report")


def final_report(task, state, workdir: str, checkpoint_step: int | None = None) -> dict:
    from xray_gen.evaluation import evaluator
    from xray_gen.evaluation.generated_folder import write_generated
    from xray_gen.evaluation.html_report import read_curves
    from xray_gen.evaluation.image_fidelity import load_inception
    from xray_gen.evaluation.protocol import eval_dir
    from xray_gen.models import restore

    c, x = task.config, task.config.cxr_irgen
    bs = int(c.eval.batch_size)
    classifier = restore.load_classifier(task.classifier().directory, bs)

    source = open_split(c.data, c.eval.split, views=("frontal",))
    n = min(len(source), int(c.eval.num_examples))
    to_inputs = ToModelInputs.from_data_config(c.data, views=("frontal",))
    examples = [source[i] for i in range(n)]
    raw = np.stack([np.asarray(ex["labels"], np.float32) for ex in examples])
    real_u8 = np.stack([to_inputs.map(ex)["frontal"] for ex in examples])
    real_reports = [report_text(ex, tuple(x.report_sections)) for ex in examples]
    seeds = [int(c.sample.seed) + i for i in range(n)]
    inputs, chosen = condition_inputs(task, raw, seeds)
    gen = generate_pairs(task, state, inputs, seeds, bs)
    gen_texts = decode_reports(task.report_tokenizer, gen["report_ids"])
    real_ids = reports_for_images(task, state, real_u8, bs, c.sample.seed)["report_ids"]
    real_texts = decode_reports(task.report_tokenizer, real_ids)

    name = f"cxr_irgen_{c.eval.split}"
    out_dir = eval_dir(workdir, checkpoint_step)
    generated = os.path.join(out_dir, f"{name}_generated")
    write_generated(generated, [{"image": gen["images"][i], "view": "frontal", "id": str(ex.get("study_id", i)),
                                 "report": gen_texts[i], "labels": raw[i]} for i, ex in enumerate(examples)],
                    report_column=report_column(x.report_sections))
    _, real_probs = classifier(real_u8[..., 0] if real_u8.ndim == 4 else real_u8)
    extra = {"split": c.eval.split, "num_conditioning_studies": n, "resolution": c.data.resolution,
             "backbone": x.backbone, "reference_image": bool(x.reference_image),
             "references_found": float(np.mean([j is not None for j in chosen])) if x.reference_image else None,
             "sampler": {"sampler": c.sample.sampler, "steps": int(c.sample.num_steps),
                         "guidance_scale": c.sample.guidance_scale},
             "pathology_auroc": _pathology_table(task, state, classifier, tuple(c.eval.pathologies),
                                                 int(c.eval.per_pathology), raw, real_probs, bs),
             "reports_from_real_images": {**nlg_metrics(real_texts, real_reports),
                                          "labeler": label_agreement(real_texts, real_reports)}}
    scorers = evaluator.Scorers(classifier=classifier, inception=load_inception(c.eval.get("inception_weights", "")))
    record = evaluator.evaluate(generated, f"{c.data.source}/{c.eval.split}", out_dir, c.data, scorers,
                                evaluator.settings_from_config(c), name=name, extra_metrics=extra,
                                curves=read_curves(workdir, tags=["train/*"]),
                                title=f"CXR-IRGen evaluation ({c.eval.split})")
    return record["metrics"]
