"""Multi-label CXR classifier (DenseNet-121, as in the PGGAN paper) that evaluation rests on.

Weighted BCE with per-class wP = (Np+Nn)/Np and wN = (Np+Nn)/Nn from the training labels,
on-device rotation/brightness/contrast augmentation (no flip by default: it swaps sides), Adam
whose learning rate is reduced when validation macro AUROC plateaus, and per-class Youden-J
thresholds from the validation ROC saved with every checkpoint. Its pooled penultimate features
are the in-domain feature extractor for FID; its probabilities give clinical-efficacy AUROC.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from xray_gen.data.pipeline import ToModelInputs, make_loader, open_split
from xray_gen.data.schema import CHEXPERT_LABELS, NUM_LABELS, binarize
from xray_gen.evaluation.metrics import multilabel_auroc, youden_thresholds
from xray_gen.models.classifier import steps
from xray_gen.models.classifier.losses import class_weights
from xray_gen.models.classifier.networks import build_network
from xray_gen.training import loop
from xray_gen.training.inference import predict
from xray_gen.training.sharding import mesh_for, replicated
from xray_gen.training.summaries import write_input_grid


class ClassifierTask(loop.Task):
    name = "classifier"

    def __init__(self, config, workdir=None):
        super().__init__(config, workdir)
        self.net = build_network(config.classifier)
        self.tx = optax.scale_by_adam(b1=config.optim.b1, b2=config.optim.b2)
        self._weights = None  # computed from training labels on a fresh start (prepare)
        self.tracker = {"best": -1.0, "bad_evals": 0, "lr_scale": 1.0, "thresholds": None, "history": []}

    # ---- data -------------------------------------------------------------------------------
    def transform(self):
        """Study example -> model inputs (public so benchmarks feed the exact pipeline features)."""
        return ToModelInputs.from_data_config(self.config.data, views=("frontal",))

    def train_loader(self):
        c = self.config
        return make_loader(
            open_split(c.data, "train", views=("frontal",)), [self.transform()], c.train.batch_size, seed=c.seed, worker_count=c.data.worker_count
        )

    def eval_loader(self, split: str):
        c = self.config
        return make_loader(
            open_split(c.data, split, views=("frontal",)), [self.transform()], c.eval.batch_size, seed=c.seed, shuffle=False,
            num_epochs=1, worker_count=c.data.worker_count, drop_remainder=False,
        )

    def prepare(self):
        """Estimates the class weights from the first `weight_estimate_size` training labels."""
        source = open_split(self.config.data, "train", views=("frontal",))
        n = min(len(source), self.config.classifier.weight_estimate_size)
        labels = np.stack([np.asarray(source[i]["labels"], np.float32) for i in range(n)])
        self._weights = class_weights(*binarize(labels, self.config.data.uncertain_as))
        logging.info("class weights from %d training studies: wP=%s", n, np.round(self._weights[0], 2).tolist())

    # ---- the pure functions (steps.py) ----------------------------------------------------------
    def init(self, rng):
        return steps.init_state(self.net, self.tx, self.config.data.resolution, rng, self._weights)

    def loss_and_grads(self, state, batch):
        return steps.loss_and_grads(self.net, dict(self.config.classifier.augment), state, batch)

    def train_step(self, state, frozen: dict, batch):
        c = self.config
        return steps.train_step(self.net, self.tx, c.optim.learning_rate, dict(c.classifier.augment), state, batch)

    def predict_fn(self, state, batch):
        return steps.predict(self.net, state, batch)

    # ---- evaluation -------------------------------------------------------------------------
    def scores(self, state, split: str, limit: int | None = None) -> dict:
        mesh = mesh_for(self.config)
        return predict(self.predict_fn, state, self.eval_loader(split), mesh, self.config.eval.batch_size, limit)

    def evaluate(self, state, step: int):
        """Validation macro AUROC, Youden thresholds and the plateau rule for the learning rate."""
        c = self.config
        out = self.scores(state, c.eval.split, c.eval.num_examples)
        auroc = multilabel_auroc(out["targets"], out["probs"], out["mask"] > 0, class_names=CHEXPERT_LABELS)
        t = self.tracker
        t["thresholds"] = youden_thresholds(out["targets"], out["probs"], out["mask"] > 0).tolist()
        t["history"].append([step, auroc["macro"]])
        if auroc["macro"] > t["best"] + c.classifier.plateau.min_delta:
            t["best"], t["bad_evals"] = auroc["macro"], 0
        else:
            t["bad_evals"] += 1
            if t["bad_evals"] >= c.classifier.plateau.patience:
                t["lr_scale"] *= c.classifier.plateau.factor
                t["bad_evals"] = 0
                logging.info("validation AUROC plateaued: learning-rate scale -> %g", t["lr_scale"])
        state = state.replace(lr_scale=jax.device_put(jnp.float32(t["lr_scale"]), replicated(mesh_for(c))))
        metrics = {"macro_auroc": auroc["macro"], "best_macro_auroc": t["best"]}
        metrics.update({f"auroc/{k}": v for k, v in auroc.items() if k != "macro" and np.isfinite(v)})
        return state, metrics

    def write_summaries(self, writer, state, step: int) -> None:
        write_input_grid(writer, step, self.eval_loader(self.config.eval.split), ("frontal",), "validation_inputs")

    def host_state(self) -> dict:
        return dict(self.tracker)

    def load_host_state(self, host_state: dict) -> None:
        if host_state:
            self.tracker = dict(host_state)

    def thresholds(self) -> np.ndarray:
        """Per-class Youden-J thresholds from the last validation (0.5 before any evaluation)."""
        t = self.tracker.get("thresholds")
        return np.nan_to_num(np.asarray(t, np.float64), nan=0.5) if t is not None else np.full(NUM_LABELS, 0.5)

    def feature_extractor(self, state):
        """The in-domain FID extractor: pooled penultimate features of this trained classifier."""
        from xray_gen.evaluation.features import classifier_extractor

        variables = {"params": state.params, "batch_stats": state.batch_stats}
        return classifier_extractor(
            lambda v, x: self.net.apply(v, x, train=False)[1], variables, name="xray_gen_classifier_penultimate",
            resize_to=self.config.data.resolution, batch_size=self.config.eval.batch_size,
        )

    def final_report(self, state, workdir: str, checkpoint_step: int | None = None) -> dict:
        from xray_gen.models.classifier import evaluation

        return evaluation.final_report(self, state, workdir, checkpoint_step)
