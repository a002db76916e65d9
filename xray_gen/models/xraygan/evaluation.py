"""XRayGAN's `--mode=evaluate` on `eval.split`: a frontal + lateral pair generated from each of the
split's reports, written as a folder (PNGs + metadata.csv: the study id, the report, its labels)
and scored by the one evaluator against the split's real studies: per view FID/KID (classifier
features), SSIM to the real image of the same study (`matched`), the classifier's AUROC of the
generated frontals for the report's labels (`clinical`), VC of generated / real / mismatched
generated pairs (`pairs`), privacy; JSON with its protocol and one HTML page. The ablation table
(paper Table 2) is built from these files by tables.py.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from xray_gen.data.pipeline import ReportInputs, ToModelInputs, make_loader, open_split
from xray_gen.models.xraygan import steps
from xray_gen.models.xraygan.steps import VIEWS, stage_resolution


def generated_set(task, state, n: int):
    """(items for `write_generated`, number of studies): the first `n` studies of `eval.split`."""
    from xray_gen.evaluation.real_splits import study_text
    from xray_gen.training.inference import predict
    from xray_gen.training.sharding import mesh_for

    c, x = task.config, task.config.xraygan
    last = x.num_stages - 1
    transforms = [ReportInputs(task.tokenizer, x.max_sentences, x.max_words),
                  ToModelInputs.from_data_config(c.data, views=VIEWS, resolution=stage_resolution(last))]
    source = open_split(c.data, c.eval.split)
    loader = make_loader(source, transforms, c.eval.batch_size, seed=c.seed, shuffle=False, num_epochs=1,
                         drop_remainder=False)

    def fn(st, batch):
        _, fakes = steps.generate(task.nets, x, st.g_params, batch, jax.random.PRNGKey(c.sample.seed), last)
        return fakes

    out = predict(fn, state, loader, mesh_for(c), c.eval.batch_size, n)
    items = []
    for i in range(len(out["frontal"])):  # the loader kept the split's order
        ex = source[i]
        sid = str(ex.get("study_id", i))
        for v in VIEWS:
            items.append({"image": out[v][i], "view": v, "id": sid, "pair_id": sid, "report": study_text(ex),
                          "labels": np.asarray(ex["labels"], np.float32)})
    return items, len(out["frontal"])


def final_report(task, state, workdir: str, checkpoint_step: int | None = None) -> dict:
    from xray_gen.evaluation import evaluator
    from xray_gen.evaluation.generated_folder import write_generated
    from xray_gen.evaluation.html_report import read_curves
    from xray_gen.evaluation.image_fidelity import load_inception
    from xray_gen.evaluation.protocol import eval_dir
    from xray_gen.models.restore import load_classifier, load_vcn

    c, x = task.config, task.config.xraygan
    res = stage_resolution(x.num_stages - 1)
    name = f"xraygan_{c.eval.split}"
    out_dir = eval_dir(workdir, checkpoint_step)
    items, n = generated_set(task, state, c.eval.num_examples)
    generated = os.path.join(out_dir, f"{name}_generated")
    write_generated(generated, items)
    scorers = evaluator.Scorers(classifier=load_classifier(task.classifier_dir(), c.eval.batch_size),
                                inception=load_inception(c.eval.get("inception_weights", "")),
                                vcn=load_vcn(task.vcn_dir(res)))
    record = evaluator.evaluate(generated, f"{c.data.source}/{c.eval.split}", out_dir, c.data, scorers,
                                evaluator.settings_from_config(c), name=name,
                                extra_metrics={"split": c.eval.split, "num_reports": n, "resolution": res},
                                curves=read_curves(workdir, tags=["train/*"]),
                                title=f"XRayGAN evaluation ({c.eval.split})")
    return record["metrics"]
