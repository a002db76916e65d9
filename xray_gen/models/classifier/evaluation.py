"""The classifier's `--mode=evaluate`: per-class AUROC with a bootstrap interval on `eval.split`,
and the real-vs-real FID/KID floor between two real splits in its feature space."""

from __future__ import annotations

import os

from absl import logging

from xray_gen.data.schema import CHEXPERT_LABELS
from xray_gen.evaluation.metrics import multilabel_auroc


def reference_distances(task, state, features, workdir: str) -> dict:
    """FID/KID between `eval.split` and another real split, in this classifier's feature space."""
    from xray_gen.evaluation import fid
    from xray_gen.evaluation.features import params_checksum

    c = task.config
    other_split = "test" if c.eval.split != "test" else "validation"
    other = task.scores(state, other_split, c.eval.num_examples)["features"]
    splits = {"reference_split": c.eval.split, "other_split": other_split}
    if min(len(features), len(other)) < 2:
        logging.warning("reference FID skipped: fewer than 2 studies in %s or %s", c.eval.split, other_split)
        return {"real_vs_real": {**splits, "skipped": "fewer than 2 studies in a split"}}
    key = fid.StatsKey(
        dataset=f"{c.data.source}/{c.eval.split}", extractor="xray_gen_classifier_penultimate",
        weights_checksum=params_checksum({"params": state.params, "batch_stats": state.batch_stats}),
        image_count=len(features), resolution=c.data.resolution,
    )
    cache = fid.ReferenceStatsCache(os.path.join(workdir, "eval", "reference_stats"))
    reference = cache.get_or_compute(key, lambda: fid.FeatureStats.from_features(features))
    other_stats = fid.FeatureStats.from_features(other)
    # the same KID protocol as every generated set's (fid.distribution_distances)
    kid = fid.distribution_distances(other, features, seed=c.seed)["kid"]
    return {"real_vs_real": {**splits, "fid": max(0.0, fid.frechet_distance(
        reference.mean, reference.cov, other_stats.mean, other_stats.cov)), "kid": kid}}


def final_report(task, state, workdir: str, checkpoint_step: int | None = None) -> dict:
    """`--mode=evaluate`: per-class AUROC with a bootstrap CI on `eval.split`, plus the real-vs-real
    FID/KID between two splits in this classifier's feature space (the floor any generator's
    in-domain FID is compared with). Reference statistics are cached with checksums."""
    from xray_gen.evaluation.metrics import bootstrap_ci
    from xray_gen.evaluation.protocol import eval_dir as protocol_eval_dir, model_protocol, write_result_json

    c = task.config
    out = task.scores(state, c.eval.split, c.eval.num_examples)
    mask = out["mask"] > 0
    auroc = multilabel_auroc(out["targets"], out["probs"], mask, class_names=CHEXPERT_LABELS)
    ci = bootstrap_ci(
        lambda t, p, m: multilabel_auroc(t, p, m)["macro"], out["targets"], out["probs"], mask, n=c.eval.bootstrap
    )
    metrics = {
        "split": c.eval.split, "num_examples": int(len(out["probs"])), "macro_auroc": auroc["macro"],
        "macro_auroc_ci95": [ci[1], ci[2]], "auroc": auroc, "thresholds": task.thresholds().tolist(),
    }
    metrics.update(reference_distances(task, state, out["features"], workdir))
    protocol = model_protocol(c, "classifier", state.params, len(out["probs"]), c.eval.bootstrap)
    path = os.path.join(protocol_eval_dir(workdir, checkpoint_step), f"classifier_{c.eval.split}.json")
    write_result_json(path, metrics, protocol)
    return metrics
