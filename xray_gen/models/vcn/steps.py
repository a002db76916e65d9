"""The view-consistency network's pure functions: state, loss and gradients, the training step,
prediction. Every array is an argument; the network is a Flax module."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import optax

from xray_gen.data import augment as aug
from xray_gen.models.vcn.losses import pair_loss
from xray_gen.models.vcn.networks import pair_logits


@flax.struct.dataclass
class VCNState:
    step: jax.Array
    rng: jax.Array
    params: dict
    batch_stats: dict
    opt_state: optax.OptState


def init_state(net, tx, resolution: int, rng) -> VCNState:
    x = jnp.zeros((2, resolution, resolution, 1))
    variables = net.init(rng, x, x, train=False)
    return VCNState(
        step=jnp.zeros((), jnp.int32), rng=jax.random.fold_in(rng, 1), params=variables["params"],
        batch_stats=variables["batch_stats"], opt_state=tx.init(variables["params"]),
    )


def loss_and_grads(net, augment: dict, state: VCNState, batch):
    """(loss, (new batch stats, pos logits, neg logits, neg mask)), grads for one global batch."""
    k_f, k_l = jax.random.split(jax.random.fold_in(state.rng, state.step))
    frontal = aug.augment(k_f, aug.to_float(batch["frontal"]), **augment)
    lateral = aug.augment(k_l, aug.to_float(batch["lateral"]), **augment)
    neg_mask = (batch["patient"] != jnp.roll(batch["patient"], 1)).astype(jnp.float32)

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        pos, neg, updates = pair_logits(net, variables, frontal, lateral, train=True)
        return pair_loss(pos, neg, neg_mask), (updates["batch_stats"], pos, neg, neg_mask)

    return jax.value_and_grad(loss_fn, has_aux=True)(state.params)


def train_step(net, tx, augment: dict, state: VCNState, batch):
    (loss, (batch_stats, pos, neg, neg_mask)), grads = loss_and_grads(net, augment, state, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    accuracy = 0.5 * (jnp.mean(pos > 0) + jnp.sum((neg < 0) * neg_mask) / jnp.maximum(jnp.sum(neg_mask), 1.0))
    metrics = {"loss": loss, "accuracy": accuracy, "grad_norm": optax.tree.norm(grads)}
    return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state), metrics


def predict(net, state: VCNState, batch):
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    pos, neg, _ = pair_logits(net, variables, aug.to_float(batch["frontal"]), aug.to_float(batch["lateral"]), train=False)
    return {"pos": jax.nn.sigmoid(pos), "neg": jax.nn.sigmoid(neg), "neg_valid": batch["patient"] != jnp.roll(batch["patient"], 1)}
