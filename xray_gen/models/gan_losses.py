"""Losses shared by the GANs as plain functions of arrays: WGAN-GP critics (XRayGAN, PGGAN); hinge and
non-saturating losses (EMIXER)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def _per_sample(scores):
    """Reduce critic scores (B, ...) to (B,) by the mean over non-batch dims."""
    scores = jnp.asarray(scores)
    return scores.reshape(scores.shape[0], -1).mean(axis=1)


def gradient_penalty(critic_fn: Callable[[Array], Array], real, fake, rng, weight: float = 10.0):
    """WGAN-GP: weight * mean_b (||grad_x D(x_hat_b)||_2 - 1)^2 on random interpolates.

    x_hat = eps * real + (1 - eps) * fake, eps ~ U(0, 1) per sample; critic outputs (B, ...) are
    averaged per sample (patch logits -> one score); the norm is over all non-batch dims. The
    tiny constant inside the sqrt keeps the penalty's own gradient finite where grad D = 0.
    """
    real = jnp.asarray(real, jnp.float32)
    fake = jnp.asarray(fake, jnp.float32)
    eps = jax.random.uniform(rng, (real.shape[0],) + (1,) * (real.ndim - 1), dtype=real.dtype)
    x_hat = eps * real + (1.0 - eps) * fake
    # Samples are independent, so the gradient of the batch sum is the per-sample gradient.
    grads = jax.grad(lambda x: jnp.sum(_per_sample(critic_fn(x))))(x_hat)
    norms = jnp.sqrt(jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), axis=1) + 1e-12)
    return weight * jnp.mean(jnp.square(norms - 1.0))


def wgan_d_loss(real_scores, fake_scores):
    """Critic loss E[D(fake)] - E[D(real)] (the critic maximises the gap)."""
    return jnp.mean(fake_scores) - jnp.mean(real_scores)


def wgan_g_loss(fake_scores):
    """Generator adversarial loss -E[D(fake)]."""
    return -jnp.mean(fake_scores)


def hinge_d_loss(real_scores, fake_scores):
    """Hinge discriminator loss E[relu(1 - D(real))] + E[relu(1 + D(fake))] (BigGAN, SAGAN)."""
    return jnp.mean(jax.nn.relu(1.0 - real_scores)) + jnp.mean(jax.nn.relu(1.0 + fake_scores))


def hinge_g_loss(fake_scores):
    """Hinge generator loss -E[D(fake)] (same form as the WGAN one)."""
    return -jnp.mean(fake_scores)


def nonsaturating_d_loss(real_scores, fake_scores):
    """-E[log sigmoid(D(real))] - E[log(1 - sigmoid(D(fake)))], computed stably from logits."""
    return jnp.mean(jax.nn.softplus(-real_scores)) + jnp.mean(jax.nn.softplus(fake_scores))


def nonsaturating_g_loss(fake_scores):
    """-E[log sigmoid(D(fake))] (Goodfellow et al.'s non-saturating generator loss)."""
    return jnp.mean(jax.nn.softplus(-fake_scores))
