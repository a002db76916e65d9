"""The view-consistency network's evaluation: AUROC and accuracy of same-body vs different-body pairs."""

from __future__ import annotations

import os

import numpy as np

from xray_gen.evaluation.metrics import multilabel_auroc


def pair_metrics(out: dict) -> dict:
    """AUROC and accuracy (threshold 0.5) of same-body vs different-body pairs."""
    pos, neg = out["pos"], out["neg"][out["neg_valid"].astype(bool)]
    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones_like(pos), np.zeros_like(neg)])
    auroc = multilabel_auroc(labels[:, None], scores[:, None])["macro"]
    accuracy = float(np.mean(np.concatenate([pos > 0.5, neg < 0.5])))
    return {"auroc": auroc, "accuracy": accuracy, "mean_p_same": float(pos.mean()), "mean_p_different": float(neg.mean())}


def final_report(task, state, workdir: str, checkpoint_step: int | None = None) -> dict:
    from xray_gen.evaluation.protocol import eval_dir as protocol_eval_dir, model_protocol, write_result_json

    c = task.config
    out = task.scores(state, c.eval.split, c.eval.num_examples)
    metrics = {"split": c.eval.split, **pair_metrics(out)}
    protocol = model_protocol(c, "vcn", state.params, len(out["pos"]))
    write_result_json(os.path.join(protocol_eval_dir(workdir, checkpoint_step), f"vcn_{c.eval.split}.json"), metrics, protocol)
    return metrics
