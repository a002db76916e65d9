"""Inception-v3 numbers of the evaluator's `fidelity` section, when the user gives converted
Inception-v3 weights (`eval.inception_weights`, `--inception_weights`): Inception FID (pool3) and
Inception Score (logits), both from one forward pass per image. In-domain FID/KID is
`fid.distribution_distances`.
"""

from __future__ import annotations

from typing import Any, Dict

from xray_gen.evaluation import fid

INCEPTION_POOL = 2048  # pool3 width; the Inception extractor's columns after it are the 1008 logits


def inception_numbers(generated, reference) -> Dict[str, Any]:
    """Inception FID and IS from the extractor's pool ++ logits outputs of both sets."""
    from xray_gen.evaluation.metrics import inception_score

    score = lambda logits: list(inception_score(logits, splits=min(10, len(logits)), from_logits=True))
    pool_g, pool_r = generated[:, :INCEPTION_POOL], reference[:, :INCEPTION_POOL]
    return {"inception_fid": fid.distribution_distances(pool_g, pool_r)["fid"],
            "inception_score": {"generated": score(generated[:, INCEPTION_POOL:]),
                                "reference": score(reference[:, INCEPTION_POOL:]), "format": "[mean, std] over splits"}}


def load_inception(weights_path: str):
    """The pool ++ logits Inception-v3 extractor of the user's converted weights ('' : None)."""
    if not weights_path:
        return None
    from xray_gen.evaluation.features import inception_extractor

    return inception_extractor(weights_path, output="pool+logits")
