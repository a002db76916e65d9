"""Multi-label CXR classifier (DenseNet-121, as in the PGGAN paper) that evaluation rests on.

Weighted BCE with per-class wP = (Np+Nn)/Np and wN = (Np+Nn)/Nn from the training labels,
on-device rotation/brightness/contrast augmentation (no flip by default: it swaps sides), Adam
whose learning rate is reduced when validation macro AUROC plateaus, and per-class Youden-J
thresholds from the validation ROC saved with every checkpoint. Its pooled penultimate features
are the in-domain feature extractor for FID; its probabilities give clinical-efficacy AUROC.
"""

from __future__ import annotations

import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from xray_gen.data import augment as aug
from xray_gen.data.pipeline import ToModelInputs, make_loader, open_split
from xray_gen.data.schema import CHEXPERT_LABELS, NUM_LABELS, binarize
from xray_gen.evaluation.metrics import multilabel_auroc, youden_thresholds
from xray_gen.nn.densenet import DenseNet
from xray_gen.training import loop
from xray_gen.training.inference import predict
from xray_gen.training.sharding import mesh_for, replicated
from xray_gen.training.summaries import write_input_grid


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


def build_network(mc) -> DenseNet:
    return DenseNet(
        num_classes=NUM_LABELS,
        block_sizes=tuple(mc.block_sizes),
        growth_rate=mc.growth_rate,
        init_features=mc.init_features,
        small_input=mc.small_input,
    )


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

    # ---- pure functions ---------------------------------------------------------------------
    def init(self, rng):
        res = self.config.data.resolution
        variables = self.net.init(rng, jnp.zeros((1, res, res, 1)), train=False)
        pos, neg = self._weights or (np.ones(NUM_LABELS, np.float32), np.ones(NUM_LABELS, np.float32))
        return ClassifierState(
            step=jnp.zeros((), jnp.int32),
            rng=jax.random.fold_in(rng, 1),
            params=variables["params"],
            batch_stats=variables.get("batch_stats", {}),  # {} for networks without batch norm
            opt_state=self.tx.init(variables["params"]),
            lr_scale=jnp.ones((), jnp.float32),
            pos_weight=jnp.asarray(pos),
            neg_weight=jnp.asarray(neg),
        )

    def loss_and_grads(self, state: ClassifierState, batch):
        """(loss, (new batch stats, logits)), grads for one global batch (augmentation included)."""
        rng = jax.random.fold_in(state.rng, state.step)
        images = aug.augment(rng, aug.to_float(batch["frontal"]), **self.config.classifier.augment)

        def loss_fn(params):
            (logits, _), updates = self.net.apply(
                {"params": params, "batch_stats": state.batch_stats}, images, train=True, mutable=["batch_stats"]
            )
            loss = weighted_bce(logits, batch["targets"], batch["label_mask"], state.pos_weight, state.neg_weight)
            return loss, (updates.get("batch_stats", {}), logits)

        return jax.value_and_grad(loss_fn, has_aux=True)(state.params)

    def train_step(self, state: ClassifierState, frozen: dict, batch):
        (loss, (batch_stats, logits)), grads = self.loss_and_grads(state, batch)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        lr = self.config.optim.learning_rate * state.lr_scale
        params = jax.tree.map(lambda p, u: p - lr * u, state.params, updates)
        accuracy = jnp.sum(((logits > 0) == (batch["targets"] > 0.5)) * batch["label_mask"]) / jnp.sum(batch["label_mask"])
        metrics = {"loss": loss, "accuracy": accuracy, "learning_rate": lr, "grad_norm": optax.tree.norm(grads)}
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
        return new_state, metrics

    def predict_fn(self, state: ClassifierState, batch):
        logits, features = self.net.apply(
            {"params": state.params, "batch_stats": state.batch_stats}, aug.to_float(batch["frontal"]), train=False
        )
        return {"probs": jax.nn.sigmoid(logits), "features": features, "targets": batch["targets"], "mask": batch["label_mask"]}

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

    def _reference_distances(self, state, features, workdir: str) -> dict:
        """FID/KID between `eval.split` and another real split, in this classifier's feature space."""
        from xray_gen.evaluation import fid
        from xray_gen.evaluation.features import params_checksum

        c = self.config
        other_split = "test" if c.eval.split != "test" else "validation"
        other = self.scores(state, other_split, c.eval.num_examples)["features"]
        name = f"{c.eval.split}_vs_{other_split}"
        if min(len(features), len(other)) < 2:
            logging.warning("reference FID skipped: fewer than 2 studies in %s or %s", c.eval.split, other_split)
            return {f"fid_{name}": None, f"kid_{name}": None}
        key = fid.StatsKey(
            dataset=f"{c.data.source}/{c.eval.split}", extractor="xray_gen_classifier_penultimate",
            weights_checksum=params_checksum({"params": state.params, "batch_stats": state.batch_stats}),
            image_count=len(features), resolution=c.data.resolution,
        )
        cache = fid.ReferenceStatsCache(os.path.join(workdir, "eval", "reference_stats"))
        reference = cache.get_or_compute(key, lambda: fid.FeatureStats.from_features(features))
        other_stats = fid.FeatureStats.from_features(other)
        subset = max(2, min(len(features), len(other), 2000) // 2)  # halves, so the KID spread is real
        return {
            f"fid_{name}": fid.frechet_distance(reference.mean, reference.cov, other_stats.mean, other_stats.cov),
            f"kid_{name}": list(fid.kid(features, other, num_subsets=50, max_subset_size=subset)),
        }

    def final_report(self, state, workdir: str, checkpoint_step: int | None = None) -> dict:
        """`--mode=evaluate`: per-class AUROC with a bootstrap CI on `eval.split`, plus the real-vs-real
        FID/KID between two splits in this classifier's feature space (the floor any generator's
        in-domain FID is compared with). Reference statistics are cached with checksums."""
        from xray_gen.evaluation.metrics import bootstrap_ci
        from xray_gen.evaluation.protocol import eval_dir as protocol_eval_dir, model_protocol, write_result_json

        c = self.config
        out = self.scores(state, c.eval.split, c.eval.num_examples)
        mask = out["mask"] > 0
        auroc = multilabel_auroc(out["targets"], out["probs"], mask, class_names=CHEXPERT_LABELS)
        ci = bootstrap_ci(
            lambda t, p, m: multilabel_auroc(t, p, m)["macro"], out["targets"], out["probs"], mask, n=c.eval.bootstrap
        )
        metrics = {
            "split": c.eval.split, "num_examples": int(len(out["probs"])), "macro_auroc": auroc["macro"],
            "macro_auroc_ci95": [ci[1], ci[2]], "auroc": auroc, "thresholds": self.thresholds().tolist(),
        }
        metrics.update(self._reference_distances(state, out["features"], workdir))
        protocol = model_protocol(c, "classifier", state.params, len(out["probs"]), c.eval.bootstrap)
        path = os.path.join(protocol_eval_dir(workdir, checkpoint_step), f"classifier_{c.eval.split}.json")
        write_result_json(path, metrics, protocol)
        return metrics


class PreparedClassifier:
    """The in-domain classifier a generative model declares as a prerequisite run in `directory`
    and then loads: FID features, clinical AUROC, labels of generated images. Its config is the
    classifier's `variant` on the model's own data config, so it sees the model's images."""

    def __init__(self, data_config, variant: str, num_steps: int, directory: str):
        from xray_gen.configs import classifier as classifier_configs

        cc = classifier_configs.get_config(variant)
        cc.data = data_config.copy_and_resolve_references()
        cc.train.num_steps = num_steps
        cc.train.eval_every = num_steps  # one validation at the end: Youden thresholds, AUROC in its logs
        self.config, self.directory = cc, directory
        self.task = ClassifierTask(cc)

    def prerequisite(self) -> loop.Prerequisite:
        """The run the model declares (the runner trains it before the model, once per directory)."""
        return loop.Prerequisite(os.path.basename(os.path.normpath(self.directory)), self.config, self.directory)

    def load(self):
        """(task, state): the task carries the validation Youden thresholds of the checkpoint."""
        state, _ = loop.restore_latest(self.task, self.config, self.directory)
        return self.task, state
