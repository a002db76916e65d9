"""CXR-IRGen for the training loop: the latent denoiser (U-ViT or U-Net) on frozen-autoencoder
latents, conditioned on the frozen CLIP's label prompt and reference-image embeddings (steps.py).

Its prerequisite runs (`prerequisites()`: the stages of stages.py and the evaluation classifier)
are trained first by the runner, in sub-directories of the prepared root; `prepare()` then reads
(or measures once) the latents' shift and scale. The reference is a training image with the same
labels, never the example itself; none: zeros. Networks in networks.py, sampling in generate.py,
evaluation in evaluation.py.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from xray_gen.data.pipeline import make_loader, open_split, workdir_tokenizer
from xray_gen.models.cxr_irgen import diffusion, networks, stages, steps, weights
from xray_gen.models.cxr_irgen.conditioning import ReferenceIndex
from xray_gen.models.cxr_irgen.inputs import CxrInputs, IndexedSource, ReferenceImages, training_labels
from xray_gen.models.cxr_irgen.steps import CxrIRGenState
from xray_gen.nn.autoencoder_kl import AutoencoderKL
from xray_gen.training import loop


class CxrIRGenTask(loop.Task):
    name = "cxr_irgen"
    accumulates_gradients = True

    def __init__(self, config, workdir: str | None = None):
        super().__init__(config, workdir)
        x = config.cxr_irgen
        accum = config.train.get("grad_accum_steps", 1)
        if accum < 1 or config.train.batch_size % accum:
            raise ValueError(f"train.grad_accum_steps={accum} must divide train.batch_size={config.train.batch_size}")
        self.prepared = stages.with_root(config, stages.prepared_root(config, workdir))  # stage helpers read it
        self.tokenizer = workdir_tokenizer(self.prepared_root(), config.data, x.vocab_size)
        vocab = self.tokenizer.vocab_size
        self.vae = AutoencoderKL(networks.vae_config(config))
        self.clip = networks.clip_model(config, vocab)
        networks.check_clip_towers(config, self.clip)
        # The label prompt's ids: CLIP's own BPE for a pretrained CLIP, at its text length (77).
        self.prompt_len = self.clip.text.max_length
        self.prompt_tokenizer = networks.prompt_tokenizer(config, self.tokenizer, self.prompt_len)
        # The reports' ids: a pretrained BART's own BPE (`language.pretrained`), else the report tokenizer.
        self.report_tokenizer = networks.report_tokenizer(config, self.tokenizer)
        self.text_model = networks.report_model(config, vocab)
        self.prior = networks.prior_model(config, vocab)
        side, ch = networks.latent_side(config), networks.vae_config(config).latent_channels
        self.latent_shape = (side, side, ch)
        self.denoiser = networks.denoiser_model(config, self.clip, self.latent_shape)
        self.schedule = diffusion.make_schedule(x.schedule, x.num_train_timesteps)
        self.model = steps.Model(self.vae, self.clip, self.denoiser, self.schedule, self.latent_shape, x.backbone,
                                 bool(x.reference_image), config.data.resolution,
                                 self.prompt_tokenizer.encode_flat("", self.prompt_len))
        self.tx = optax.chain(optax.clip_by_global_norm(x.grad_clip),
                              optax.adamw(x.learning_rate, weight_decay=x.weight_decay))
        self._step = steps.make_train_step(config, self.model, self.tx)
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
        return networks.pretrained_unet(self.config)

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

    # ---- conditioning and latents (steps.py) -----------------------------------------------------
    def null_inputs(self, n: int = 1) -> dict:
        return self.model.null_inputs(n)

    def condition_of(self, clip_params, inputs: dict) -> dict:
        return steps.condition_of(self.config, self.model, clip_params, inputs)

    def denoise_fn(self, params):
        return steps.denoise_fn(self.model, params)

    def encode_latents(self, ae_params, images_uint8, rng, state):
        return steps.encode_latents(self.model, ae_params, images_uint8, rng, state)

    def decode_latents(self, ae_params, z, state):
        return steps.decode_latents(self.model, ae_params, z, state)

    # ---- pure functions -------------------------------------------------------------------------
    def init(self, rng) -> CxrIRGenState:
        return steps.init_state(self.config, self.model, rng, self.tx, self._latent_stats)

    def warm_start(self, state):
        """A pretrained U-Net's weights (`cxr_irgen.unet.pretrained`) in place of the random init."""
        if not self.pretrained_unet():
            return state
        params = weights.load_diffusers_unet(self.pretrained_unet(), self.denoiser.config)
        logging.info("CXR-IRGen: denoiser starts from %s", self.pretrained_unet())
        return state.replace(params=jax.tree.map(lambda new, old: jnp.asarray(new, old.dtype), params, state.params))

    def train_step(self, state, frozen, batch):
        return self._step(state, frozen, batch)

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
        from xray_gen.models.cxr_irgen import generate

        return generate.sample(self, state, workdir, labels=labels, labels_file=labels_file, image=image)

    def final_report(self, state, workdir: str, checkpoint_step: int | None = None) -> dict:
        from xray_gen.models.cxr_irgen import evaluation

        return evaluation.final_report(self, state, workdir, checkpoint_step)
