"""EMIXER losses on hand-computed values: hinge / non-saturating, rotations, report losses, ortho reg."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xray_gen.models.emixer import losses


def test_hinge_and_nonsaturating_hand_values():
    real, fake = jnp.array([2.0, 0.5]), jnp.array([-2.0, 0.5])
    # hinge D: mean(relu(1 - [2, .5])) = mean(0, .5) = .25; mean(relu(1 + [-2, .5])) = mean(0, 1.5) = .75
    np.testing.assert_allclose(losses.d_loss(real, fake), 1.0, rtol=1e-6)
    np.testing.assert_allclose(losses.g_loss(fake), 0.75, rtol=1e-6)  # -mean(fake)
    sp = lambda x: math.log1p(math.exp(x))
    ns_d = (sp(-2.0) + sp(-0.5)) / 2 + (sp(-2.0) + sp(0.5)) / 2
    np.testing.assert_allclose(losses.d_loss(real, fake, "nonsaturating"), ns_d, rtol=1e-6)
    np.testing.assert_allclose(losses.g_loss(fake, "nonsaturating"), (sp(2.0) + sp(-0.5)) / 2, rtol=1e-6)
    # -log sigmoid(x) == softplus(-x): the non-saturating G loss at D(fake) = 0 is log 2
    np.testing.assert_allclose(losses.g_loss(jnp.zeros(3), "nonsaturating"), math.log(2), rtol=1e-6)
    with pytest.raises(ValueError, match="wasserstein"):
        losses.d_loss(real, fake, "wasserstein")


def test_rotate_batch_rotates_counterclockwise_and_labels():
    img = jnp.array([[1.0, 2.0], [3.0, 4.0]])[None, :, :, None]
    batch = jnp.concatenate([img, 10 * img], axis=0)  # B = 2
    rotated, labels = losses.rotate_batch(batch)
    assert rotated.shape == (8, 2, 2, 1)
    np.testing.assert_array_equal(labels, [0, 0, 1, 1, 2, 2, 3, 3])
    by_hand = {
        0: [[1, 2], [3, 4]],
        1: [[2, 4], [1, 3]],  # 90 degrees counter-clockwise
        2: [[4, 3], [2, 1]],
        3: [[3, 1], [4, 2]],
    }
    for k, expected in by_hand.items():
        np.testing.assert_array_equal(rotated[2 * k, :, :, 0], expected)
        np.testing.assert_array_equal(rotated[2 * k + 1, :, :, 0], 10 * np.array(expected))
    # a non-symmetric 3x3 multi-channel image against numpy, channels untouched
    x = jnp.arange(2 * 3 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 3, 2)
    rotated, _ = losses.rotate_batch(x)
    for k in range(4):
        np.testing.assert_array_equal(rotated[2 * k: 2 * k + 2], np.rot90(np.asarray(x), k, axes=(1, 2)))
    with pytest.raises(ValueError, match="square"):
        losses.rotate_batch(jnp.zeros((1, 2, 3, 1)))


def test_rotation_loss_hand_values():
    np.testing.assert_allclose(losses.rotation_loss(jnp.zeros((4, 4)), jnp.arange(4)), math.log(4), rtol=1e-6)
    logits = jnp.array([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    lse0, lse1 = math.log(math.exp(2) + 3), math.log(3 + math.e)
    expected = ((lse0 - 2.0) + (lse1 - 0.0)) / 2  # label 0 for row 0, label 2 for row 1
    np.testing.assert_allclose(losses.rotation_loss(logits, jnp.array([0, 2])), expected, rtol=1e-6)
    assert losses.D_ROTATION_WEIGHT == 1.0 and losses.G_ROTATION_WEIGHT == 0.2


def test_word_cross_entropy_ignores_padding():
    v = 5
    targets = jnp.array([[[4, 3, 0], [0, 0, 0]]])  # one sentence "4 EOS", one empty sentence
    mask = (targets > 0).astype(jnp.float32)
    logits = jnp.zeros((1, 2, 3, v)).at[0, 0, 0, 4].set(1.0)
    lse = math.log(math.e + 4)
    expected = ((lse - 1.0) + math.log(5)) / 2  # only the 2 real tokens count
    np.testing.assert_allclose(losses.word_cross_entropy(logits, targets, mask), expected, rtol=1e-6)
    garbage = logits.at[0, 1].set(100.0 * jax.random.normal(jax.random.key(0), (3, v))).at[0, 0, 2].set(-50.0)
    np.testing.assert_allclose(losses.word_cross_entropy(garbage, targets, mask), expected, rtol=1e-6)
    assert float(losses.word_cross_entropy(logits, targets, jnp.zeros_like(mask))) == 0.0


def test_stop_targets_and_bce():
    mask = jnp.zeros((2, 3, 2)).at[0, :2, 0].set(1.0).at[1, 0, :].set(1.0)  # 2 sentences; 1 sentence
    targets, weights = losses.stop_targets(mask)
    np.testing.assert_array_equal(targets, [[0, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(weights, [[1, 1, 0], [1, 0, 0]])
    logits = jnp.array([[0.0, 2.0, 99.0], [-1.0, 5.0, -5.0]])
    sp = lambda x: math.log1p(math.exp(x))
    expected = (sp(0.0) + sp(-2.0) + sp(1.0)) / 3  # BCE(0|0), BCE(1|2), BCE(1|-1)
    np.testing.assert_allclose(losses.stop_bce(logits, mask), expected, rtol=1e-6)
    total, parts = losses.report_generator_loss(jnp.zeros((2, 3, 2, 4)), logits, jnp.zeros((2, 3, 2), jnp.int32),
                                                mask, stop_weight=0.5)
    np.testing.assert_allclose(parts["word_ce"], math.log(4), rtol=1e-6)
    np.testing.assert_allclose(total, math.log(4) + 0.5 * expected, rtol=1e-6)


def test_orthogonal_regularization_hand_value_and_gradient():
    w = jnp.array([[1.0, 2.0], [3.0, 4.0], [0.0, 1.0]])  # (fan_in 3, out 2): W^T W off-diagonal = 14
    params = {"a": {"kernel": w, "bias": jnp.ones(2)}, "shared": {"kernel": 5 * w}}
    s = 1e-2
    np.testing.assert_allclose(losses.orthogonal_regularization(params, s), 0.5 * s * 2 * 14.0 ** 2, rtol=1e-6)
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(1), (4, 4)))
    conv = q[:, :3].reshape(2, 2, 1, 3) * 3.0  # orthogonal (scaled) filters: zero penalty
    assert float(losses.orthogonal_regularization({"conv": conv}, s)) < 1e-4
    grad = jax.grad(lambda p: losses.orthogonal_regularization(p, s))(params)["a"]["kernel"]
    gram = w.T @ w
    np.testing.assert_allclose(grad, 2 * s * w @ (gram * (1 - jnp.eye(2))), rtol=1e-6)  # BigGAN's update
    assert float(losses.orthogonal_regularization(params, s, exclude=("a", "shared"))) == 0.0
