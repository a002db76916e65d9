"""EMIXER losses as plain functions of arrays.

* Adversarial: hinge (default, BigGAN) or non-saturating (the paper's log form), for all three
  discriminators; the generic pieces live in `xray_gen.models.gan_losses`.
* Rotation self-supervision (SSGAN, compare_gan): `rotate_batch` stacks the batch rotated by
  0/90/180/270 degrees; D minimises D_ROTATION_WEIGHT * CE on rotated real images, G minimises
  G_ROTATION_WEIGHT * CE on rotated fakes; the GAN loss sees only the unrotated quarter.
* Report generator F: teacher-forced word cross-entropy masked on padding + stop BCE.
* BigGAN's off-diagonal orthogonal regularisation.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import optax

from xray_gen.models.gan_losses import (hinge_d_loss, hinge_g_loss, nonsaturating_d_loss,
                                        nonsaturating_g_loss)

D_ROTATION_WEIGHT = 1.0
G_ROTATION_WEIGHT = 0.2
LOSS_KINDS = ("hinge", "nonsaturating")


def _check_kind(kind):
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown adversarial loss {kind!r}; use one of {LOSS_KINDS}")


def d_loss(real_scores, fake_scores, kind: str = "hinge"):
    """Discriminator loss on raw scores (logits) of real and generated samples."""
    _check_kind(kind)
    return hinge_d_loss(real_scores, fake_scores) if kind == "hinge" else nonsaturating_d_loss(real_scores, fake_scores)


def g_loss(fake_scores, kind: str = "hinge"):
    """Generator adversarial loss on D's scores of generated samples."""
    _check_kind(kind)
    return hinge_g_loss(fake_scores) if kind == "hinge" else nonsaturating_g_loss(fake_scores)


def rotate_batch(images):
    """(rotated (4B, H, W, C), labels (4B,) int32) for NHWC square images.

    Rotation-major order: rows [k*B, (k+1)*B) are the batch rotated by k*90 degrees counter-clockwise
    (`jnp.rot90(x, k, axes=(1, 2))`) with label k, so `rotated[:B]` is the unrotated batch.
    """
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise ValueError(f"rotate_batch needs square NHWC images, got shape {images.shape}")
    b = images.shape[0]
    rotated = jnp.concatenate([jnp.rot90(images, k, axes=(1, 2)) for k in range(4)], axis=0)
    labels = jnp.repeat(jnp.arange(4, dtype=jnp.int32), b)
    return rotated, labels


def rotation_loss(rotation_logits, labels):
    """Mean softmax cross-entropy of the rotation head (N, 4) against labels (N,) in 0..3."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(rotation_logits, labels))


def word_cross_entropy(word_logits, targets, mask):
    """Mean token cross-entropy over real positions only: (B, S, W, V), (B, S, W), (B, S, W) -> ().

    Padding contributes nothing, however large its logits; an all-padding batch gives 0.
    """
    ce = optax.softmax_cross_entropy_with_integer_labels(word_logits.astype(jnp.float32), targets)
    mask = mask.astype(jnp.float32)
    return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def stop_targets(mask):
    """(targets, weights), each (B, S), from a hierarchical report mask (B, S, W).

    With n real sentences (a prefix, as the tokenizer writes them): target 1 (STOP) at sentence
    n-1, 0 (CONTINUE) before it; weight 1 on the n real sentences, 0 after.
    """
    real = jnp.any(mask > 0, axis=-1)
    n = jnp.sum(real, axis=-1, keepdims=True)
    idx = jnp.arange(mask.shape[1])[None]
    return (idx == n - 1).astype(jnp.float32), (idx < n).astype(jnp.float32)


def stop_bce(stop_logits, mask):
    """Mean binary cross-entropy of the CONTINUE/STOP logits over each report's real sentences."""
    targets, weights = stop_targets(mask)
    bce = optax.sigmoid_binary_cross_entropy(stop_logits.astype(jnp.float32), targets)
    return jnp.sum(bce * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def report_generator_loss(word_logits, stop_logits, ids, mask, stop_weight: float = 1.0):
    """F's teacher-forced loss on real pairs: (total, {"word_ce", "stop_bce"})."""
    ce = word_cross_entropy(word_logits, ids, mask)
    stop = stop_bce(stop_logits, mask)
    return ce + stop_weight * stop, {"word_ce": ce, "stop_bce": stop}


def orthogonal_regularization(params, strength: float = 1e-4, exclude: Sequence[str] = ("shared",)):
    """BigGAN's off-diagonal orthogonal regularisation: strength/2 * sum_W ||(W^T W) * (1 - I)||_F^2.

    Each kernel with >= 2 dims is viewed as (fan_in, out) (flax layout), so W^T W compares output
    filters as in BigGAN's (out, fan_in) view; its gradient is BigGAN's 2*strength*W (W^T W * (1 - I)).
    Vectors and scalars (biases, gains) and any leaf whose path contains a name in `exclude`
    (default: G's shared label embedding, as in BigGAN) are skipped.
    """
    total = jnp.zeros((), jnp.float32)
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
        if leaf.ndim < 2 or any(n in exclude for n in names):
            continue
        w = leaf.reshape(-1, leaf.shape[-1]).astype(jnp.float32)
        gram = w.T @ w
        off = gram * (1.0 - jnp.eye(gram.shape[0], dtype=gram.dtype))
        total = total + jnp.sum(jnp.square(off))
    return 0.5 * strength * total
