"""PGGAN's pure functions: the level schedule, generation and each level's training step
(WGAN-GP + drift, EMA generator; Karras et al. 2018 as the CXR PGGAN paper trains it).

Phases: one per level (resolution 4 * 2**level). A level above 0 starts with a fade-in of
`fade_images` images over which alpha ramps linearly 0 -> 1, then `stable_images` at alpha 1.
Alpha is a traced function of the step (no recompiles inside a level). During a fade-in the real
images are blended the same way as the generator's output (low-resolution version at alpha 0),
so the critic cannot tell them apart by sharpness alone. Steps are `(state, frozen, batch) ->
(state, metrics)`; PGGAN reads no frozen network (`frozen` is {}).
"""

from __future__ import annotations

import dataclasses
import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from xray_gen.data import augment as aug
from xray_gen.models.gan_losses import gradient_penalty, wgan_d_loss, wgan_g_loss
from xray_gen.models.pggan.networks import Networks, downsample, fade, resolution_of, upsample


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


@dataclasses.dataclass(frozen=True)
class Schedule:
    """(level, fade-in steps, steps) per phase (images shown / that level's batch size), with the
    cumulative step at which each ends; and the config facts alpha and the EMA decay need."""

    phases: tuple
    boundaries: tuple
    batch_sizes: tuple
    fade_images: int
    ema_decay: float
    ema_warmup: bool

    @classmethod
    def from_config(cls, p, max_level: int) -> "Schedule":
        phases = []
        for level in range(max_level + 1):
            bs = p.batch_sizes[level]
            fade_steps = 0 if level == 0 else math.ceil(p.fade_images / bs)
            stable = p.final_stable_images if level == max_level else p.stable_images
            phases.append((level, fade_steps, fade_steps + math.ceil(stable / bs)))
        boundaries = tuple(int(b) for b in np.cumsum([steps for _, _, steps in phases]))
        return cls(tuple(phases), boundaries, tuple(p.batch_sizes), p.fade_images, p.ema_decay, bool(p.ema_warmup))

    def phase_at(self, step: int) -> int:
        """The phase that step `step + 1` trains in."""
        return int(min(np.searchsorted(self.boundaries, step, side="right"), len(self.phases) - 1))

    def start(self, phase: int) -> int:
        return self.boundaries[phase - 1] if phase > 0 else 0

    def alpha(self, step, phase: int):
        """Fade-in weight of the step trained after `step` steps: the images shown in this level
        so far (this step's batch included) over `fade_images`, capped at 1; 1 at level 0."""
        level, fade_steps, _ = self.phases[phase]
        if fade_steps == 0:
            return jnp.float32(1.0)
        shown = (jnp.asarray(step, jnp.float32) - self.start(phase) + 1.0) * self.batch_sizes[level]
        return jnp.clip(shown / self.fade_images, 0.0, 1.0)

    def ema_decay_at(self, step, phase: int):
        """`pggan.ema_decay`, warmed up after each growth as min(decay, (1 + k) / (10 + k)), k the
        steps trained at this level: right after a new block appears the average follows the
        weights closely, so it never mixes a trained network with the new block's initial values
        (with a fixed 0.999 and a short level the EMA generator is garbage while the raw one is
        fine). Long levels (the paper's ~50k steps) reach the full decay after ~9k steps."""
        decay = jnp.float32(self.ema_decay)
        if not self.ema_warmup:
            return decay
        k = jnp.asarray(step, jnp.float32) - self.start(phase)
        return jnp.minimum(decay, (1.0 + k) / (10.0 + k))


def init_state(nets: Networks, p, max_level: int, rng, tx) -> PGGANState:
    k_g, k_d = jax.random.split(rng)
    res = resolution_of(max_level)
    g = nets.generator.init(k_g, jnp.zeros((1, p.latent_dim)), max_level)  # every level's layers
    d = nets.critic.init(k_d, jnp.zeros((1, res, res, p.out_channels)), max_level)
    return PGGANState(step=jnp.zeros((), jnp.int32), rng=jax.random.fold_in(rng, 7), g_params=g, d_params=d,
                      g_ema=g, g_opt=tx.init(g), d_opt=tx.init(d), level=jnp.zeros((), jnp.int32),
                      alpha=jnp.ones((), jnp.float32))


def real_images(p, batch, level: int, alpha):
    """uint8 batch -> float [-1, 1] with the generator's channels, blended like its output."""
    real = aug.to_float(batch["frontal"])
    if p.out_channels == 3:
        real = jnp.repeat(real, 3, axis=-1)
    if level > 0:
        real = fade(upsample(downsample(real)), real, alpha)
    return real


def make_train_step(nets: Networks, p, schedule: Schedule, phase: int, tx):
    """The step of `phase`: one critic update (WGAN-GP + drift), then one generator update with
    fresh latents against the just-updated critic (as the reference), then the EMA."""
    level = schedule.phases[phase][0]

    def step(state: PGGANState, frozen: dict, batch):
        k_d, k_g, k_gp = jax.random.split(jax.random.fold_in(state.rng, state.step), 3)
        alpha = schedule.alpha(state.step, phase)
        real = real_images(p, batch, level, alpha)
        n = real.shape[0]
        latents = lambda k: jax.random.normal(k, (n, p.latent_dim))
        critic = lambda dp, x: nets.critic.apply(dp, x, level, alpha)[0][:, 0]
        fake = jax.lax.stop_gradient(nets.generator.apply(state.g_params, latents(k_d), level, alpha))

        def d_loss_fn(dp):
            d_real = critic(dp, real)
            gap = wgan_d_loss(d_real, critic(dp, fake))
            gp = gradient_penalty(lambda x: critic(dp, x), real, fake, k_gp, p.gp_weight)
            drift = p.drift_weight * jnp.mean(jnp.square(d_real))
            return gap + gp + drift, {"wasserstein": -gap, "gp": gp, "drift": drift}

        (d_loss, d_terms), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(state.d_params)
        d_updates, d_opt = tx.update(d_grads, state.d_opt, state.d_params)
        d_params = optax.apply_updates(state.d_params, d_updates)

        g_loss_fn = lambda gp_: wgan_g_loss(critic(d_params, nets.generator.apply(gp_, latents(k_g), level, alpha)))
        g_loss, g_grads = jax.value_and_grad(g_loss_fn)(state.g_params)
        g_updates, g_opt = tx.update(g_grads, state.g_opt, state.g_params)
        g_params = optax.apply_updates(state.g_params, g_updates)
        decay = schedule.ema_decay_at(state.step, phase)
        g_ema = jax.tree.map(lambda e, w: e + (1.0 - decay) * (w - e), state.g_ema, g_params)
        new = state.replace(step=state.step + 1, g_params=g_params, d_params=d_params, g_ema=g_ema, g_opt=g_opt,
                            d_opt=d_opt, level=jnp.int32(level), alpha=alpha)
        metrics = {"d_loss": d_loss, "g_loss": g_loss, "alpha": alpha, "level": jnp.float32(level),
                   **{f"d_{k}": v for k, v in d_terms.items()}}
        return new, metrics

    return step
