"""XRayGAN's pure functions: the phase schedule, generation and the training step of each phase.

The step takes every array it uses as an argument: the state, the frozen VCN's variables (the
loop's `frozen`, {} when the phase reads none) and the batch; the networks are Flax modules (no
arrays) built once from the config (networks.build_networks).
"""

from __future__ import annotations

import dataclasses

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from xray_gen.data import augment as aug
from xray_gen.models.xraygan import losses
from xray_gen.models.xraygan.networks import VIEWS, Networks

@flax.struct.dataclass
class XRayGANState:
    step: jax.Array
    rng: jax.Array
    g_params: dict  # {"encoder": ..., "generator": ...}
    d_params: dict  # {"frontal_0": ..., "lateral_0": ..., ...} one critic per view and stage
    g_opt: optax.OptState
    d_opt: optax.OptState


def stage_resolution(stage: int) -> int:
    return 32 * 2**stage


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The run's phases: an optional MSE-only warm-up of stage 0, then one GAN phase per stage;
    (kind, stage, steps) each, with the cumulative step at which each ends."""

    phases: tuple
    boundaries: tuple

    @classmethod
    def from_config(cls, x) -> "Schedule":
        phases = (([("warmup", 0, x.warmup_steps)] if x.warmup_steps > 0 else [])
                  + [("gan", s, x.stage_steps[s]) for s in range(x.num_stages)])
        return cls(tuple(phases), tuple(int(b) for b in np.cumsum([n for _, _, n in phases])))

    def phase_at(self, step: int) -> int:
        """The phase that step `step + 1` trains in."""
        return int(min(np.searchsorted(self.boundaries, step, side="right"), len(self.phases) - 1))

    def start(self, phase: int) -> int:
        return self.boundaries[phase - 1] if phase > 0 else 0

    def learning_rate(self, x, step, phase: int):
        """The stage's rate, decayed within the phase: x lr_decay at fractions `lr_milestones` of it
        (official: MultiStepLR at epochs 45/70/90), else every `lr_decay_every` steps (paper)."""
        _, stage, n = self.phases[phase]
        start = self.start(phase)
        lr = jnp.float32(x.learning_rates[stage])
        if x.lr_milestones:
            passed = sum((step - start) >= int(round(f * n)) for f in x.lr_milestones)
            lr = lr * jnp.float32(x.lr_decay) ** passed
        elif x.lr_decay_every > 0:
            lr = lr * x.lr_decay ** ((step - start) // x.lr_decay_every)
        return lr


def init_state(nets: Networks, x, rng, tx) -> XRayGANState:
    k_enc, k_gen, k_d = jax.random.split(rng, 3)
    s, w = x.max_sentences, x.max_words
    dummy = {f"{sec}_{k}": jnp.zeros((1, s, w), jnp.int32 if k == "ids" else jnp.float32)
             for sec in ("findings", "impression") for k in ("ids", "mask")}
    enc = nets.encoder.init(k_enc, dummy)
    c = jnp.zeros((1, x.cond_dim))
    z = jnp.zeros((1, x.noise_dim)) if x.noise_dim > 0 else None
    if isinstance(nets.generator, dict):
        gen = {v: nets.generator[v].init(jax.random.fold_in(k_gen, i), c, z) for i, v in enumerate(VIEWS)}
    else:
        gen = nets.generator.init(k_gen, c, z)
    d = {}
    for stage in range(x.num_stages):
        r = stage_resolution(stage)
        for i, v in enumerate(VIEWS):
            d[f"{v}_{stage}"] = nets.critic.init(jax.random.fold_in(k_d, 2 * stage + i), jnp.zeros((1, r, r, 1)), c)
    g_params = {"encoder": enc, "generator": gen}
    return XRayGANState(step=jnp.zeros((), jnp.int32), rng=jax.random.fold_in(rng, 7), g_params=g_params,
                        d_params=d, g_opt=tx.init(g_params), d_opt=tx.init(d))


def generate_stages(nets: Networks, x, g_params, batch, rng, stage: int, c=None):
    """{view: [image per stage up to `stage`]} (the one-shot ablation has only the final one)."""
    c = nets.encoder.apply(g_params["encoder"], batch) if c is None else c
    z = jax.random.normal(rng, (c.shape[0], x.noise_dim)) if x.noise_dim > 0 else None
    if isinstance(nets.generator, dict):
        return {v: [nets.generator[v].apply(g_params["generator"][v], c, z)] for v in VIEWS}
    return nets.generator.apply(g_params["generator"], c, z, stage=stage)


def generate(nets: Networks, x, g_params, batch, rng, stage: int):
    """Condition c and the generated {view: image at the stage's resolution}."""
    c = nets.encoder.apply(g_params["encoder"], batch)
    images = generate_stages(nets, x, g_params, batch, rng, stage, c)
    res = stage_resolution(stage)
    # The one-shot ablation only makes the final resolution: earlier stages see it downsampled.
    fakes = {v: images[v][-1] for v in VIEWS}
    fakes = {v: f if f.shape[1] == res else jax.image.resize(f, (f.shape[0], res, res, 1), "linear")
             for v, f in fakes.items()}
    return c, fakes


def uses_vcn(x, schedule: Schedule, phase: int) -> bool:
    """Whether the phase's generator loss has the frozen VCN's view-consistency reward."""
    return schedule.phases[phase][0] == "gan" and x.use_vcn and x.vc_weight != 0


def make_train_step(nets: Networks, config, schedule: Schedule, phase: int, tx, vcn_net=None):
    """The pure step `(state, frozen, batch) -> (state, metrics)` of `phase`: the stage's critics
    (WGAN-GP, GAN phases only), then the generator on adv + pixel - w_vc * VC reward (warm-up: pixel
    only); `frozen["vcn"]` is read when `uses_vcn`."""
    kind, stage, _ = schedule.phases[phase]
    x = config.xraygan
    use_vcn = uses_vcn(x, schedule, phase)
    if use_vcn and vcn_net is None:
        raise ValueError("this phase's loss has the VC reward: give make_train_step the VCN module")

    def step(state: XRayGANState, frozen: dict, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        k_z, k_gp = jax.random.split(rng)
        real = {v: aug.to_float(batch[v]) for v in VIEWS}
        lr = schedule.learning_rate(x, state.step, phase)
        metrics = {"learning_rate": lr}
        d_params, d_opt = state.d_params, state.d_opt
        # One generator forward serves both updates: the critic trains on its (detached)
        # output, and the generator's gradient is pulled back through the saved VJP.
        (c, fakes), generate_vjp = jax.vjp(lambda gp_: generate(nets, x, gp_, batch, k_z, stage), state.g_params)
        c_fixed, fakes_fixed = jax.lax.stop_gradient(c), jax.lax.stop_gradient(fakes)
        if kind == "gan":
            def d_loss_fn(dp):
                total = 0.0
                for i, v in enumerate(VIEWS):
                    critic = lambda img, v=v: nets.critic.apply(dp[f"{v}_{stage}"], img, c_fixed)
                    gap = losses.wgan_d_loss(critic(real[v]), critic(fakes_fixed[v]))
                    gp = losses.gradient_penalty(critic, real[v], fakes_fixed[v], jax.random.fold_in(k_gp, i),
                                                 x.gp_weight)
                    total = total + gap + gp
                return total

            d_loss, d_grads = jax.value_and_grad(d_loss_fn)(d_params)
            d_updates, d_opt = tx.update(d_grads, d_opt, d_params)
            d_params = jax.tree.map(lambda p, u: p - lr * u, d_params, d_updates)
            metrics["d_loss"] = d_loss

        def g_loss_fn(fakes):
            if kind == "warmup":
                pixel = sum(losses.pixel_l2(fakes[v], real[v]) for v in VIEWS)
                return x.pixel_weight * pixel, {"pixel": pixel}
            # The critics (just updated) see the condition as a constant: otherwise the encoder
            # could raise D(fake, c) through the critic's text pathway (which the gradient
            # penalty, taken w.r.t. the image only, does not bound) instead of through images.
            scores = [nets.critic.apply(d_params[f"{v}_{stage}"], fakes[v], c_fixed) for v in VIEWS]
            p_same = None
            if use_vcn:
                p_same = jax.nn.sigmoid(vcn_net.apply(frozen["vcn"], fakes["frontal"], fakes["lateral"], train=False))
            return losses.generator_objective(
                scores, [fakes[v] for v in VIEWS], [real[v] for v in VIEWS], p_same,
                adv_weight=x.adv_weight, pixel_weight=x.pixel_weight, vc_weight=x.vc_weight, vc_form=x.vc_form,
            )

        (g_loss, terms), d_fakes = jax.value_and_grad(g_loss_fn, has_aux=True)(fakes)
        (g_grads,) = generate_vjp((jnp.zeros_like(c), d_fakes))  # the loss reaches c only through the images
        g_updates, g_opt = tx.update(g_grads, state.g_opt, state.g_params)
        g_params = jax.tree.map(lambda p, u: p - lr * u, state.g_params, g_updates)
        metrics.update({"g_loss": g_loss, **{f"g_{k}": v for k, v in terms.items()}})
        new = state.replace(step=state.step + 1, g_params=g_params, d_params=d_params, g_opt=g_opt, d_opt=d_opt)
        return new, metrics

    return step
