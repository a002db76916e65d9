"""CXR-IRGen training: the latent denoiser (U-ViT or U-Net) on frozen-autoencoder latents,
conditioned on the frozen CLIP's label prompt and reference-image embeddings.

Its prerequisite runs (`prerequisites()`: the stages of stages.py and the evaluation classifier)
are trained first by the runner, in sub-directories of the prepared root; `prepare()` then reads
(or measures once) the latents' shift and scale. The step encodes the batch's frontal
images with the frozen autoencoder (a posterior sample, shifted and scaled to zero mean and unit variance), encodes the prompt
and the reference image with the frozen CLIP, and takes the epsilon (or v) loss of diffusion.py with
10% conditioning dropout to the null condition (empty prompt, zero reference), so classifier-free
guidance is meaningful (the official code never drops the condition; DESIGN §6). Conditioning:
- U-Net: CLIP text token states (prompt padding masked) + the projected reference embedding as
  one extra context token;
- U-ViT: one token, the average of the pooled text and reference embeddings (the text alone
  without the reference switch).
The reference is a training image with the same labels, never the example itself; none: zeros.
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
from xray_gen.data.pipeline import make_loader, open_split, workdir_tokenizer
from xray_gen.models.cxr_irgen import diffusion, networks, stages, weights
from xray_gen.models.cxr_irgen.conditioning import ReferenceIndex
from xray_gen.models.cxr_irgen.inputs import CxrInputs, IndexedSource, ReferenceImages, training_labels
from xray_gen.nn.autoencoder_kl import AutoencoderKL
from xray_gen.nn.unet2d import UNet2DConditionModel, UNetConfig
from xray_gen.nn.uvit import UViT, uvit_config
from xray_gen.training import loop
from xray_gen.training.accumulation import accumulate

BACKBONES = ("uvit", "unet")


@flax.struct.dataclass
class CxrIRGenState:
    step: jax.Array
    rng: jax.Array
    params: dict  # the denoiser's
    opt_state: optax.OptState
    latent_scale: jax.Array  # 1 / std of the autoencoder's latents (measured after its training)
    latent_shift: jax.Array  # (H, W, C) their mean, subtracted before the scale


class CxrIRGenTask(loop.Task):
    name = "cxr_irgen"
    accumulates_gradients = True

    def __init__(self, config, workdir: str | None = None):
        super().__init__(config, workdir)
        x = config.cxr_irgen
        if x.backbone not in BACKBONES:
            raise ValueError(f"cxr_irgen.backbone={x.backbone!r} is not one of {BACKBONES}")
        self.prepared = stages.with_root(config, stages.prepared_root(config, workdir))  # stage helpers read it
        self.tokenizer = workdir_tokenizer(self.prepared_root(), config.data, x.vocab_size)
        vocab = self.tokenizer.vocab_size
        self.vae = AutoencoderKL(networks.vae_config(config))
        self.clip = networks.clip_model(config, vocab)
        if self.clip.text is None or (x.reference_image and self.clip.vision is None):
            missing = "text" if self.clip.text is None else "vision"
            raise ValueError(f"cxr_irgen.clip.pretrained={networks.pretrained_clip(config)} has no {missing} tower; the "
                             "prompt needs a text one and the reference image a vision one: use a full CLIPModel "
                             "folder (e.g. openai/clip-vit-large-patch14) or --config.cxr_irgen.reference_image=False")
        # The label prompt's ids: CLIP's own BPE for a pretrained CLIP, at its text length (77).
        self.prompt_len = self.clip.text.max_length
        self.prompt_tokenizer = networks.prompt_tokenizer(config, self.tokenizer, self.prompt_len)
        # The reports' ids: a pretrained BART's own BPE (`language.pretrained`), else the report tokenizer.
        self.report_tokenizer = networks.report_tokenizer(config, self.tokenizer)
        self.text_model = networks.report_model(config, vocab)
        self.prior = networks.prior_model(config, vocab)
        side, ch = networks.latent_side(config), networks.vae_config(config).latent_channels
        self.latent_shape = (side, side, ch)
        width = self.clip.text.width  # the text token states' (the U-Net's context)
        emb = self.clip.text.projection_dim or width  # the pooled text embedding's (the U-ViT's context)
        image_dim = (self.clip.vision.projection_dim or self.clip.vision.width) if x.reference_image else None
        clip_source = (f"cxr_irgen.clip.pretrained={networks.pretrained_clip(config)}" if networks.pretrained_clip(config)
                       else "cxr_irgen.clip")
        if x.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"cxr_irgen.compute_dtype={x.compute_dtype!r} is not one of ('float32', 'bfloat16')")
        numerics = dict(dtype=jnp.dtype(x.compute_dtype), remat=bool(x.remat))
        accum = config.train.get("grad_accum_steps", 1)
        if accum < 1 or config.train.batch_size % accum:
            raise ValueError(f"train.grad_accum_steps={accum} must divide train.batch_size={config.train.batch_size}")
        if x.backbone == "unet":
            if x.reference_image and image_dim != width:
                raise ValueError(f"{clip_source}: the image embedding's width {image_dim} (projection_dim) must equal "
                                 f"the text width {width} for the U-Net: the reference embedding is one more token "
                                 "among the text token states")
            u = x.unet
            if self.pretrained_unet():
                ucfg = weights.unet_config_from_diffusers(self.pretrained_unet())
                got = {"in_channels": ucfg.in_channels, "out_channels": ucfg.out_channels,
                       "cross_attention_dim": ucfg.cross_attention_dim}
                need = {"in_channels": ch, "out_channels": ch, "cross_attention_dim": width}
                for field in got:
                    if got[field] != need[field]:
                        raise ValueError(
                            f"cxr_irgen.unet.pretrained={self.pretrained_unet()}: its {field} is {got[field]}, this "
                            f"pipeline needs {need[field]} (latent channels of the autoencoder; "
                            f"cross_attention_dim = the text width of {clip_source})")
            else:
                ucfg = UNetConfig(in_channels=ch, out_channels=ch, block_out_channels=tuple(u.block_out_channels),
                                  cross_attn=tuple(u.cross_attn), layers_per_block=u.layers_per_block,
                                  num_heads=u.num_heads, cross_attention_dim=width, norm_num_groups=u.norm_num_groups)
            self.denoiser = UNet2DConditionModel(ucfg, **numerics)
            if side % self.denoiser.config.downsampling_factor:
                raise ValueError(f"latent side {side} is not a multiple of the U-Net's downsampling factor "
                                 f"{self.denoiser.config.downsampling_factor} (cxr_irgen.unet.block_out_channels)")
        else:
            if x.reference_image and image_dim != emb:
                raise ValueError(f"{clip_source}: the image embedding's width {image_dim} differs from the pooled "
                                 f"text embedding's {emb}; the U-ViT averages them")
            if self.pretrained_unet():
                raise ValueError("cxr_irgen.unet.pretrained is set but cxr_irgen.backbone is 'uvit': "
                                 "use --config.cxr_irgen.backbone=unet (or a unet variant)")
            width = {"width": int(x.uvit.width)} if x.uvit.get("width") else {}  # 0: the named size's
            self.denoiser = UViT(uvit_config(x.uvit.size, sample_size=side, in_channels=ch, patch_size=x.uvit.patch_size,
                                             context_dim=emb, num_context_tokens=1, **width), **numerics)
        self.schedule = diffusion.make_schedule(x.schedule, x.num_train_timesteps)
        self.tx = optax.chain(optax.clip_by_global_norm(x.grad_clip),
                              optax.adamw(x.learning_rate, weight_decay=x.weight_decay))
        self._latent_stats = {"latent_scale": 1.0, "latent_shift": np.zeros(self.latent_shape, np.float32)}
        self._frozen = None
        self._references = None

    # ---- prerequisite runs (stages, evaluation classifier) -----------------------------------------
    def prepared_root(self) -> str:
        return self.prepared.cxr_irgen.prepared_dir

    def stage_dir(self, stage: str) -> str:
        return stages.stage_dir(self.prepared, stage)

    def classifier(self):
        from xray_gen.models.classifier.prepared import PreparedClassifier

        x = self.config.cxr_irgen
        return PreparedClassifier(self.config.data, x.classifier_variant, x.classifier_steps,
                                  os.path.join(self.prepared_root(), f"classifier_{self.config.data.resolution}"))

    def pretrained_unet(self) -> str:
        """The diffusers U-Net folder named by `cxr_irgen.unet.pretrained` ('' : start from random)."""
        return self.config.cxr_irgen.unet.get("pretrained", "") or ""

    def prerequisites(self) -> list[loop.Prerequisite]:
        """Every stage that trains here (a pretrained autoencoder or CLIP is loaded instead), in
        order, then the evaluation classifier."""
        return stages.stage_prerequisites(self.prepared) + [self.classifier().prerequisite()]

    def prerequisite_mismatch(self, prerequisite, error):
        if prerequisite.name not in stages.STAGES:
            return error
        return stages.stage_mismatch(self.config, prerequisite.name, prerequisite.directory, error)

    def latent_stats(self) -> dict:
        """{"latent_scale", "latent_shift"} of the autoencoder (stages.latent_stats)."""
        return stages.latent_stats(self.prepared)

    def prepare(self) -> None:
        """The latents' shift and scale (read, or measured once), which `init` puts in the state."""
        self._latent_stats = self.latent_stats()

    def frozen(self, phase: int = 0) -> dict:
        """{"autoencoder", "clip", "language", "prior"}: params of the trained stages (loaded once),
        the step's and the samplers' `frozen` argument."""
        if self._frozen is None:
            self._frozen = {name: stages.load_stage(self.prepared, name) for name in stages.STAGES}
        return self._frozen

    def random_frozen(self, phase: int, rng) -> dict:
        return {name: stages.stage_task(self.prepared, name).init_params(jax.random.fold_in(rng, i))
                for i, name in enumerate(stages.STAGES)}

    def use_random_stages(self, rng) -> dict:
        """Randomly initialised networks in place of the trained stages (benchmarks of sampling)."""
        self._frozen = self.random_frozen(0, rng)
        return self._frozen

    def references(self) -> ReferenceImages:
        """Reference images drawn from the training split (index built once per run)."""
        if self._references is None:
            source = IndexedSource(open_split(self.config.data, "train", views=("frontal",)))
            index = ReferenceIndex(training_labels(source.source))
            self._references = ReferenceImages(source, index, self.config.data.resolution,
                                               self.config.cxr_irgen.reference_fallback)
        return self._references

    # ---- conditioning ---------------------------------------------------------------------------
    def condition(self, clip_params, prompt_ids, prompt_mask, reference=None, reference_flag=None) -> dict:
        """The denoiser's condition pytree for a batch (see the module doc)."""
        tokens, pooled = self.clip.apply({"params": clip_params}, prompt_ids, prompt_mask, method=self.clip.encode_text)
        image = None
        if self.config.cxr_irgen.reference_image:
            pixels = networks.clip_images(self.config, self.clip, reference)
            _, image = self.clip.apply({"params": clip_params}, pixels, method=self.clip.encode_image)
            image = image * reference_flag[:, None].astype(image.dtype)  # no reference: zero embedding
        if self.config.cxr_irgen.backbone == "unet":
            mask = prompt_mask.astype(jnp.float32)
            if image is None:
                return {"context": tokens, "mask": mask}
            return {"context": jnp.concatenate([tokens, image[:, None, :].astype(tokens.dtype)], axis=1),
                    "mask": jnp.concatenate([mask, jnp.ones_like(mask[:, :1])], axis=1)}
        vector = pooled if image is None else 0.5 * (pooled + image)
        return {"context": vector[:, None, :]}

    def null_inputs(self, n: int = 1) -> dict:
        """Prompt ids/mask of the empty prompt and a zero reference: the unconditional inputs."""
        ids, mask = self.prompt_tokenizer.encode_flat("", self.prompt_len)
        r = self.config.data.resolution
        return {"prompt_ids": np.repeat(ids[None], n, 0), "prompt_mask": np.repeat(mask[None], n, 0),
                "reference": np.zeros((n, r, r, 1), np.uint8), "reference_flag": np.zeros((n,), np.float32)}

    def condition_of(self, clip_params, inputs: dict) -> dict:
        return self.condition(clip_params, inputs["prompt_ids"], inputs["prompt_mask"], inputs.get("reference"),
                              inputs.get("reference_flag"))

    def denoise_fn(self, params):
        if self.config.cxr_irgen.backbone == "unet":
            return lambda x, t, c: self.denoiser.apply({"params": params}, x, t, c["context"], c["mask"])
        return lambda x, t, c: self.denoiser.apply({"params": params}, x, t, c["context"])

    # ---- pure functions -------------------------------------------------------------------------
    def init(self, rng):
        # The denoiser's init needs the condition's shapes only (no trained stage is read here, so
        # the loop's abstract init works before prepare() and on restore).
        null = jax.eval_shape(lambda p: self.condition_of(p, self.null_inputs()), self._clip_shapes())
        null = [jnp.zeros(s.shape, s.dtype) for s in null.values()]
        params = self.denoiser.init(jax.random.fold_in(rng, 1), jnp.zeros((1,) + self.latent_shape), jnp.zeros((1,)),
                                    *null)["params"]
        return CxrIRGenState(step=jnp.zeros((), jnp.int32), rng=jax.random.fold_in(rng, 2), params=params,
                             opt_state=self.tx.init(params),
                             latent_scale=jnp.float32(self._latent_stats["latent_scale"]),
                             latent_shift=jnp.asarray(self._latent_stats["latent_shift"], jnp.float32).reshape(self.latent_shape))

    def warm_start(self, state):
        """A pretrained U-Net's weights (`cxr_irgen.unet.pretrained`) in place of the random init."""
        if not self.pretrained_unet():
            return state
        params = weights.load_diffusers_unet(self.pretrained_unet(), self.denoiser.config)
        logging.info("CXR-IRGen: denoiser starts from %s", self.pretrained_unet())
        return state.replace(params=jax.tree.map(lambda new, old: jnp.asarray(new, old.dtype), params, state.params))

    def _clip_shapes(self):
        inputs = networks.clip_init_inputs(self.clip)
        return jax.eval_shape(lambda: self.clip.init(jax.random.PRNGKey(0), **inputs)["params"])

    def encode_latents(self, ae_params, images_uint8, rng, state):
        """uint8 images -> the denoiser's latents (a posterior sample, or its mode when rng is None)."""
        posterior = networks.vae_encode(self.vae, ae_params, aug.to_float(images_uint8))
        z = posterior.mode() if rng is None else posterior.sample(rng)
        return networks.normalize_latents(z, state.latent_scale, state.latent_shift)

    def decode_latents(self, ae_params, z, state):
        """The denoiser's latents -> images in [-1, 1]."""
        z = networks.denormalize_latents(z, state.latent_scale, state.latent_shift)
        return jnp.clip(networks.vae_decode(self.vae, ae_params, z), -1, 1)

    def train_step(self, state, frozen, batch):
        """One AdamW step on the denoising loss; train.grad_accum_steps microbatches are averaged first."""
        x, accum = self.config.cxr_irgen, self.config.train.get("grad_accum_steps", 1)
        key = jax.random.fold_in(state.rng, state.step)
        null = self.condition_of(frozen["clip"], jax.tree.map(jnp.asarray, self.null_inputs()))

        def micro(params, m, carry, index):
            k_z, k_loss = jax.random.split(key if accum == 1 else jax.random.fold_in(key, index))
            z = self.encode_latents(frozen["autoencoder"], m["frontal"], k_z, state)
            cond = self.condition_of(frozen["clip"], m)

            def loss_fn(params):
                loss, aux = diffusion.training_loss(self.denoise_fn(params), self.schedule, z, cond, k_loss,
                                                    x.prediction, x.cond_drop_prob, null)
                return loss, (carry, {"dropped": jnp.mean(aux["dropped"].astype(jnp.float32)), "latent_std": jnp.std(z)})

            return jax.value_and_grad(loss_fn, has_aux=True)(params)

        (loss, (_, aux)), grads = accumulate(micro, state.params, batch, (), accum)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state)
        return new, {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}

    def train_loader(self):
        c, x = self.config, self.config.cxr_irgen
        t = CxrInputs(self.tokenizer, c.data.resolution, prompt_len=self.prompt_len,
                      references=self.references() if x.reference_image else None, uncertain_as=c.data.uncertain_as,
                      prompt_tokenizer=self.prompt_tokenizer)
        return make_loader(IndexedSource(open_split(c.data, "train", views=("frontal",))), [t], c.train.batch_size,
                           seed=c.seed, worker_count=c.data.worker_count)

    # ---- sampling and evaluation ----------------------------------------------------------------
    def sample(self, state, workdir: str, labels: str | None = None, labels_file: str | None = None,
               image: str | None = None) -> dict:
        from xray_gen.models.cxr_irgen import sampling

        return sampling.sample(self, state, workdir, labels=labels, labels_file=labels_file, image=image)

    def final_report(self, state, workdir: str, checkpoint_step: int | None = None) -> dict:
        from xray_gen.models.cxr_irgen import evaluation

        return evaluation.final_report(self, state, workdir, checkpoint_step)
