"""XRayGAN losses on hand-computed values and critics with known gradients."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xray_gen.models.xraygan.losses import (
    generator_objective, gradient_penalty, pixel_l2, vc_reward_loss, wgan_d_loss, wgan_g_loss)

SHAPE = (3, 4, 4, 1)


def _images(seed):
    return jax.random.normal(jax.random.key(seed), SHAPE)


def test_gradient_penalty_linear_critic_with_norm_two():
    w = jax.random.normal(jax.random.key(0), SHAPE[1:])
    w = 2.0 * w / jnp.linalg.norm(w)  # ||grad D|| = 2 for every sample
    critic = lambda x: jnp.sum(w * x, axis=(1, 2, 3))
    gp = gradient_penalty(critic, _images(1), _images(2), jax.random.key(3), weight=10.0)
    assert float(gp) == pytest.approx(10.0 * (2.0 - 1.0) ** 2, rel=1e-5)


def test_gradient_penalty_zero_critic_and_patch_scores():
    gp = gradient_penalty(lambda x: jnp.zeros(x.shape[:1]), _images(1), _images(2), jax.random.key(3), weight=7.0)
    assert float(gp) == pytest.approx(7.0, rel=1e-5)
    # patch critic (B, h, w): reduced per sample by the mean. mean over 16 pixels of 48*x has
    # gradient 3 at every pixel -> per-sample norm 3 * sqrt(16) = 12 -> weight * 11^2
    gp = gradient_penalty(lambda x: 48.0 * x[..., 0], _images(1), _images(2), jax.random.key(3), weight=1.0)
    assert float(gp) == pytest.approx(121.0, rel=1e-5)


def test_gradient_penalty_is_evaluated_at_the_interpolate():
    # D(x) = 0.5 * ||x||^2 has gradient x; with real == fake the interpolate is that image
    x = _images(4)
    gp = gradient_penalty(lambda v: 0.5 * jnp.sum(v**2, axis=(1, 2, 3)), x, x, jax.random.key(5), weight=1.0)
    norms = np.linalg.norm(np.asarray(x).reshape(3, -1), axis=1)
    assert float(gp) == pytest.approx(np.mean((norms - 1.0) ** 2), rel=1e-5)


def test_gradient_penalty_differentiable_wrt_critic_params():
    w0 = jnp.zeros(SHAPE[1:])  # grad D = 0: sqrt must not produce NaN gradients
    g = jax.grad(lambda w: gradient_penalty(lambda x: jnp.sum(w * x, axis=(1, 2, 3)), _images(1), _images(2),
                                            jax.random.key(3)))(w0)
    assert np.all(np.isfinite(g))


def test_wgan_losses_hand_values():
    real = jnp.array([1.0, 3.0])
    fake = jnp.array([[-1.0, 0.0], [2.0, 3.0]])  # any shape: mean over all entries
    assert float(wgan_d_loss(real, fake)) == pytest.approx(1.0 - 2.0)
    assert float(wgan_g_loss(fake)) == pytest.approx(-1.0)


def test_pixel_l2_hand_values():
    assert float(pixel_l2(jnp.array([1.0, -1.0, 0.0, 0.0]), jnp.array([0.0, 1.0, 0.0, 2.0]))) == pytest.approx(9 / 4)


def test_vc_reward_loss_forms():
    p = jnp.array([0.5, 0.25])
    assert float(vc_reward_loss(p, "paper")) == pytest.approx(-0.375)
    assert float(vc_reward_loss(p, "official")) == pytest.approx(-(math.log(0.5) + math.log(0.25)) / 2, rel=1e-6)
    logits = jnp.array([0.0, math.log(1 / 3)])  # sigmoid -> 0.5, 0.25
    assert float(vc_reward_loss(logits, "paper", from_logits=True)) == pytest.approx(-0.375, rel=1e-6)
    assert float(vc_reward_loss(logits, "official", from_logits=True)) == pytest.approx(
        float(vc_reward_loss(p, "official")), rel=1e-6)
    with pytest.raises(ValueError):
        vc_reward_loss(p, "other")


def test_generator_objective_weights_and_views():
    scores = (jnp.array([1.0, 3.0]), jnp.array([0.0, 2.0]))  # frontal, lateral
    fake = (jnp.ones((2, 2, 2, 1)), jnp.zeros((2, 2, 2, 1)))
    real = (jnp.zeros((2, 2, 2, 1)), jnp.zeros((2, 2, 2, 1)))
    total, terms = generator_objective(scores, fake, real, jnp.array([0.5, 0.25]),
                                       adv_weight=1.0, pixel_weight=100.0, vc_weight=1.0)
    assert float(terms["adv"]) == pytest.approx(-2.0 - 1.0)
    assert float(terms["pixel"]) == pytest.approx(1.0 + 0.0)
    assert float(terms["vc"]) == pytest.approx(-0.375)
    assert float(total) == pytest.approx(-3.0 + 100.0 - 0.375)
    total, terms = generator_objective(scores[0], fake[0], real[0], adv_weight=0.0, pixel_weight=2.0)
    assert "vc" not in terms and float(total) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        generator_objective(scores, fake[:1], real)
