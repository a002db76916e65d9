"""EMIXER's pure functions: the state, generation and the two phases' training steps.

One joint step = `d_steps` discriminator updates (each on its own slice of the global batch) then
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
they follow the data's label distribution. The optional phase 0 (`emixer.f_pretrain_steps`)
trains F alone by teacher forcing.

Steps are `(state, frozen, batch) -> (state, metrics)` (EMIXER reads no frozen network: `frozen`
is {}); the networks are Flax modules built once from the config (networks.py).
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import optax

from xray_gen.data import augment as aug
from xray_gen.models.emixer import losses
from xray_gen.models.emixer.image_networks import SPECTRAL_STATS
from xray_gen.models.emixer.networks import Networks
from xray_gen.models.emixer.report_networks import encoder_param_mask
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


def init_state(nets: Networks, config, rng, gen_tx, disc_tx) -> EmixerState:
    e, res = config.emixer, config.data.resolution
    k = jax.random.split(rng, 6)
    img = jnp.zeros((2, res, res, e.out_channels))
    y = jnp.zeros((2, 14))
    ids = jnp.zeros((2, e.max_sentences, e.max_words), jnp.int32)
    mask = jnp.ones((2, e.max_sentences, e.max_words))
    g = nets.G.init(k[0], jnp.zeros((2, e.z_dim)), y)
    f = nets.F.init(k[1], img, ids)  # F's DenseNet: the task's warm_start puts the trained classifier's in
    disc = {"image": nets.D.init(k[2], img, y), "report": nets.D_report.init(k[3], ids, mask),
            "joint": nets.D_joint.init(k[4], img, ids, mask)}
    gen = {"G": g, "F": f}
    return EmixerState(step=jnp.zeros((), jnp.int32), rng=k[5], gen=gen, disc=disc,
                       gen_opt=gen_tx.init(trainable(e, gen)), disc_opt=disc_tx.init(disc_params(disc)),
                       g_ema=g["params"])


def trainable(e, gen):
    """The optimised parameters: G's and F's (F's image encoder only when it is trainable)."""
    f_params = gen["F"]["params"]
    if not e.encoder_trainable:
        keep = encoder_param_mask(f_params)
        f_params = {k: v for k, v in f_params.items() if not jax.tree.leaves(keep[k])[0]}
    return {"G": gen["G"]["params"], "F": f_params}


def with_trainable(gen, params):
    return {"G": {**gen["G"], "params": params["G"]},
            "F": {**gen["F"], "params": {**gen["F"]["params"], **params["F"]}}}


def disc_params(disc):
    return {k: v["params"] for k, v in disc.items()}


def fake_labels(rng, y, has_label):
    """Label vectors for generated images: rows drawn from the labelled rows of the batch."""
    logits = jnp.where(has_label > 0, 0.0, -jnp.inf)
    logits = jnp.where(jnp.any(has_label > 0), logits, 0.0)  # no labelled row: any row (all zeros below)
    idx = jax.random.categorical(rng, logits, shape=(y.shape[0],))
    return jnp.where(jnp.any(has_label > 0), y[idx], jnp.zeros_like(y[idx]))


def generate_soft(nets: Networks, e, gen, z, y_fake, rng, train: bool):
    """(images, F's soft reports {dist, mask}, new G/F variables) of G(z, y) then F(images)."""
    images, g_upd = nets.G.apply(gen["G"], z, y_fake, train=train, mutable=MUTABLE)
    report, f_upd = nets.F.apply(gen["F"], images, rng=rng, temperature=e.temperature, gumbel=e.gumbel,
                                 straight_through=e.straight_through, train=train, method=nets.F.decode_soft,
                                 mutable=MUTABLE)
    return images, report, {"G": {**gen["G"], **g_upd}, "F": {**gen["F"], **f_upd}}


def generate(nets: Networks, e, state: EmixerState, y, rng, beam_size: int = 0):
    """(images, {"ids", "mask"}) for label vectors y with the EMA generator and F (greedy or beam)."""
    g_vars = {**state.gen["G"], "params": state.g_ema}
    images = nets.G.apply(g_vars, jax.random.normal(rng, (y.shape[0], e.z_dim)), y, train=False)
    return images, describe(nets, state.gen["F"], images, beam_size)


def describe(nets: Networks, f_vars, images, beam_size: int = 0):
    """F's report {"ids", "mask"} of images: beam search when beam_size > 1, else greedy."""
    if beam_size > 1:
        return nets.F.apply(f_vars, images, beam_size=beam_size, method=nets.F.beam_search)
    return nets.F.apply(f_vars, images, method=nets.F.greedy)


def real_images(e, batch):
    """The batch's frontal images as floats in [-1, 1], repeated to 3 channels when G makes 3."""
    real = aug.to_float(batch["frontal"])
    return jnp.repeat(real, 3, axis=-1) if e.out_channels == 3 else real


def _critic_inputs(e, images, y, has):
    """D_image's batch: with rotation self-supervision the four rotations (labels and the
    projection term only on the unrotated quarter) and their rotation labels; else the images."""
    if not e.get("rotation_loss", True):
        return images, y, has, None
    rotated, rot_labels = losses.rotate_batch(images)
    b = images.shape[0]
    return rotated, jnp.tile(y, (4, 1)), jnp.concatenate([has, jnp.zeros(3 * b)]), rot_labels


def _rotation_term(out, rot_labels):
    return jnp.zeros(()) if rot_labels is None else losses.rotation_loss(out.rotation_logits, rot_labels)


def _teacher(nets: Networks, e, f_vars, m):
    """F's teacher-forced loss on real pairs: (loss, (new F variables, {"f_word_ce", "f_stop_bce"}))."""
    out, upd = nets.F.apply(f_vars, m["real"], m["ids"], train=True, mutable=MUTABLE)
    loss, terms = losses.report_generator_loss(out["word_logits"], out["stop_logits"], m["ids"], m["mask"],
                                               e.stop_weight)
    return loss, ({**f_vars, **upd}, {f"f_{k}": v for k, v in terms.items()})


def _scale_gradient(tree, weight: float):
    """Identity in the forward pass; gradients through `tree` are multiplied by `weight`."""
    return jax.tree.map(lambda x: jax.lax.stop_gradient(x) + weight * (x - jax.lax.stop_gradient(x)), tree)


def make_f_pretrain_step(nets: Networks, config, gen_tx):
    """Phase 0: F alone, teacher-forced on the whole batch (G's gradient is zero, so Adam leaves it as is)."""
    e, accum = config.emixer, config.train.get("grad_accum_steps", 1)

    def step(state: EmixerState, frozen: dict, batch):
        data = {"real": real_images(e, batch), "ids": batch["report_ids"], "mask": batch["report_mask"]}

        def micro(params, m, gen_vars, index):
            def loss_fn(params):
                g = with_trainable(gen_vars, params)
                loss, (f_vars, terms) = _teacher(nets, e, g["F"], m)
                return loss, ({**gen_vars, "F": {**f_vars, "params": gen_vars["F"]["params"]}}, terms)

            return jax.value_and_grad(loss_fn, has_aux=True)(params)

        params = trainable(e, state.gen)
        (loss, (new_gen, terms)), grads = accumulate(micro, params, data, state.gen, accum)
        updates, gen_opt = gen_tx.update(grads, state.gen_opt, params)
        gen = with_trainable(new_gen, optax.apply_updates(params, updates))
        return state.replace(step=state.step + 1, gen=gen, gen_opt=gen_opt), {"f_loss": loss, **terms}

    return step


def make_train_step(nets: Networks, config, gen_tx, disc_tx):
    """The joint phase: `d_steps` discriminator updates, each on its own slice of the batch, then one
    G/F update on the first slice; with train.grad_accum_steps = k each update averages k microbatches."""
    e, accum = config.emixer, config.train.get("grad_accum_steps", 1)
    micro_key = lambda key, index: key if accum == 1 else jax.random.fold_in(key, index)

    def step(state: EmixerState, frozen: dict, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        real_all = real_images(e, batch)
        data_all = {"real": real_all, "y": batch["targets"] * batch["label_mask"], "has": batch["labeled_mask"],
                    "ids": batch["report_ids"], "mask": batch["report_mask"]}
        n = real_all.shape[0] // e.d_steps
        gen, disc, disc_opt = state.gen, state.disc, state.disc_opt
        metrics = {}
        for i in range(e.d_steps):
            data = jax.tree.map(lambda x: x[i * n:(i + 1) * n], data_all)
            d_key = jax.random.fold_in(rng, i)

            def d_micro(params, m, disc_vars, index):
                k_y, k_z, k_f = jax.random.split(micro_key(d_key, index), 3)
                b = m["real"].shape[0]
                y_fake = fake_labels(k_y, m["y"], m["has"])
                fake, fake_report, _ = generate_soft(nets, e, gen, jax.random.normal(k_z, (b, e.z_dim)), y_fake, k_f,
                                                     True)
                fake, fake_dist, fake_mask = jax.lax.stop_gradient((fake, fake_report["dist"], fake_report["mask"]))

                def d_loss_fn(params):
                    variables = {k: {**disc_vars[k], "params": params[k]} for k in disc_vars}
                    images, y_real, has, rot_labels = _critic_inputs(e, m["real"], m["y"], m["has"])
                    out_real, upd = nets.D.apply(variables["image"], images, y_real, has, train=True,
                                                 mutable=[SPECTRAL_STATS])
                    out_fake, _ = nets.D.apply({**variables["image"], **upd}, fake, y_fake, jnp.ones(b), train=True,
                                               mutable=[SPECTRAL_STATS])
                    image_gan = losses.d_loss(out_real.score[:b], out_fake.score, e.loss)
                    rotation = _rotation_term(out_real, rot_labels)
                    report_gan = losses.d_loss(nets.D_report.apply(variables["report"], m["ids"], m["mask"]),
                                               nets.D_report.apply(variables["report"], fake_dist, fake_mask), e.loss)
                    joint_real, j_upd = nets.D_joint.apply(variables["joint"], m["real"], m["ids"], m["mask"],
                                                           train=True, mutable=[SPECTRAL_STATS])
                    joint_fake, _ = nets.D_joint.apply({**variables["joint"], **j_upd}, fake, fake_dist, fake_mask,
                                                       train=True, mutable=[SPECTRAL_STATS])
                    joint_gan = losses.d_loss(joint_real, joint_fake, e.loss)
                    total = image_gan + losses.D_ROTATION_WEIGHT * rotation + e.report_weight * (report_gan + joint_gan)
                    updates = {"image": upd, "joint": j_upd}
                    new_vars = {k: {**disc_vars[k], **updates.get(k, {})} for k in disc_vars}
                    return total, (new_vars, {"d_image": image_gan, "d_rotation": rotation, "d_report": report_gan,
                                              "d_joint": joint_gan})

                return jax.value_and_grad(d_loss_fn, has_aux=True)(params)

            (d_total, (disc, terms)), grads = accumulate(d_micro, disc_params(disc), data, disc, accum)
            updates, disc_opt = disc_tx.update(grads, disc_opt, disc_params(disc))
            new_params = optax.apply_updates(disc_params(disc), updates)
            disc = {k: {**disc[k], "params": new_params[k]} for k in disc}
            metrics.update({"d_loss": d_total, **terms})

        g_key = jax.random.fold_in(rng, 100)
        d_vars = {k: {**disc[k]} for k in disc}

        def g_micro(params, m, gen_vars, index):
            k_y, k_z, k_f = jax.random.split(micro_key(g_key, index), 3)
            b = m["real"].shape[0]
            y_fake = fake_labels(k_y, m["y"], m["has"])
            z = jax.random.normal(k_z, (b, e.z_dim))

            def gen_loss_fn(params):
                g = with_trainable(gen_vars, params)
                f_adv = e.get("f_adversarial_weight", 1.0)
                g_adv = g if f_adv == 1.0 else {**g, "F": {**g["F"], "params": _scale_gradient(g["F"]["params"], f_adv)}}
                fake, report, new_gen = generate_soft(nets, e, g_adv, z, y_fake, k_f, True)
                images, y_in, has_in, rot_labels = _critic_inputs(e, fake, y_fake, jnp.ones(b))
                out, _ = nets.D.apply(d_vars["image"], images, y_in, has_in, train=False, mutable=[SPECTRAL_STATS])
                adv_image = losses.g_loss(out.score[:b], e.loss)
                rotation = _rotation_term(out, rot_labels)
                adv_report = losses.g_loss(nets.D_report.apply(d_vars["report"], report["dist"], report["mask"]),
                                           e.loss)
                joint, _ = nets.D_joint.apply(d_vars["joint"], fake, report["dist"], report["mask"], train=False,
                                              mutable=[SPECTRAL_STATS])
                adv_joint = losses.g_loss(joint, e.loss)
                f_loss, (f_vars, f_terms) = _teacher(nets, e, {**new_gen["F"], "params": g["F"]["params"]}, m)
                total = (adv_image + losses.G_ROTATION_WEIGHT * rotation + e.report_weight * (adv_report + adv_joint)
                         + e.teacher_weight * f_loss)
                if e.orthogonal_reg > 0:
                    total = total + losses.orthogonal_regularization(params["G"], e.orthogonal_reg)
                new_gen = {"G": new_gen["G"], "F": {**f_vars, "params": gen_vars["F"]["params"]}}
                return total, (new_gen, {"g_image": adv_image, "g_rotation": rotation, "g_report": adv_report,
                                         "g_joint": adv_joint, **f_terms})

            return jax.value_and_grad(gen_loss_fn, has_aux=True)(params)

        params = trainable(e, gen)
        data = jax.tree.map(lambda x: x[:n], data_all)
        (g_total, (new_gen, terms)), grads = accumulate(g_micro, params, data, gen, accum)
        updates, gen_opt = gen_tx.update(grads, state.gen_opt, params)
        gen = with_trainable(new_gen, optax.apply_updates(params, updates))
        g_ema = jax.tree.map(lambda a, w: a + (1.0 - e.ema_decay) * (w - a), state.g_ema, gen["G"]["params"])
        metrics.update({"g_loss": g_total, **terms})
        return state.replace(step=state.step + 1, gen=gen, disc=disc, gen_opt=gen_opt, disc_opt=disc_opt,
                             g_ema=g_ema), metrics

    return step
