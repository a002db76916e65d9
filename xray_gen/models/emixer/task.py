"""EMIXER training: labels -> image (BigGAN-style G) -> report (hierarchical F), three discriminators.

One jitted step = `d_steps` discriminator updates (each on its own slice of the global batch) then
one joint update of G and F:
- D_image: hinge on real vs generated images with the projection term for labelled rows only
  (unlabelled rows still train its unconditional and rotation heads), plus 1.0 x rotation CE on
  the four rotations of the real images (SSGAN; the GAN loss sees unrotated images only;
  `emixer.rotation_loss=False` drops both rotation terms and their 4x critic batches, as BigGAN).
- D_report / D_joint: hinge on real reports (one-hot ids) vs F's reports of generated images
  (softmax distributions through the same embedding), alone and paired with their image.
- G and F: the three generator hinge terms + 0.2 x rotation CE on rotated generated images, and
  F's teacher-forced word CE + stop BCE on real pairs. Gradients reach G through F's soft
  decoding of its images, and F through both paths.
Generated images are conditioned on label vectors drawn from the labelled rows of the batch, so
they follow the data's label distribution.

Two options keep F a language model while it is trained adversarially (the paper is silent on
both; text GANs usually need them): `emixer.f_pretrain_steps` first trains F alone by teacher
forcing (phase 0; G and the discriminators wait, and the joint phase starts with fresh Adam
moments), and `emixer.f_adversarial_weight` scales the adversarial gradient that reaches F's own
parameters (G still gets the full gradient through F's image input). Few labels: `emixer.label_fraction` keeps each
study's labels with that probability (a per-study hash, i.e. about that fraction of every class).
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from typing import Any

import flax
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from xray_gen.data import augment as aug
from xray_gen.data.pipeline import ToModelInputs, make_loader, open_split, workdir_tokenizer
from xray_gen.data.reports import split_sentences
from xray_gen.models.emixer import losses
from xray_gen.models.emixer.image_networks import SPECTRAL_STATS, Discriminator, Generator
from xray_gen.models.emixer.report_networks import (JointDiscriminator, ReportDiscriminator, ReportGenerator,
                                                    encoder_param_mask)
from xray_gen.training import loop
from xray_gen.training.accumulation import accumulate

MUTABLE = ["batch_stats", SPECTRAL_STATS]


@flax.struct.dataclass
class EmixerState:
    step: jax.Array
    rng: jax.Array
    gen: dict  # {"G": variables, "F": variables}; variables = {"params", "batch_stats"?, "spectral_stats"?}
    disc: dict  # {"image", "report", "joint"}: variables
    gen_opt: optax.OptState
    disc_opt: optax.OptState
    g_ema: dict  # EMA of G's params (sampling and evaluation use it with G's running statistics)


@dataclasses.dataclass(frozen=True)
class ReportAndLabelInputs(grain.transforms.Map):
    """Adds `report_ids`/`report_mask` (S, W): findings then impression sentences, tokenised
    hierarchically; and `labeled_mask` (1 with probability `label_fraction`, by a hash of the study id
    and seed, so the labelled subset is fixed for a run and the same in every epoch)."""

    tokenizer: Any
    max_sentences: int
    max_words: int
    label_fraction: float
    seed: int

    def map(self, ex: dict[str, Any]) -> dict[str, Any]:
        ex = dict(ex)
        text = lambda k: ex[k].decode("utf-8") if isinstance(ex[k], bytes) else str(ex[k])
        sentences = split_sentences(text("findings")) + split_sentences(text("impression"))
        ex["report_ids"], ex["report_mask"] = self.tokenizer.encode_hierarchical(
            sentences, self.max_sentences, self.max_words)
        draw = zlib.crc32(f"{self.seed}:{ex['study_id']}".encode()) / 2**32
        ex["labeled_mask"] = np.float32(draw < self.label_fraction)  # *_mask keys pass ToModelInputs
        return ex


class EmixerTask(loop.Task):
    name = "emixer"
    accumulates_gradients = True

    def __init__(self, config, workdir: str | None = None):
        super().__init__(config, workdir)
        e = config.emixer
        if not 0.0 < e.label_fraction <= 1.0:
            raise ValueError(f"emixer.label_fraction must be in (0, 1], got {e.label_fraction}")
        if config.train.batch_size % e.d_steps:
            raise ValueError(f"train.batch_size={config.train.batch_size} must divide into emixer.d_steps={e.d_steps} "
                             "slices (one per discriminator step)")
        accum = config.train.get("grad_accum_steps", 1)
        if accum < 1 or (config.train.batch_size // e.d_steps) % accum:
            raise ValueError(f"train.grad_accum_steps={accum} must divide each discriminator step's slice of "
                             f"{config.train.batch_size // e.d_steps} examples (train.batch_size / emixer.d_steps)")
        self.tokenizer = workdir_tokenizer(workdir, config.data, e.vocab_size) if workdir else None
        vocab = self.tokenizer.vocab_size if self.tokenizer else e.vocab_size
        res = config.data.resolution
        self.G = Generator(resolution=res, ch=e.g_ch, channel_multipliers=e.g_multipliers or None, z_dim=e.z_dim,
                           label_embed_dim=e.label_embed_dim, attention_resolution=e.g_attention or None,
                           out_channels=e.out_channels)
        self.D = Discriminator(ch=e.d_ch, channel_multipliers=e.d_multipliers or None,
                               attention_resolution=e.d_attention or None)
        cc = self.classifier().config.classifier
        self.F = ReportGenerator(vocab, e.max_sentences, e.max_words, feature_dim=e.f_hidden, sentence_hidden=e.f_hidden,
                                 embed_dim=e.f_hidden, word_hidden=e.f_hidden, word_layers=e.word_layers,
                                 encoder_blocks=tuple(cc.block_sizes), encoder_growth_rate=cc.growth_rate,
                                 encoder_init_features=cc.init_features, encoder_small_input=cc.small_input,
                                 encoder_trainable=e.encoder_trainable, label_tags=e.get("label_tags", False),
                                 sentence_feedback=e.get("sentence_feedback", False))
        if e.get("report_encoder", "flat") not in ("flat", "hierarchical"):
            raise ValueError(f"emixer.report_encoder={e.report_encoder!r} is not one of ('flat', 'hierarchical')")
        hier = e.get("report_encoder", "flat") == "hierarchical"
        self.D_report = ReportDiscriminator(vocab, e.report_embed_dim, e.report_hidden, hierarchical=hier)
        self.D_joint = JointDiscriminator(vocab, ch=e.joint_ch, embed_dim=e.report_embed_dim, hidden=e.report_hidden,
                                          hierarchical=hier)
        # G and F share one optimiser state but F (a language model) may use its own Adam settings:
        # with BigGAN's beta1 = 0 and a GAN-sized rate it learns its reports too slowly.
        f_lr = e.get("f_lr", 0.0) or e.g_lr
        f_b1 = e.b1 if e.get("f_b1", -1.0) < 0 else e.f_b1
        self.gen_tx = optax.multi_transform(
            {"G": optax.adam(e.g_lr, b1=e.b1, b2=e.b2), "F": optax.adam(f_lr, b1=f_b1, b2=e.b2)},
            lambda tree: {k: jax.tree.map(lambda _: k, v) for k, v in tree.items()})
        self.disc_tx = optax.adam(e.d_lr, b1=e.b1, b2=e.b2)
        self.f_pretrain_steps = int(e.get("f_pretrain_steps", 0))
        if not 0 <= self.f_pretrain_steps < config.train.num_steps:
            raise ValueError(f"emixer.f_pretrain_steps={self.f_pretrain_steps} must be in [0, train.num_steps="
                             f"{config.train.num_steps}): the joint phase needs steps too")

    # ---- prepared classifier (FID features, clinical agreement, F's image encoder) ------------
    def classifier(self):
        from xray_gen.models.classifier.prepared import PreparedClassifier

        e = self.config.emixer
        root = e.get("prepared_dir") or self.workdir or ""
        return PreparedClassifier(self.config.data, e.classifier_variant, e.classifier_steps,
                                  os.path.join(root, f"classifier_{self.config.data.resolution}"))

    def prerequisites(self) -> list[loop.Prerequisite]:
        """The evaluation classifier (FID features, clinical agreement; F's image encoder starts from it)."""
        return [self.classifier().prerequisite()]

    def warm_start(self, state: EmixerState) -> EmixerState:
        """F's DenseNet encoder from the trained classifier (the paper's pretrained CNN), read on the
        host after init (never a constant of the jitted init)."""
        if not self.config.emixer.encoder_from_classifier:
            return state
        _, cls = self.classifier().load()
        f = state.gen["F"]
        f = {**f, "params": {**f["params"], "encoder": cls.params},
             "batch_stats": {**f.get("batch_stats", {}), "encoder": cls.batch_stats}}
        return state.replace(gen={**state.gen, "F": f})

    # ---- data ---------------------------------------------------------------------------------
    def transforms(self):
        c, e = self.config, self.config.emixer
        return [ReportAndLabelInputs(self.tokenizer, e.max_sentences, e.max_words, e.label_fraction, c.seed),
                ToModelInputs.from_data_config(c.data, views=("frontal",))]

    def train_loader(self):
        c = self.config
        return make_loader(open_split(c.data, "train", views=("frontal",)), self.transforms(), c.train.batch_size,
                           seed=c.seed, worker_count=c.data.worker_count)

    # ---- phases: optional F pre-training, then the joint GAN ------------------------------------
    def phase(self, step: int) -> int:
        return 0 if step < self.f_pretrain_steps else 1

    def phase_step(self, phase: int):
        return self.f_pretrain_step if phase == 0 else self.train_step

    def enter_phase(self, state, phase: int):
        """The joint phase starts with fresh Adam moments for G and F (F's were shaped by teacher forcing alone)."""
        if phase == 1 and self.f_pretrain_steps:
            state = state.replace(gen_opt=self.gen_tx.init(self._trainable(state.gen)))
        return state

    # ---- pure functions -----------------------------------------------------------------------
    def init(self, rng):
        e, res = self.config.emixer, self.config.data.resolution
        k = jax.random.split(rng, 6)
        img = jnp.zeros((2, res, res, e.out_channels))
        y = jnp.zeros((2, 14))
        ids = jnp.zeros((2, e.max_sentences, e.max_words), jnp.int32)
        mask = jnp.ones((2, e.max_sentences, e.max_words))
        g = self.G.init(k[0], jnp.zeros((2, e.z_dim)), y)
        f = self.F.init(k[1], img, ids)  # F's DenseNet: warm_start puts the trained classifier's in
        disc = {"image": self.D.init(k[2], img, y), "report": self.D_report.init(k[3], ids, mask),
                "joint": self.D_joint.init(k[4], img, ids, mask)}
        gen = {"G": g, "F": f}
        return EmixerState(step=jnp.zeros((), jnp.int32), rng=k[5], gen=gen, disc=disc,
                           gen_opt=self.gen_tx.init(self._trainable(gen)), disc_opt=self.disc_tx.init(_params(disc)),
                           g_ema=g["params"])

    def _trainable(self, gen):
        """The optimised parameters: G's and F's (F's image encoder only when it is trainable)."""
        f_params = gen["F"]["params"]
        if not self.config.emixer.encoder_trainable:
            keep = encoder_param_mask(f_params)
            f_params = {k: v for k, v in f_params.items() if not jax.tree.leaves(keep[k])[0]}
        return {"G": gen["G"]["params"], "F": f_params}

    def _with_trainable(self, gen, trainable):
        return {"G": {**gen["G"], "params": trainable["G"]},
                "F": {**gen["F"], "params": {**gen["F"]["params"], **trainable["F"]}}}

    def _fake_labels(self, rng, y, has_label):
        """Label vectors for generated images: rows drawn from the labelled rows of the batch."""
        logits = jnp.where(has_label > 0, 0.0, -jnp.inf)
        logits = jnp.where(jnp.any(has_label > 0), logits, 0.0)  # no labelled row: any row (all zeros below)
        idx = jax.random.categorical(rng, logits, shape=(y.shape[0],))
        return jnp.where(jnp.any(has_label > 0), y[idx], jnp.zeros_like(y[idx]))

    def _generate(self, gen, z, y_fake, rng, train: bool):
        """(images, F's soft reports {dist, mask}, new G/F variables) of G(z, y) then F(images)."""
        e = self.config.emixer
        images, g_upd = self.G.apply(gen["G"], z, y_fake, train=train, mutable=MUTABLE)
        report, f_upd = self.F.apply(gen["F"], images, rng=rng, temperature=e.temperature, gumbel=e.gumbel,
                                     straight_through=e.straight_through, train=train, method=self.F.decode_soft,
                                     mutable=MUTABLE)
        return images, report, {"G": {**gen["G"], **g_upd}, "F": {**gen["F"], **f_upd}}

    def _real_images(self, batch):
        """The batch's frontal images as floats in [-1, 1], repeated to 3 channels when G makes 3."""
        real = aug.to_float(batch["frontal"])
        return jnp.repeat(real, 3, axis=-1) if self.config.emixer.out_channels == 3 else real

    def _critic_inputs(self, images, y, has):
        """D_image's batch: with rotation self-supervision the four rotations (labels and the
        projection term only on the unrotated quarter) and their rotation labels; else the images."""
        if not self.config.emixer.get("rotation_loss", True):
            return images, y, has, None
        rotated, rot_labels = losses.rotate_batch(images)
        b = images.shape[0]
        return rotated, jnp.tile(y, (4, 1)), jnp.concatenate([has, jnp.zeros(3 * b)]), rot_labels

    @staticmethod
    def _rotation_term(out, rot_labels):
        return jnp.zeros(()) if rot_labels is None else losses.rotation_loss(out.rotation_logits, rot_labels)

    def _teacher(self, f_vars, m):
        """F's teacher-forced loss on real pairs: (loss, (new F variables, {"f_word_ce", "f_stop_bce"}))."""
        out, upd = self.F.apply(f_vars, m["real"], m["ids"], train=True, mutable=MUTABLE)
        loss, terms = losses.report_generator_loss(out["word_logits"], out["stop_logits"], m["ids"], m["mask"],
                                                   self.config.emixer.stop_weight)
        return loss, ({**f_vars, **upd}, {f"f_{k}": v for k, v in terms.items()})

    def f_pretrain_step(self, state: EmixerState, frozen: dict, batch):
        """Phase 0: F alone, teacher-forced on the whole batch (G's gradient is zero, so Adam leaves it as is)."""
        accum = self.config.train.get("grad_accum_steps", 1)
        data = {"real": self._real_images(batch), "ids": batch["report_ids"], "mask": batch["report_mask"]}

        def micro(trainable, m, gen_vars, index):
            def loss_fn(trainable):
                g = self._with_trainable(gen_vars, trainable)
                loss, (f_vars, terms) = self._teacher(g["F"], m)
                return loss, ({**gen_vars, "F": {**f_vars, "params": gen_vars["F"]["params"]}}, terms)

            return jax.value_and_grad(loss_fn, has_aux=True)(trainable)

        trainable = self._trainable(state.gen)
        (loss, (new_gen, terms)), grads = accumulate(micro, trainable, data, state.gen, accum)
        steps, gen_opt = self.gen_tx.update(grads, state.gen_opt, trainable)
        gen = self._with_trainable(new_gen, optax.apply_updates(trainable, steps))
        return state.replace(step=state.step + 1, gen=gen, gen_opt=gen_opt), {"f_loss": loss, **terms}

    def train_step(self, state: EmixerState, frozen: dict, batch):
        """`d_steps` discriminator updates, each on its own slice of the batch, then one G/F update on
        the first slice; with train.grad_accum_steps = k each update averages k microbatches."""
        e, accum = self.config.emixer, self.config.train.get("grad_accum_steps", 1)
        rng = jax.random.fold_in(state.rng, state.step)
        real_all = self._real_images(batch)
        data_all = {"real": real_all, "y": batch["targets"] * batch["label_mask"], "has": batch["labeled_mask"],
                    "ids": batch["report_ids"], "mask": batch["report_mask"]}
        n = real_all.shape[0] // e.d_steps
        micro_key = lambda key, index: key if accum == 1 else jax.random.fold_in(key, index)
        gen, disc, disc_opt = state.gen, state.disc, state.disc_opt
        metrics = {}
        for i in range(e.d_steps):
            data = jax.tree.map(lambda x: x[i * n:(i + 1) * n], data_all)
            d_key = jax.random.fold_in(rng, i)

            def d_micro(params, m, disc_vars, index):
                k_y, k_z, k_f = jax.random.split(micro_key(d_key, index), 3)
                b = m["real"].shape[0]
                y_fake = self._fake_labels(k_y, m["y"], m["has"])
                fake, fake_report, _ = self._generate(gen, jax.random.normal(k_z, (b, e.z_dim)), y_fake, k_f, True)
                fake, fake_dist, fake_mask = jax.lax.stop_gradient((fake, fake_report["dist"], fake_report["mask"]))

                def d_loss_fn(params):
                    variables = {k: {**disc_vars[k], "params": params[k]} for k in disc_vars}
                    images, y_real, has, rot_labels = self._critic_inputs(m["real"], m["y"], m["has"])
                    out_real, upd = self.D.apply(variables["image"], images, y_real, has, train=True,
                                                 mutable=[SPECTRAL_STATS])
                    out_fake, _ = self.D.apply({**variables["image"], **upd}, fake, y_fake, jnp.ones(b), train=True,
                                               mutable=[SPECTRAL_STATS])
                    image_gan = losses.d_loss(out_real.score[:b], out_fake.score, e.loss)
                    rotation = self._rotation_term(out_real, rot_labels)
                    report_gan = losses.d_loss(self.D_report.apply(variables["report"], m["ids"], m["mask"]),
                                               self.D_report.apply(variables["report"], fake_dist, fake_mask), e.loss)
                    joint_real, j_upd = self.D_joint.apply(variables["joint"], m["real"], m["ids"], m["mask"], train=True,
                                                           mutable=[SPECTRAL_STATS])
                    joint_fake, _ = self.D_joint.apply({**variables["joint"], **j_upd}, fake, fake_dist, fake_mask,
                                                       train=True, mutable=[SPECTRAL_STATS])
                    joint_gan = losses.d_loss(joint_real, joint_fake, e.loss)
                    total = image_gan + losses.D_ROTATION_WEIGHT * rotation + e.report_weight * (report_gan + joint_gan)
                    updates = {"image": upd, "joint": j_upd}
                    new_vars = {k: {**disc_vars[k], **updates.get(k, {})} for k in disc_vars}
                    return total, (new_vars, {"d_image": image_gan, "d_rotation": rotation, "d_report": report_gan,
                                              "d_joint": joint_gan})

                return jax.value_and_grad(d_loss_fn, has_aux=True)(params)

            (d_total, (disc, terms)), grads = accumulate(d_micro, _params(disc), data, disc, accum)
            steps, disc_opt = self.disc_tx.update(grads, disc_opt, _params(disc))
            new_params = optax.apply_updates(_params(disc), steps)
            disc = {k: {**disc[k], "params": new_params[k]} for k in disc}
            metrics.update({"d_loss": d_total, **terms})

        g_key = jax.random.fold_in(rng, 100)
        d_vars = {k: {**disc[k]} for k in disc}

        def g_micro(trainable, m, gen_vars, index):
            k_y, k_z, k_f = jax.random.split(micro_key(g_key, index), 3)
            b = m["real"].shape[0]
            y_fake = self._fake_labels(k_y, m["y"], m["has"])
            z = jax.random.normal(k_z, (b, e.z_dim))

            def gen_loss_fn(trainable):
                g = self._with_trainable(gen_vars, trainable)
                f_adv = e.get("f_adversarial_weight", 1.0)
                g_adv = g if f_adv == 1.0 else {**g, "F": {**g["F"], "params": _scale_gradient(g["F"]["params"], f_adv)}}
                fake, report, new_gen = self._generate(g_adv, z, y_fake, k_f, True)
                images, y_in, has_in, rot_labels = self._critic_inputs(fake, y_fake, jnp.ones(b))
                out, _ = self.D.apply(d_vars["image"], images, y_in, has_in, train=False, mutable=[SPECTRAL_STATS])
                adv_image = losses.g_loss(out.score[:b], e.loss)
                rotation = self._rotation_term(out, rot_labels)
                adv_report = losses.g_loss(self.D_report.apply(d_vars["report"], report["dist"], report["mask"]), e.loss)
                joint, _ = self.D_joint.apply(d_vars["joint"], fake, report["dist"], report["mask"], train=False,
                                              mutable=[SPECTRAL_STATS])
                adv_joint = losses.g_loss(joint, e.loss)
                f_loss, (f_vars, f_terms) = self._teacher({**new_gen["F"], "params": g["F"]["params"]}, m)
                total = (adv_image + losses.G_ROTATION_WEIGHT * rotation + e.report_weight * (adv_report + adv_joint)
                         + e.teacher_weight * f_loss)
                if e.orthogonal_reg > 0:
                    total = total + losses.orthogonal_regularization(trainable["G"], e.orthogonal_reg)
                new_gen = {"G": new_gen["G"], "F": {**f_vars, "params": gen_vars["F"]["params"]}}
                return total, (new_gen, {"g_image": adv_image, "g_rotation": rotation, "g_report": adv_report,
                                         "g_joint": adv_joint, **f_terms})

            return jax.value_and_grad(gen_loss_fn, has_aux=True)(trainable)

        trainable = self._trainable(gen)
        data = jax.tree.map(lambda x: x[:n], data_all)
        (g_total, (new_gen, terms)), grads = accumulate(g_micro, trainable, data, gen, accum)
        steps, gen_opt = self.gen_tx.update(grads, state.gen_opt, trainable)
        gen = self._with_trainable(new_gen, optax.apply_updates(trainable, steps))
        g_ema = jax.tree.map(lambda a, w: a + (1.0 - e.ema_decay) * (w - a), state.g_ema, gen["G"]["params"])
        metrics.update({"g_loss": g_total, **terms})
        return state.replace(step=state.step + 1, gen=gen, disc=disc, gen_opt=gen_opt, disc_opt=disc_opt,
                             g_ema=g_ema), metrics

    # ---- sampling and evaluation ---------------------------------------------------------------
    def generate(self, state, y, rng, beam_size: int = 0):
        """(images, {"ids", "mask"}) for label vectors y with the EMA generator and F (greedy or beam)."""
        e = self.config.emixer
        g_vars = {**state.gen["G"], "params": state.g_ema}
        images = self.G.apply(g_vars, jax.random.normal(rng, (y.shape[0], e.z_dim)), y, train=False)
        if beam_size > 1:
            report = self.F.apply(state.gen["F"], images, beam_size=beam_size, method=self.F.beam_search)
        else:
            report = self.F.apply(state.gen["F"], images, method=self.F.greedy)
        return images, report

    def sample(self, state, workdir: str, labels: str | None = None, labels_file: str | None = None) -> dict:
        from xray_gen.models.emixer.sampling import sample

        return sample(self, state, workdir, labels, labels_file)

    def final_report(self, state, workdir: str, checkpoint_step: int | None = None) -> dict:
        from xray_gen.models.emixer.evaluation import final_report

        return final_report(self, state, workdir, checkpoint_step)


def _scale_gradient(tree, weight: float):
    """Identity in the forward pass; gradients through `tree` are multiplied by `weight`."""
    return jax.tree.map(lambda x: jax.lax.stop_gradient(x) + weight * (x - jax.lax.stop_gradient(x)), tree)


def _params(disc):
    return {k: v["params"] for k, v in disc.items()}
