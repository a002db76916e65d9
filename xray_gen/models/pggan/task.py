"""PGGAN training: progressive growing from 4x4 to `data.resolution` with WGAN-GP + drift and an
EMA generator (Karras et al. 2018, as the CXR PGGAN paper trains it).

Phases: one per level (resolution 4 * 2**level). A level above 0 starts with a fade-in of
`fade_images` images over which alpha ramps linearly 0 -> 1, then `stable_images` at alpha 1.
Alpha is a traced function of the step (no recompiles inside a level); the phase (level) is a
pure function of the step and lives in the checkpoint, so a run killed during a fade-in resumes
at the same level and alpha. During a fade-in the real images are blended the same way as the
generator's output (low-resolution version at alpha 0), so the critic cannot tell them apart by
sharpness alone.
"""

from __future__ import annotations

import math
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from xray_gen.data import augment as aug
from xray_gen.data.pipeline import ToModelInputs, make_loader, open_split
from xray_gen.models.gan_losses import gradient_penalty, wgan_d_loss, wgan_g_loss
from xray_gen.models.pggan.networks import Discriminator, Generator, downsample, fade, level_of, resolution_of, upsample
from xray_gen.training import loop


@flax.struct.dataclass
class PGGANState:
    step: jax.Array
    rng: jax.Array
    g_params: dict
    d_params: dict
    g_ema: dict  # exponential moving average of g_params: evaluation and sampling use it
    g_opt: optax.OptState
    d_opt: optax.OptState
    level: jax.Array  # level of the last step (resolution 4 * 2**level)
    alpha: jax.Array  # fade-in weight of the last step


class PGGANTask(loop.Task):
    name = "pggan"

    def __init__(self, config, workdir: str | None = None):
        super().__init__(config, workdir)
        p = config.pggan
        self.max_level = level_of(config.data.resolution)
        n = self.max_level + 1
        for field in ("channels", "batch_sizes"):
            if len(p[field]) < n:
                raise ValueError(f"pggan.{field} needs {n} entries (levels 4..{config.data.resolution} px), "
                                 f"got {len(p[field])}")
        for level, bs in enumerate(p.batch_sizes[:n]):
            group = bs if p.mbstd_group <= 0 else min(p.mbstd_group, bs)
            if bs % group:
                raise ValueError(f"pggan.batch_sizes[{level}]={bs} is not divisible by pggan.mbstd_group={p.mbstd_group}")
        if p.out_channels not in (1, 3):
            raise ValueError(f"pggan.out_channels must be 1 or 3, got {p.out_channels}")
        self.channels = tuple(p.channels[:n])
        self.generator = Generator(self.channels, p.out_channels)
        self.critic = Discriminator(self.channels, num_outputs=1, mbstd_group=p.mbstd_group)
        self.tx = optax.adam(p.learning_rate, b1=p.b1, b2=p.b2, eps=p.eps)
        # (level, fade-in steps, steps) per phase: images shown / that level's batch size.
        self.phases = []
        for level in range(n):
            bs = p.batch_sizes[level]
            fade_steps = 0 if level == 0 else math.ceil(p.fade_images / bs)
            stable = p.final_stable_images if level == self.max_level else p.stable_images
            self.phases.append((level, fade_steps, fade_steps + math.ceil(stable / bs)))
        self.boundaries = np.cumsum([steps for _, _, steps in self.phases])

    # ---- schedule ----------------------------------------------------------------------------
    def num_steps(self) -> int:
        """`train.num_steps`, or (-1) the sum of every level's fade-in and stable steps."""
        n = int(self.config.train.num_steps)
        return int(self.boundaries[-1]) if n < 0 else n

    def phase(self, step: int) -> int:
        return int(min(np.searchsorted(self.boundaries, step, side="right"), len(self.phases) - 1))

    def alpha(self, step, phase: int):
        """Fade-in weight of the step trained after `step` steps: the images shown in this level
        so far (this step's batch included) over `fade_images`, capped at 1; 1 at level 0."""
        level, fade_steps, _ = self.phases[phase]
        if fade_steps == 0:
            return jnp.float32(1.0)
        start = int(self.boundaries[phase - 1])
        shown = (jnp.asarray(step, jnp.float32) - start + 1.0) * self.config.pggan.batch_sizes[level]
        return jnp.clip(shown / self.config.pggan.fade_images, 0.0, 1.0)

    def ema_decay(self, step, phase: int):
        """`pggan.ema_decay`, warmed up after each growth as min(decay, (1 + k) / (10 + k)), k the
        steps trained at this level: right after a new block appears the average follows the
        weights closely, so it never mixes a trained network with the new block's initial values
        (with a fixed 0.999 and a short level the EMA generator is garbage while the raw one is
        fine). Long levels (the paper's ~50k steps) reach the full decay after ~9k steps."""
        decay = jnp.float32(self.config.pggan.ema_decay)
        if not self.config.pggan.ema_warmup:
            return decay
        k = jnp.asarray(step, jnp.float32) - (int(self.boundaries[phase - 1]) if phase > 0 else 0)
        return jnp.minimum(decay, (1.0 + k) / (10.0 + k))

    def phase_loader(self, phase: int):
        level = self.phases[phase][0]
        c = self.config
        transform = ToModelInputs.from_data_config(c.data, views=("frontal",), resolution=resolution_of(level))
        return make_loader(open_split(c.data, "train", views=("frontal",)), [transform], c.pggan.batch_sizes[level],
                           seed=c.seed + phase, worker_count=c.data.worker_count)

    def train_loader(self):
        return self.phase_loader(0)

    def enter_phase(self, state: PGGANState, phase: int) -> PGGANState:
        """Fresh Adam moments at each new resolution (as the reference code's new optimisers)."""
        if not self.config.pggan.reset_optimizer_per_level:
            return state
        return state.replace(g_opt=self.tx.init(state.g_params), d_opt=self.tx.init(state.d_params))

    # ---- prepared classifier -----------------------------------------------------------------
    def classifier(self):
        from xray_gen.models.classifier.prepared import PreparedClassifier

        p = self.config.pggan
        root = p.get("prepared_dir") or self.workdir
        return PreparedClassifier(self.config.data, p.classifier_variant, p.classifier_steps,
                                  os.path.join(root, f"classifier_{self.config.data.resolution}"))

    def prerequisites(self) -> list[loop.Prerequisite]:
        """The DenseNet classifier that labels generated images, drives class optimisation and
        gives the in-domain FID features."""
        return [self.classifier().prerequisite()]

    # ---- pure functions ----------------------------------------------------------------------
    def real_images(self, batch, level: int, alpha):
        """uint8 batch -> float [-1, 1] with the generator's channels, blended like its output."""
        real = aug.to_float(batch["frontal"])
        if self.config.pggan.out_channels == 3:
            real = jnp.repeat(real, 3, axis=-1)
        if level > 0:
            real = fade(upsample(downsample(real)), real, alpha)
        return real

    def generate(self, g_params, z, level: int | None = None, alpha=1.0):
        return self.generator.apply(g_params, z, self.max_level if level is None else level, alpha)

    def init(self, rng):
        p = self.config.pggan
        k_g, k_d = jax.random.split(rng)
        res = resolution_of(self.max_level)
        g = self.generator.init(k_g, jnp.zeros((1, p.latent_dim)), self.max_level)  # every level's layers
        d = self.critic.init(k_d, jnp.zeros((1, res, res, p.out_channels)), self.max_level)
        return PGGANState(step=jnp.zeros((), jnp.int32), rng=jax.random.fold_in(rng, 7), g_params=g, d_params=d,
                          g_ema=g, g_opt=self.tx.init(g), d_opt=self.tx.init(d), level=jnp.zeros((), jnp.int32),
                          alpha=jnp.ones((), jnp.float32))

    def phase_step(self, phase: int):
        level = self.phases[phase][0]
        p = self.config.pggan

        def step(state: PGGANState, frozen: dict, batch):
            k_d, k_g, k_gp = jax.random.split(jax.random.fold_in(state.rng, state.step), 3)
            alpha = self.alpha(state.step, phase)
            real = self.real_images(batch, level, alpha)
            n = real.shape[0]
            latents = lambda k: jax.random.normal(k, (n, p.latent_dim))
            critic = lambda dp, x: self.critic.apply(dp, x, level, alpha)[0][:, 0]
            fake = jax.lax.stop_gradient(self.generate(state.g_params, latents(k_d), level, alpha))

            def d_loss_fn(dp):
                d_real = critic(dp, real)
                gap = wgan_d_loss(d_real, critic(dp, fake))
                gp = gradient_penalty(lambda x: critic(dp, x), real, fake, k_gp, p.gp_weight)
                drift = p.drift_weight * jnp.mean(jnp.square(d_real))
                return gap + gp + drift, {"wasserstein": -gap, "gp": gp, "drift": drift}

            (d_loss, d_terms), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(state.d_params)
            d_updates, d_opt = self.tx.update(d_grads, state.d_opt, state.d_params)
            d_params = optax.apply_updates(state.d_params, d_updates)

            # Fresh latents for the generator step, against the just-updated critic (as the reference).
            g_loss_fn = lambda gp_: wgan_g_loss(critic(d_params, self.generate(gp_, latents(k_g), level, alpha)))
            g_loss, g_grads = jax.value_and_grad(g_loss_fn)(state.g_params)
            g_updates, g_opt = self.tx.update(g_grads, state.g_opt, state.g_params)
            g_params = optax.apply_updates(state.g_params, g_updates)
            decay = self.ema_decay(state.step, phase)
            g_ema = jax.tree.map(lambda e, w: e + (1.0 - decay) * (w - e), state.g_ema, g_params)
            new = state.replace(step=state.step + 1, g_params=g_params, d_params=d_params, g_ema=g_ema, g_opt=g_opt,
                                d_opt=d_opt, level=jnp.int32(level), alpha=alpha)
            metrics = {"d_loss": d_loss, "g_loss": g_loss, "alpha": alpha, "level": jnp.float32(level),
                       **{f"d_{k}": v for k, v in d_terms.items()}}
            return new, metrics

        return step

    def train_step(self, state, frozen, batch):
        return self.phase_step(0)(state, frozen, batch)

    def write_summaries(self, writer, state, step: int) -> None:
        images = self.sample_images(state, self.config.sample.num_samples, self.config.sample.seed)
        writer.write_images(step, {"ema_samples": (np.asarray(images[:16]) + 1.0) / 2.0})

    # ---- sampling ----------------------------------------------------------------------------
    def sample_images(self, state, n: int, seed: int, batch_size: int = 64) -> np.ndarray:
        """n uncurated EMA samples at the full resolution, z ~ N(0, 1) (no truncation), in [-1, 1]."""
        p = self.config.pggan
        generate = jax.jit(lambda g, z: self.generate(g, z))
        z = jax.random.normal(jax.random.PRNGKey(seed), (n, p.latent_dim))
        return np.concatenate([np.asarray(jax.device_get(generate(state.g_ema, z[i:i + batch_size])))
                               for i in range(0, n, batch_size)]) if n else np.zeros((0,))

    def sample(self, state, workdir: str) -> dict:
        """--mode=sample: a grid of uncurated EMA samples, or (archive.num_images > 0) a labelled
        synthetic archive made by latent class optimisation."""
        from xray_gen.images import write_grid, write_png

        c = self.config
        if c.archive.num_images > 0:
            from xray_gen.models.pggan.export import export

            return export(self, state, workdir)
        out_dir = os.path.join(workdir, "samples")
        os.makedirs(out_dir, exist_ok=True)
        images = self.sample_images(state, c.sample.num_samples, c.sample.seed)
        for i, image in enumerate(images):
            write_png(os.path.join(out_dir, f"sample_{i:04d}.png"), image)
        per_row = max(1, int(math.ceil(math.sqrt(len(images)))))
        write_grid(os.path.join(out_dir, "grid.png"), [list(images[i:i + per_row]) for i in range(0, len(images), per_row)])
        logging.info("wrote %d EMA samples and grid.png to %s", len(images), out_dir)
        return {"samples": len(images), "directory": out_dir}

    # ---- evaluation --------------------------------------------------------------------------
    def final_report(self, state, workdir: str, checkpoint_step: int | None = None) -> dict:
        from xray_gen.models.pggan.evaluation import final_report

        return final_report(self, state, workdir, checkpoint_step)
