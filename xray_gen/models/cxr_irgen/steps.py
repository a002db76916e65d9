"""CXR-IRGen's pure functions: conditioning, the latents' encoding and decoding, the state and the
denoiser's training step.

The step encodes the batch's frontal images with the frozen autoencoder (a posterior sample,
shifted and scaled to zero mean and unit variance), encodes the prompt and the reference image
with the frozen CLIP, and takes the epsilon (or v) loss of diffusion.py with 10% conditioning
dropout to the null condition (empty prompt, zero reference), so classifier-free guidance is
meaningful (the official code never drops the condition; DESIGN §6). Conditioning:
- U-Net: CLIP text token states (prompt padding masked) + the projected reference embedding as
  one extra context token;
- U-ViT: one token, the average of the pooled text and reference embeddings (the text alone
  without the reference switch).
Every trained stage's parameters come in the step's `frozen` argument ({"autoencoder", "clip",
"language", "prior"}); `Model` holds modules and static facts only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from xray_gen.data import augment as aug
from xray_gen.models.cxr_irgen import diffusion, networks
from xray_gen.nn import clip as clip_nn
from xray_gen.nn.autoencoder_kl import AutoencoderKL
from xray_gen.training.accumulation import accumulate


@flax.struct.dataclass
class CxrIRGenState:
    step: jax.Array
    rng: jax.Array
    params: dict  # the denoiser's
    opt_state: optax.OptState
    latent_scale: jax.Array  # 1 / std of the autoencoder's latents (measured after its training)
    latent_shift: jax.Array  # (H, W, C) their mean, subtracted before the scale


@dataclasses.dataclass(frozen=True)
class Model:
    """The modules and static facts the pure functions need (no arrays but the empty prompt's ids)."""

    vae: AutoencoderKL
    clip: clip_nn.CLIP
    denoiser: Any  # UNet2DConditionModel | UViT
    schedule: Any  # diffusion.make_schedule
    latent_shape: tuple
    backbone: str
    reference_image: bool
    resolution: int
    null_prompt: tuple  # (ids, mask) of the empty prompt

    def null_inputs(self, n: int = 1) -> dict:
        """Prompt ids/mask of the empty prompt and a zero reference: the unconditional inputs."""
        ids, mask = self.null_prompt
        r = self.resolution
        return {"prompt_ids": np.repeat(ids[None], n, 0), "prompt_mask": np.repeat(mask[None], n, 0),
                "reference": np.zeros((n, r, r, 1), np.uint8), "reference_flag": np.zeros((n,), np.float32)}


def condition(config, m: Model, clip_params, prompt_ids, prompt_mask, reference=None, reference_flag=None) -> dict:
    """The denoiser's condition pytree for a batch (see the module doc)."""
    tokens, pooled = m.clip.apply({"params": clip_params}, prompt_ids, prompt_mask, method=m.clip.encode_text)
    image = None
    if m.reference_image:
        pixels = networks.clip_images(config, m.clip, reference)
        _, image = m.clip.apply({"params": clip_params}, pixels, method=m.clip.encode_image)
        image = image * reference_flag[:, None].astype(image.dtype)  # no reference: zero embedding
    if m.backbone == "unet":
        mask = prompt_mask.astype(jnp.float32)
        if image is None:
            return {"context": tokens, "mask": mask}
        return {"context": jnp.concatenate([tokens, image[:, None, :].astype(tokens.dtype)], axis=1),
                "mask": jnp.concatenate([mask, jnp.ones_like(mask[:, :1])], axis=1)}
    vector = pooled if image is None else 0.5 * (pooled + image)
    return {"context": vector[:, None, :]}


def condition_of(config, m: Model, clip_params, inputs: dict) -> dict:
    return condition(config, m, clip_params, inputs["prompt_ids"], inputs["prompt_mask"], inputs.get("reference"),
                     inputs.get("reference_flag"))


def denoise_fn(m: Model, params):
    if m.backbone == "unet":
        return lambda x, t, c: m.denoiser.apply({"params": params}, x, t, c["context"], c["mask"])
    return lambda x, t, c: m.denoiser.apply({"params": params}, x, t, c["context"])


def encode_latents(m: Model, ae_params, images_uint8, rng, state: CxrIRGenState):
    """uint8 images -> the denoiser's latents (a posterior sample, or its mode when rng is None)."""
    posterior = networks.vae_encode(m.vae, ae_params, aug.to_float(images_uint8))
    z = posterior.mode() if rng is None else posterior.sample(rng)
    return networks.normalize_latents(z, state.latent_scale, state.latent_shift)


def decode_latents(m: Model, ae_params, z, state: CxrIRGenState):
    """The denoiser's latents -> images in [-1, 1]."""
    z = networks.denormalize_latents(z, state.latent_scale, state.latent_shift)
    return jnp.clip(networks.vae_decode(m.vae, ae_params, z), -1, 1)


def init_state(config, m: Model, rng, tx, latent_stats: dict) -> CxrIRGenState:
    """The denoiser's init needs the condition's shapes only (no trained stage is read here, so the
    loop's abstract init works before the stages exist and on restore)."""
    clip_shapes = jax.eval_shape(lambda: m.clip.init(jax.random.PRNGKey(0), **networks.clip_init_inputs(m.clip))["params"])
    null = jax.eval_shape(lambda p: condition_of(config, m, p, m.null_inputs()), clip_shapes)
    null = [jnp.zeros(s.shape, s.dtype) for s in null.values()]
    params = m.denoiser.init(jax.random.fold_in(rng, 1), jnp.zeros((1,) + m.latent_shape), jnp.zeros((1,)),
                             *null)["params"]
    return CxrIRGenState(step=jnp.zeros((), jnp.int32), rng=jax.random.fold_in(rng, 2), params=params,
                         opt_state=tx.init(params), latent_scale=jnp.float32(latent_stats["latent_scale"]),
                         latent_shift=jnp.asarray(latent_stats["latent_shift"], jnp.float32).reshape(m.latent_shape))


def make_train_step(config, m: Model, tx):
    """One AdamW step on the denoising loss; train.grad_accum_steps microbatches are averaged first."""
    x, accum = config.cxr_irgen, config.train.get("grad_accum_steps", 1)

    def step(state: CxrIRGenState, frozen: dict, batch):
        key = jax.random.fold_in(state.rng, state.step)
        null = condition_of(config, m, frozen["clip"], jax.tree.map(jnp.asarray, m.null_inputs()))

        def micro(params, mb, carry, index):
            k_z, k_loss = jax.random.split(key if accum == 1 else jax.random.fold_in(key, index))
            z = encode_latents(m, frozen["autoencoder"], mb["frontal"], k_z, state)
            cond = condition_of(config, m, frozen["clip"], mb)

            def loss_fn(params):
                loss, aux = diffusion.training_loss(denoise_fn(m, params), m.schedule, z, cond, k_loss,
                                                    x.prediction, x.cond_drop_prob, null)
                return loss, (carry, {"dropped": jnp.mean(aux["dropped"].astype(jnp.float32)), "latent_std": jnp.std(z)})

            return jax.value_and_grad(loss_fn, has_aux=True)(params)

        (loss, (_, aux)), grads = accumulate(micro, state.params, batch, (), accum)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state)
        return new, {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}

    return step
