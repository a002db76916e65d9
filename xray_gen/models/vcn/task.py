"""View-consistency network (XRayGAN section 2.3): do a frontal and a lateral image show the same body?

Siamese ResNet-18 with a 1-channel stem (shared weights for both views) -> fc 128 ->
L2-normalise x 10 -> |e_f - e_l| -> linear -> sigmoid (DESIGN.md section 6). Positives are the
frontal/lateral of one study; negatives pair each frontal with the lateral of another patient in
the batch (a roll of the batch, with same-patient pairs masked out). Trainable at any resolution,
because XRayGAN needs it at 32/64/128/256. Its probability is XRayGAN's view-consistency reward
and the evaluator's multi-view score.
"""

from __future__ import annotations

import optax

from xray_gen.data.pipeline import ToModelInputs, make_loader, open_split
from xray_gen.models.vcn import evaluation, steps
from xray_gen.models.vcn.networks import ViewConsistencyNet
from xray_gen.training import loop
from xray_gen.training.inference import predict
from xray_gen.training.sharding import mesh_for
from xray_gen.training.summaries import write_input_grid


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
        return steps.init_state(self.net, self.tx, self.config.data.resolution, rng)

    def loss_and_grads(self, state, batch):
        return steps.loss_and_grads(self.net, dict(self.config.vcn.augment), state, batch)

    def train_step(self, state, frozen: dict, batch):
        return steps.train_step(self.net, self.tx, dict(self.config.vcn.augment), state, batch)

    def predict_fn(self, state, batch):
        return steps.predict(self.net, state, batch)

    def scores(self, state, split, limit=None):
        mesh = mesh_for(self.config)
        return predict(self.predict_fn, state, self.eval_loader(split), mesh, self.config.eval.batch_size, limit)

    def evaluate(self, state, step: int):
        out = self.scores(state, self.config.eval.split, self.config.eval.num_examples)
        return state, evaluation.pair_metrics(out)

    def write_summaries(self, writer, state, step: int) -> None:
        write_input_grid(writer, step, self.eval_loader(self.config.eval.split), ("frontal", "lateral"), "validation_pairs")

    def final_report(self, state, workdir: str, checkpoint_step: int | None = None) -> dict:
        return evaluation.final_report(self, state, workdir, checkpoint_step)
