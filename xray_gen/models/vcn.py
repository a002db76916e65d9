"""View-consistency network (XRayGAN section 2.3): do a frontal and a lateral image show the same body?

Siamese ResNet-18 with a 1-channel stem (shared weights for both views) -> fc 128 ->
L2-normalise x 10 -> |e_f - e_l| -> linear -> sigmoid (DESIGN.md section 6). Positives are the
frontal/lateral of one study; negatives pair each frontal with the lateral of another patient in
the batch (a roll of the batch, with same-patient pairs masked out). Trainable at any resolution,
because XRayGAN needs it at 32/64/128/256. Its probability is XRayGAN's view-consistency reward
and the evaluator's multi-view score.
"""

from __future__ import annotations

import os

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from xray_gen.data import augment as aug
from xray_gen.data.pipeline import ToModelInputs, make_loader, open_split
from xray_gen.evaluation.metrics import multilabel_auroc
from xray_gen.nn.resnet import ResNet
from xray_gen.training import loop
from xray_gen.training.inference import predict
from xray_gen.training.sharding import mesh_for
from xray_gen.training.summaries import write_input_grid


class ViewConsistencyNet(nn.Module):
    stage_sizes: tuple = (2, 2, 2, 2)
    widths: tuple = (64, 128, 256, 512)
    small_input: bool = False
    embed_dim: int = 128
    embed_scale: float = 10.0

    def setup(self):
        self.backbone = ResNet(stage_sizes=self.stage_sizes, widths=self.widths, small_input=self.small_input)
        self.embed = nn.Dense(self.embed_dim)
        self.head = nn.Dense(1)

    def embed_view(self, x, train: bool):
        e = self.embed(self.backbone(x, train))
        return self.embed_scale * e / (jnp.linalg.norm(e, axis=-1, keepdims=True) + 1e-6)

    def __call__(self, frontal, lateral, train: bool = False):
        """Logit that (frontal, lateral) come from the same patient; images float in [-1, 1]."""
        return self.pair_logit(self.embed_view(frontal, train), self.embed_view(lateral, train))

    def pair_logit(self, e_frontal, e_lateral):
        return self.head(jnp.abs(e_frontal - e_lateral))[..., 0]


def pair_logits(net, variables, frontal, lateral, train: bool):
    """Positive logits (matched pairs), negative logits (lateral rolled by one) and BN updates.

    Both views go through the backbone in one call, so batch statistics see the two views together.
    """
    n = frontal.shape[0]
    both = jnp.concatenate([frontal, lateral])
    if train:
        embeds, updates = net.apply(variables, both, True, method=ViewConsistencyNet.embed_view, mutable=["batch_stats"])
    else:
        embeds, updates = net.apply(variables, both, False, method=ViewConsistencyNet.embed_view), None
    e_f, e_l = embeds[:n], embeds[n:]
    pos = net.apply(variables, e_f, e_l, method=ViewConsistencyNet.pair_logit)
    neg = net.apply(variables, e_f, jnp.roll(e_l, 1, axis=0), method=ViewConsistencyNet.pair_logit)
    return pos, neg, updates


def pair_loss(pos, neg, neg_mask):
    """Balanced BCE: matched pairs labelled 1, mismatched pairs labelled 0 (masked same-patient)."""
    pos_loss = -jnp.mean(jax.nn.log_sigmoid(pos))
    neg_loss = -jnp.sum(jax.nn.log_sigmoid(-neg) * neg_mask) / jnp.maximum(jnp.sum(neg_mask), 1.0)
    return 0.5 * (pos_loss + neg_loss)


@flax.struct.dataclass
class VCNState:
    step: jax.Array
    rng: jax.Array
    params: dict
    batch_stats: dict
    opt_state: optax.OptState


class VCNTask(loop.Task):
    name = "vcn"

    def __init__(self, config, workdir=None):
        super().__init__(config, workdir)
        mc = config.vcn
        self.net = ViewConsistencyNet(
            stage_sizes=tuple(mc.stage_sizes), widths=tuple(mc.widths), small_input=mc.small_input, embed_dim=mc.embed_dim
        )
        self.tx = optax.adam(config.optim.learning_rate, b1=config.optim.b1, b2=config.optim.b2)

    def transform(self):
        """Study example -> model inputs (public so benchmarks feed the exact pipeline features)."""
        return ToModelInputs.from_data_config(self.config.data, views=("frontal", "lateral"))

    def train_loader(self):
        c = self.config
        return make_loader(open_split(c.data, "train"), [self.transform()], c.train.batch_size, seed=c.seed,
                           worker_count=c.data.worker_count)

    def eval_loader(self, split):
        c = self.config
        return make_loader(open_split(c.data, split), [self.transform()], c.eval.batch_size, seed=c.seed,
                           shuffle=False, num_epochs=1, worker_count=c.data.worker_count, drop_remainder=False)

    def init(self, rng):
        res = self.config.data.resolution
        x = jnp.zeros((2, res, res, 1))
        variables = self.net.init(rng, x, x, train=False)
        return VCNState(
            step=jnp.zeros((), jnp.int32), rng=jax.random.fold_in(rng, 1), params=variables["params"],
            batch_stats=variables["batch_stats"], opt_state=self.tx.init(variables["params"]),
        )

    def loss_and_grads(self, state: VCNState, batch):
        """(loss, (new batch stats, pos logits, neg logits, neg mask)), grads for one global batch."""
        aug_cfg = self.config.vcn.augment
        k_f, k_l = jax.random.split(jax.random.fold_in(state.rng, state.step))
        frontal = aug.augment(k_f, aug.to_float(batch["frontal"]), **aug_cfg)
        lateral = aug.augment(k_l, aug.to_float(batch["lateral"]), **aug_cfg)
        neg_mask = (batch["patient"] != jnp.roll(batch["patient"], 1)).astype(jnp.float32)

        def loss_fn(params):
            variables = {"params": params, "batch_stats": state.batch_stats}
            pos, neg, updates = pair_logits(self.net, variables, frontal, lateral, train=True)
            return pair_loss(pos, neg, neg_mask), (updates["batch_stats"], pos, neg, neg_mask)

        return jax.value_and_grad(loss_fn, has_aux=True)(state.params)

    def train_step(self, state: VCNState, frozen: dict, batch):
        (loss, (batch_stats, pos, neg, neg_mask)), grads = self.loss_and_grads(state, batch)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        accuracy = 0.5 * (jnp.mean(pos > 0) + jnp.sum((neg < 0) * neg_mask) / jnp.maximum(jnp.sum(neg_mask), 1.0))
        metrics = {"loss": loss, "accuracy": accuracy, "grad_norm": optax.tree.norm(grads)}
        return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state), metrics

    def predict_fn(self, state: VCNState, batch):
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        pos, neg, _ = pair_logits(self.net, variables, aug.to_float(batch["frontal"]), aug.to_float(batch["lateral"]), train=False)
        return {"pos": jax.nn.sigmoid(pos), "neg": jax.nn.sigmoid(neg), "neg_valid": batch["patient"] != jnp.roll(batch["patient"], 1)}

    def scores(self, state, split, limit=None):
        mesh = mesh_for(self.config)
        return predict(self.predict_fn, state, self.eval_loader(split), mesh, self.config.eval.batch_size, limit)

    def evaluate(self, state, step: int):
        out = self.scores(state, self.config.eval.split, self.config.eval.num_examples)
        return state, pair_metrics(out)

    def write_summaries(self, writer, state, step: int) -> None:
        write_input_grid(writer, step, self.eval_loader(self.config.eval.split), ("frontal", "lateral"), "validation_pairs")

    def final_report(self, state, workdir: str, checkpoint_step: int | None = None) -> dict:
        from xray_gen.evaluation.protocol import eval_dir as protocol_eval_dir, model_protocol, write_result_json

        c = self.config
        out = self.scores(state, c.eval.split, c.eval.num_examples)
        metrics = {"split": c.eval.split, **pair_metrics(out)}
        protocol = model_protocol(c, "vcn", state.params, len(out["pos"]))
        write_result_json(os.path.join(protocol_eval_dir(workdir, checkpoint_step), f"vcn_{c.eval.split}.json"), metrics, protocol)
        return metrics


def pair_metrics(out: dict) -> dict:
    """AUROC and accuracy (threshold 0.5) of same-body vs different-body pairs."""
    pos, neg = out["pos"], out["neg"][out["neg_valid"].astype(bool)]
    scores = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones_like(pos), np.zeros_like(neg)])
    auroc = multilabel_auroc(labels[:, None], scores[:, None])["macro"]
    accuracy = float(np.mean(np.concatenate([pos > 0.5, neg < 0.5])))
    return {"auroc": auroc, "accuracy": accuracy, "mean_p_same": float(pos.mean()), "mean_p_different": float(neg.mean())}
