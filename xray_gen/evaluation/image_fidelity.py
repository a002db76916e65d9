"""The image-distribution numbers every evaluation reports, with one implementation and one set of
names: per view, in-domain FID/KID (`fid.distribution_distances`) and, when the user gives converted
Inception-v3 weights (`eval.inception_weights`, `--inception_weights`), Inception FID and Inception
Score. Models' `--mode=evaluate` and the folder evaluator (`xray_gen.evaluate`) both write
`fidelity: {view: {...}}` through `view_fidelity`.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from xray_gen.evaluation import fid

INCEPTION_POOL = 2048  # pool3 width; the Inception extractor's columns after it are the 1008 logits


def inception_fidelity(extractor, generated, reference) -> Dict[str, Any]:
    """Inception FID (pool3) and Inception Score (logits, generated and real) of two image sets
    (uint8 or [-1, 1] float), one forward pass per image; `extractor` gives pool ++ logits."""
    if min(len(generated), len(reference)) < 2:
        return {"inception_fid": {"skipped": "fewer than 2 images on a side"}}
    return inception_numbers(extractor(generated), extractor(reference))


def inception_numbers(generated, reference) -> Dict[str, Any]:
    """`inception_fidelity` from the extractor's pool ++ logits outputs of both sets."""
    from xray_gen.evaluation.metrics import inception_score

    score = lambda logits: list(inception_score(logits, splits=min(10, len(logits)), from_logits=True))
    pool_g, pool_r = generated[:, :INCEPTION_POOL], reference[:, :INCEPTION_POOL]
    return {"inception_fid": fid.distribution_distances(pool_g, pool_r)["fid"],
            "inception_score": {"generated": score(generated[:, INCEPTION_POOL:]),
                                "reference": score(reference[:, INCEPTION_POOL:]), "format": "[mean, std] over splits"}}


def inception_protocol(extractor) -> Dict[str, Any]:
    """What an Inception number depends on besides the images (recorded beside it)."""
    return {"extractor": extractor.name, "weights_checksum": extractor.weights_checksum,
            "resize_policy": extractor.resize_policy, "grey_to_rgb": extractor.grey_rule}


def load_inception(weights_path: str):
    """The pool ++ logits Inception-v3 extractor of the user's converted weights ('' : None)."""
    if not weights_path:
        return None
    from xray_gen.evaluation.features import inception_extractor

    return inception_extractor(weights_path, output="pool+logits")


def view_fidelity(generated_features, reference_features, *, bootstrap: int = 0, seed: int = 0,
                  inception=None, generated_images=None, reference_images=None) -> Dict[str, Any]:
    """One view's numbers: FID (+ bootstrap interval), KID and, with an Inception extractor and the
    images, Inception FID and IS; plus the image counts."""
    out: Dict[str, Any] = {"n_generated": int(len(generated_features)), "n_reference": int(len(reference_features))}
    out.update(fid.distribution_distances(generated_features, reference_features, bootstrap, seed))
    if inception is not None:
        out.update(inception_fidelity(inception, np.asarray(generated_images), np.asarray(reference_images)))
    return out
