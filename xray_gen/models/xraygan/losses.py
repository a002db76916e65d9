"""XRayGAN objective (paper section 2.4) as plain functions of arrays.

Discriminators: WGAN-GP (lambda 10). Generators: adversarial WGAN term + pixel L2 to the paired real
image + view-consistency (VC) reward from the frozen VCN. Paper weights: pixel 100 (official value
too), adversarial 1, VC 1 with the reward subtracted; the official code instead uses BCE(p, 1) with
weight 0.1 (DESIGN.md section 6) -- both forms are available.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp

from xray_gen.models.gan_losses import gradient_penalty, wgan_d_loss, wgan_g_loss  # noqa: F401 (re-exported)

Array = jax.Array


def pixel_l2(fake, real):
    """Mean squared error between generated and paired real images (paper weight 100, by the caller)."""
    return jnp.mean(jnp.square(jnp.asarray(fake, jnp.float32) - jnp.asarray(real, jnp.float32)))


def vc_reward_loss(p_same, form: str = "paper", from_logits: bool = False):
    """View-consistency term for the generator, given the VCN's same-patient probability.

    form="paper": -mean(p), the reward subtracted from the loss (weight 1 in the paper).
    form="official": BCE(p, 1) = -mean(log p) (weight 0.1 in the official code).
    from_logits=True takes VCN logits instead of probabilities (stable log-sigmoid for BCE).
    """
    p_same = jnp.asarray(p_same, jnp.float32)
    if form == "paper":
        return -jnp.mean(jax.nn.sigmoid(p_same) if from_logits else p_same)
    if form == "official":
        if from_logits:
            return -jnp.mean(jax.nn.log_sigmoid(p_same))
        return -jnp.mean(jnp.log(jnp.clip(p_same, 1e-7, 1.0)))
    raise ValueError(f"unknown vc form {form!r}: use 'paper' or 'official'")


ArrayOrViews = Union[Array, Sequence[Array]]


def _views(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def generator_objective(
    fake_scores: ArrayOrViews,
    fake: ArrayOrViews,
    real: ArrayOrViews,
    p_same: Optional[Array] = None,
    *,
    adv_weight: float = 1.0,
    pixel_weight: float = 100.0,
    vc_weight: float = 1.0,
    vc_form: str = "paper",
    vc_from_logits: bool = False,
):
    """Weighted sum of the generator terms at one stage; returns (total, {term: value}).

    fake_scores / fake / real are an array or a sequence of per-view arrays (frontal, lateral);
    adversarial and pixel terms are summed over views, as in the official trainer. p_same (the
    VCN output on generated pairs) is optional: without it the VC term is absent (e.g. stage-0
    pre-training). Terms in the dict are unweighted; `total` applies the weights.
    """
    fake_scores, fake, real = _views(fake_scores), _views(fake), _views(real)
    if not len(fake_scores) == len(fake) == len(real):
        raise ValueError(f"views differ: {len(fake_scores)} scores, {len(fake)} fakes, {len(real)} reals")
    terms = {
        "adv": sum(wgan_g_loss(s) for s in fake_scores),
        "pixel": sum(pixel_l2(f, r) for f, r in zip(fake, real)),
    }
    total = adv_weight * terms["adv"] + pixel_weight * terms["pixel"]
    if p_same is not None:
        terms["vc"] = vc_reward_loss(p_same, vc_form, vc_from_logits)
        total = total + vc_weight * terms["vc"]
    return total, terms
