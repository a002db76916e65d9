"""View-consistency network: loss on hand-computed values, negatives, and a smoke run."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from xray_gen import main
from xray_gen.configs import vcn as vcn_config
from xray_gen.models.vcn.evaluation import pair_metrics
from xray_gen.models.vcn.losses import pair_loss


def test_pair_loss_matches_hand_computation_and_ignores_masked_negatives():
    pos = jnp.array([0.0, 0.0])
    neg = jnp.array([0.0, 100.0])  # the second negative is a same-patient pair: masked out
    loss = float(pair_loss(pos, neg, jnp.array([1.0, 0.0])))
    assert loss == pytest.approx(0.5 * (math.log(2) + math.log(2)), rel=1e-6)


def test_pair_metrics_perfect_and_inverted():
    out = {"pos": np.array([0.9, 0.8]), "neg": np.array([0.1, 0.2]), "neg_valid": np.array([True, True])}
    assert pair_metrics(out)["auroc"] == 1.0 and pair_metrics(out)["accuracy"] == 1.0
    inverted = {"pos": out["neg"], "neg": out["pos"], "neg_valid": out["neg_valid"]}
    assert pair_metrics(inverted)["auroc"] == 0.0


def test_smoke_train_then_evaluate(tmp_path):
    config = vcn_config.get_config("smoke")
    state = main.run(config, str(tmp_path), "train")
    assert int(state.step) == config.train.num_steps
    result = main.run(config, str(tmp_path), "evaluate")
    assert 0.0 <= result["auroc"] <= 1.0
    with pytest.raises(ValueError, match="not generative"):
        main.run(config, str(tmp_path), "sample")
