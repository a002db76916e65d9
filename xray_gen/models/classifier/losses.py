"""Weighted binary cross-entropy with class weights from the training labels' frequencies."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def weighted_bce(logits, targets, mask, pos_weight, neg_weight):
    """Mean over valid entries of -(wP y log p + wN (1-y) log(1-p)), computed stably in logits."""
    per = -(pos_weight * targets * jax.nn.log_sigmoid(logits) + neg_weight * (1 - targets) * jax.nn.log_sigmoid(-logits))
    return jnp.sum(per * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def class_weights(targets: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """wP = (Np+Nn)/Np and wN = (Np+Nn)/Nn per class (a class never seen positive gets weight 1)."""
    n_pos = (targets * mask).sum(0)
    n_neg = ((1 - targets) * mask).sum(0)
    total = n_pos + n_neg
    pos = np.where(n_pos > 0, total / np.maximum(n_pos, 1), 1.0)
    neg = np.where(n_neg > 0, total / np.maximum(n_neg, 1), 1.0)
    return pos.astype(np.float32), neg.astype(np.float32)
