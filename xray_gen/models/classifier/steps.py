"""The classifier's pure functions: state, loss and gradients, the training step and prediction.

Every array is an argument (the state, the batch); the network is a Flax module and the
augmentation settings and learning rate are Python values of the config.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from xray_gen.data import augment as aug
from xray_gen.data.schema import NUM_LABELS
from xray_gen.models.classifier.losses import weighted_bce


@flax.struct.dataclass
class ClassifierState:
    step: jax.Array
    rng: jax.Array
    params: dict
    batch_stats: dict
    opt_state: optax.OptState
    lr_scale: jax.Array  # reduced on plateaus of validation macro AUROC (host-side decision)
    pos_weight: jax.Array  # (num_labels,) wP
    neg_weight: jax.Array  # (num_labels,) wN


def init_state(net, tx, resolution: int, rng, class_weights=None) -> ClassifierState:
    """Fresh state; `class_weights` (wP, wN) from the training labels, or ones."""
    variables = net.init(rng, jnp.zeros((1, resolution, resolution, 1)), train=False)
    pos, neg = class_weights or (np.ones(NUM_LABELS, np.float32), np.ones(NUM_LABELS, np.float32))
    return ClassifierState(
        step=jnp.zeros((), jnp.int32),
        rng=jax.random.fold_in(rng, 1),
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),  # {} for networks without batch norm
        opt_state=tx.init(variables["params"]),
        lr_scale=jnp.ones((), jnp.float32),
        pos_weight=jnp.asarray(pos),
        neg_weight=jnp.asarray(neg),
    )


def loss_and_grads(net, augment: dict, state: ClassifierState, batch):
    """(loss, (new batch stats, logits)), grads for one global batch (augmentation included)."""
    rng = jax.random.fold_in(state.rng, state.step)
    images = aug.augment(rng, aug.to_float(batch["frontal"]), **augment)

    def loss_fn(params):
        (logits, _), updates = net.apply(
            {"params": params, "batch_stats": state.batch_stats}, images, train=True, mutable=["batch_stats"]
        )
        loss = weighted_bce(logits, batch["targets"], batch["label_mask"], state.pos_weight, state.neg_weight)
        return loss, (updates.get("batch_stats", {}), logits)

    return jax.value_and_grad(loss_fn, has_aux=True)(state.params)


def train_step(net, tx, learning_rate: float, augment: dict, state: ClassifierState, batch):
    """Adam scaled by `learning_rate` x the state's plateau scale."""
    (loss, (batch_stats, logits)), grads = loss_and_grads(net, augment, state, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    lr = learning_rate * state.lr_scale
    params = jax.tree.map(lambda p, u: p - lr * u, state.params, updates)
    accuracy = jnp.sum(((logits > 0) == (batch["targets"] > 0.5)) * batch["label_mask"]) / jnp.sum(batch["label_mask"])
    metrics = {"loss": loss, "accuracy": accuracy, "learning_rate": lr, "grad_norm": optax.tree.norm(grads)}
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    return new_state, metrics


def predict(net, state: ClassifierState, batch):
    logits, features = net.apply(
        {"params": state.params, "batch_stats": state.batch_stats}, aug.to_float(batch["frontal"]), train=False
    )
    return {"probs": jax.nn.sigmoid(logits), "features": features, "targets": batch["targets"], "mask": batch["label_mask"]}
