"""Balanced same-body / different-body cross-entropy of the view-consistency network."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def pair_loss(pos, neg, neg_mask):
    """Balanced BCE: matched pairs labelled 1, mismatched pairs labelled 0 (masked same-patient)."""
    pos_loss = -jnp.mean(jax.nn.log_sigmoid(pos))
    neg_loss = -jnp.sum(jax.nn.log_sigmoid(-neg) * neg_mask) / jnp.maximum(jnp.sum(neg_mask), 1.0)
    return 0.5 * (pos_loss + neg_loss)
