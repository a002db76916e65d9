"""Classifier: its loss and class weights on hand-computed values, and an end-to-end smoke run."""

import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from xray_gen import main
from xray_gen.configs import classifier as classifier_config
from xray_gen.models.classifier.losses import class_weights, weighted_bce


def test_weighted_bce_matches_hand_computation():
    logits = jnp.array([[0.0, 2.0]])
    targets = jnp.array([[1.0, 0.0]])
    mask = jnp.array([[1.0, 1.0]])
    pos_w, neg_w = jnp.array([3.0, 5.0]), jnp.array([1.5, 1.25])
    expected = (3.0 * math.log(2.0) + 1.25 * -math.log(1 - 1 / (1 + math.exp(-2.0)))) / 2
    assert float(weighted_bce(logits, targets, mask, pos_w, neg_w)) == pytest.approx(expected, rel=1e-6)
    # masked entries contribute nothing
    masked = float(weighted_bce(logits, targets, jnp.array([[1.0, 0.0]]), pos_w, neg_w))
    assert masked == pytest.approx(3.0 * math.log(2.0), rel=1e-6)


def test_class_weights_follow_the_paper_formula():
    targets = np.array([[1, 0], [0, 0], [0, 1], [0, 0]], np.float32)
    mask = np.array([[1, 1], [1, 1], [1, 1], [1, 0]], np.float32)
    pos, neg = class_weights(targets, mask)
    np.testing.assert_allclose(pos, [4 / 1, 3 / 1])
    np.testing.assert_allclose(neg, [4 / 3, 3 / 2])


def test_smoke_train_then_evaluate_writes_metrics_with_protocol(tmp_path):
    config = classifier_config.get_config("smoke")
    workdir = str(tmp_path)
    state = main.run(config, workdir, "train")
    assert int(state.step) == config.train.num_steps
    assert np.all(np.isfinite(np.asarray(state.pos_weight))) and float(np.max(state.pos_weight)) > 1.0
    result = main.run(config, workdir, "evaluate")
    assert 0.0 <= result["macro_auroc"] <= 1.0
    assert len(result["thresholds"]) == 14
    with open(os.path.join(workdir, "eval", "classifier_validation.json")) as f:
        written = json.load(f)
    assert "protocol" in written and written["protocol"]["resolution"] == config.data.resolution
    assert written["protocol"]["weights_checksum"]  # which classifier produced the numbers
    floor = result["real_vs_real"]
    assert floor["fid"] >= 0.0 and floor["other_split"] == "test" and floor["kid"]["num_subsets"] == 100
    cached = os.listdir(os.path.join(workdir, "eval", "reference_stats"))
    assert len(cached) == 1 and cached[0].endswith(".npz")
    again = main.run(config, workdir, "evaluate")  # second evaluation reads the cached statistics
    assert again["real_vs_real"]["fid"] == pytest.approx(floor["fid"], rel=1e-9)
