"""XRayGAN's `--mode=evaluate` (paper Tables 1/2 on `eval.split`): per view FID/KID (classifier
features, the shared `fidelity` block), SSIM to the real image of the same report, VC of generated /
real / mismatched generated pairs, the classifier's AUROC for the report's labels on generated (and
real) frontals; JSON with its protocol and one HTML page."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from xray_gen.data import augment as aug
from xray_gen.data.pipeline import ReportInputs, ToModelInputs, make_loader, open_split
from xray_gen.data.schema import CHEXPERT_LABELS
from xray_gen.models.xraygan import steps
from xray_gen.models.xraygan.steps import VIEWS, stage_resolution


def final_report(task, state, workdir: str, checkpoint_step: int | None = None) -> dict:
    """Paper Tables 1/2 on `eval.split`: per view FID/KID (classifier features), SSIM to the real
    image of the same report, VC of generated / real / mismatched generated pairs, and the
    classifier's AUROC for the report's labels on generated (and real) frontals."""
    from xray_gen.evaluation.image_fidelity import inception_protocol, load_inception, view_fidelity
    from xray_gen.evaluation.metrics import multilabel_auroc, ssim
    from xray_gen.evaluation.protocol import eval_dir as protocol_eval_dir, model_protocol, write_result_json
    from xray_gen.training.inference import predict
    from xray_gen.training.sharding import mesh_for

    c, x = task.config, task.config.xraygan
    last = x.num_stages - 1
    res = stage_resolution(last)
    transforms = [ReportInputs(task.tokenizer, x.max_sentences, x.max_words), ToModelInputs.from_data_config(c.data, views=VIEWS, resolution=res)]
    loader = make_loader(open_split(c.data, c.eval.split), transforms, c.eval.batch_size, seed=c.seed,
                         shuffle=False, num_epochs=1, drop_remainder=False)
    vcn_net, vcn_vars = task.vcn(last)
    classifier, cls_state = task.classifier().load()
    cls_vars = {"params": cls_state.params, "batch_stats": cls_state.batch_stats}

    def fn(inputs, batch):
        st, frozen = inputs
        _, fakes = steps.generate(task.nets, x, st.g_params, batch, jax.random.PRNGKey(c.sample.seed), last)
        real = {v: aug.to_float(batch[v]) for v in VIEWS}
        vc = lambda f, l: jax.nn.sigmoid(vcn_net.apply(frozen["vcn"], f, l, train=False))
        out = {"vc_generated": vc(fakes["frontal"], fakes["lateral"]), "vc_real": vc(real["frontal"], real["lateral"]),
               "vc_mismatched": vc(fakes["frontal"], jnp.roll(fakes["lateral"], 1, axis=0)),
               "targets": batch["targets"], "mask": batch["label_mask"]}
        for v in VIEWS:
            for kind, images in (("fake", fakes[v]), ("real", real[v])):
                logits, feats = classifier.net.apply(frozen["classifier"], images, train=False)
                out[f"{kind}_{v}_features"], out[f"{kind}_{v}_probs"] = feats, jax.nn.sigmoid(logits)
            out[f"fake_{v}"], out[f"real_{v}"] = fakes[v], real[v]
        return out

    frozen = {"vcn": vcn_vars, "classifier": cls_vars}  # arguments of the jitted function, not its constants
    out = predict(fn, (state, frozen), loader, mesh_for(c), c.eval.batch_size, c.eval.num_examples)
    n = len(out["targets"])
    mask = out["mask"] > 0
    metrics = {"split": c.eval.split, "num_reports": n, "resolution": res,
               "vc": {k: float(np.mean(out[f"vc_{k}"])) for k in ("generated", "real", "mismatched")}}
    inception = load_inception(c.eval.get("inception_weights", ""))
    metrics["fidelity"] = {v: view_fidelity(out[f"fake_{v}_features"], out[f"real_{v}_features"],
                                            bootstrap=c.eval.get("bootstrap", 0), seed=c.seed, inception=inception,
                                            generated_images=out[f"fake_{v}"], reference_images=out[f"real_{v}"])
                           for v in VIEWS}
    if inception is not None:
        metrics["inception"] = inception_protocol(inception)
    for v in VIEWS:
        metrics[f"ssim_{v}"] = float(np.mean(ssim(out[f"fake_{v}"], out[f"real_{v}"])))
    per_class = {}
    for kind in ("fake", "real"):
        name = "generated" if kind == "fake" else "real"
        auroc = multilabel_auroc(out["targets"], out[f"{kind}_frontal_probs"], mask, class_names=CHEXPERT_LABELS)
        metrics[f"clinical_auroc_{name}_frontal"] = auroc.pop("macro")
        per_class[f"clinical AUROC, {name} frontals"] = auroc
    protocol = model_protocol(c, "xraygan+classifier_features", cls_state.params, n, c.eval.get("bootstrap", 0))
    result = write_result_json(os.path.join(protocol_eval_dir(workdir, checkpoint_step), f"xraygan_{c.eval.split}.json"), metrics, protocol)
    _write_html(task, os.path.join(protocol_eval_dir(workdir, checkpoint_step), f"xraygan_{c.eval.split}.html"), result, out, per_class, workdir)
    return metrics

def _write_html(task, path: str, result: dict, out: dict, per_class: dict, workdir: str) -> None:
    """The evaluation as one self-contained page: generated pairs beside the real pair of the
    same report (report text under each), metric tables, per-class AUROC bars, training curves."""
    from xray_gen.data.schema import Study
    from xray_gen.evaluation.html_report import read_curves, write_html_report

    c = task.config
    source = open_split(c.data, c.eval.split)
    samples = []
    for i in range(min(c.sample.num_reports, len(out["targets"]))):  # the loader kept the split's order
        study = Study.from_example(source[i])
        samples.append({
            "condition": f"{c.eval.split} report {i}",
            "images": [out["fake_frontal"][i], out["fake_lateral"][i], out["real_frontal"][i], out["real_lateral"][i]],
            "captions": ["generated frontal", "generated lateral", "real frontal", "real lateral"],
            "text": f"FINDINGS: {study.findings} IMPRESSION: {study.impression}",
        })
    write_html_report(path, result, title=f"XRayGAN evaluation ({c.eval.split})", samples=samples,
                      per_class=per_class, curves=read_curves(workdir, tags=["train/*"]))
    logging.info("evaluation report: %s", path)
