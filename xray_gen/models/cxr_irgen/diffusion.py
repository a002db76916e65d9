"""Diffusion core for the CXR-IRGen denoisers: noise schedules, training loss, DDIM, DPM-Solver++(2M), CFG.

Everything here is a pure function of arrays (jit/grad/vmap friendly); the denoiser is any callable
`denoise_fn(x_t, t, cond) -> model_output` (same shape as x_t), e.g.

    unet = lambda x, t, c: UNet2DConditionModel(cfg).apply({"params": p}, x, t, c["context"], c["mask"])
    uvit = lambda x, t, c: UViT(cfg).apply({"params": p}, x, t, c)

`cond` is any pytree whose leaves have a leading batch axis (a context tensor + mask for the U-Net,
a pooled-vector context for the U-ViT); the unconditional condition `null_cond` is a pytree of the
same structure whose leaves broadcast to one example's shape (e.g. the empty-prompt text states)
or to the whole batch. That one convention serves conditioning dropout in training and classifier-
free guidance in sampling.

Conventions (those of DDPM/diffusers): timesteps are integers 0..T-1, alpha_bar_t = prod_{s<=t}
(1 - beta_s), x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps. The model predicts eps
("epsilon", the default, as SD and CXR-IRGen) or v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0
("v_prediction").

Sampling (`sample`) is one `lax.scan` over the chosen timesteps; per-step coefficients are computed
in numpy (float64) from the `Schedule` before tracing, so a `Schedule` is a compile-time constant:
close over it rather than passing it as a jit argument. Timestep spacing follows diffusers' DDIM:
  "leading"  (SD's default, steps_offset 1): t_i = i * (T // n) + offset, descending; 50 steps -> 981, ..., 1
  "trailing" : round(T - i * T / n) - 1; 50 steps -> 999, ..., 19 (starts at the noisiest step)
  "linspace" : round(linspace(0, T-1, n)), descending
A step goes from t_i to t_{i+1} (the next entry of the list), the last one to the clean end: for DDIM
alpha_bar = alphas_cumprod[0] (diffusers' `set_alpha_to_one=False`, SD's scheduler config) or 1;
for DPM-Solver++ sigma = 0 (diffusers' `final_sigmas_type="zero"`), which is why its final step is
first order, as in diffusers. (diffusers' DDIM takes the previous timestep as t - T // n, the
same as the next list entry whenever n divides T or the spacing is "leading".)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "PREDICTIONS",
    "Schedule",
    "make_schedule",
    "q_sample",
    "training_target",
    "predict_x0_eps",
    "condition_dropout_mask",
    "drop_condition",
    "training_loss",
    "SamplerConfig",
    "sampling_timesteps",
    "ddim_step",
    "dpm_solver_2m_step",
    "guided_denoiser",
    "sample",
]

PREDICTIONS = ("epsilon", "v_prediction")
SCHEDULES = ("scaled_linear", "linear", "cosine")
SPACINGS = ("leading", "trailing", "linspace")
SAMPLERS = ("ddim", "dpm_solver_2m")

DenoiseFn = Callable[[jax.Array, jax.Array, Any], jax.Array]


# ------------------------------------------------------------------------------------------------
# Schedules
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
    """A discrete noise schedule: `betas` and `alphas_cumprod` (float64 numpy, length T).

    Hashed by identity (eq=False), so it may also be a static jit argument.
    """

    kind: str
    betas: np.ndarray
    alphas_cumprod: np.ndarray

    def __post_init__(self):
        betas, ac = np.asarray(self.betas, np.float64), np.asarray(self.alphas_cumprod, np.float64)
        if betas.ndim != 1 or ac.shape != betas.shape or len(betas) < 2:
            raise ValueError(f"Schedule {self.kind!r}: betas {betas.shape} and alphas_cumprod {ac.shape} "
                             "must be 1-D of the same length >= 2")
        if not np.all((ac > 0) & (ac < 1)):
            raise ValueError(f"Schedule {self.kind!r}: alphas_cumprod must lie in (0, 1)")
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "alphas_cumprod", ac)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.betas.shape[0])


def _check_choice(name: str, value: str, allowed: tuple):
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {allowed}")


def make_schedule(kind: str = "scaled_linear", num_train_timesteps: int = 1000,
                  beta_start: Optional[float] = None, beta_end: Optional[float] = None) -> Schedule:
    """SD's "scaled_linear" (default; betas = linspace(sqrt(b0), sqrt(b1), T)^2 with b0 0.00085, b1 0.012),
    DDPM's "linear" (linspace(b0, b1), defaults 1e-4, 0.02) or the "cosine" schedule of Nichol &
    Dhariwal (alpha_bar(s) = cos((s + 0.008) / 1.008 * pi / 2)^2, betas clipped at 0.999; diffusers'
    "squaredcos_cap_v2"; beta_start/beta_end do not apply)."""
    _check_choice("make_schedule kind", kind, SCHEDULES)
    if num_train_timesteps < 2:
        raise ValueError(f"make_schedule: num_train_timesteps={num_train_timesteps} must be >= 2")
    n = num_train_timesteps
    if kind == "cosine":
        if beta_start is not None or beta_end is not None:
            raise ValueError("make_schedule: beta_start/beta_end do not apply to the cosine schedule")
        f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = np.array([min(1.0 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)], np.float64)
    else:
        defaults = (0.00085, 0.012) if kind == "scaled_linear" else (1e-4, 0.02)
        b0 = defaults[0] if beta_start is None else float(beta_start)
        b1 = defaults[1] if beta_end is None else float(beta_end)
        if not 0.0 < b0 <= b1 < 1.0:
            raise ValueError(f"make_schedule: need 0 < beta_start <= beta_end < 1, got {b0}, {b1}")
        if kind == "scaled_linear":
            betas = np.linspace(math.sqrt(b0), math.sqrt(b1), n, dtype=np.float64) ** 2
        else:
            betas = np.linspace(b0, b1, n, dtype=np.float64)
    return Schedule(kind=kind, betas=betas, alphas_cumprod=np.cumprod(1.0 - betas))


def _per_example(values: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
    """values[t] for t (B,) reshaped to (B, 1, ..., 1) so it broadcasts over an x of rank `ndim`."""
    v = jnp.asarray(values, jnp.float32)[jnp.asarray(t, jnp.int32)]
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def _alpha_sigma(schedule: Schedule, t: jax.Array, ndim: int) -> Tuple[jax.Array, jax.Array]:
    abar = _per_example(schedule.alphas_cumprod, t, ndim)
    return jnp.sqrt(abar), jnp.sqrt(1.0 - abar)


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Forward process x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise; t int (B,)."""
    alpha, sigma = _alpha_sigma(schedule, t, x0.ndim)
    return alpha * x0 + sigma * noise


def training_target(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array,
                    prediction: str = "epsilon") -> jax.Array:
    """What the denoiser regresses: the noise ("epsilon") or v = alpha noise - sigma x0 ("v_prediction")."""
    _check_choice("prediction", prediction, PREDICTIONS)
    if prediction == "epsilon":
        return noise
    alpha, sigma = _alpha_sigma(schedule, t, x0.ndim)
    return alpha * noise - sigma * x0


def _to_x0_eps(x_t, model_output, alpha, sigma, prediction):
    if prediction == "epsilon":
        eps = model_output
        x0 = (x_t - sigma * eps) / alpha
    else:
        x0 = alpha * x_t - sigma * model_output
        eps = sigma * x_t + alpha * model_output
    return x0, eps


def predict_x0_eps(schedule: Schedule, x_t: jax.Array, t: jax.Array, model_output: jax.Array,
                   prediction: str = "epsilon") -> Tuple[jax.Array, jax.Array]:
    """(x0, eps) implied by a model output at timestep t (B,): inverts `q_sample` / `training_target`."""
    _check_choice("prediction", prediction, PREDICTIONS)
    alpha, sigma = _alpha_sigma(schedule, t, x_t.ndim)
    return _to_x0_eps(x_t, model_output, alpha, sigma, prediction)


def condition_dropout_mask(rng: jax.Array, batch: int, prob: float) -> jax.Array:
    """Boolean (B,): True where an example's condition is replaced by the null condition."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"cond_drop_prob={prob} must be in [0, 1]")
    return jax.random.bernoulli(rng, prob, (batch,))


def _batch_size(tree: Any, what: str) -> int:
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        raise ValueError(f"{what} has no arrays")
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"{what}: every leaf needs the same leading batch axis, got shapes "
                         f"{[jnp.shape(leaf) for leaf in leaves]}")
    return sizes.pop()


def _broadcast_null(cond: Any, null_cond: Any) -> Any:
    """null_cond with each leaf broadcast to the batch shape of the matching `cond` leaf."""
    try:
        return jax.tree_util.tree_map(
            lambda c, n: jnp.broadcast_to(jnp.asarray(n, jnp.result_type(c)), jnp.shape(c)), cond, null_cond)
    except ValueError as e:
        raise ValueError("null_cond must have the structure of cond, each leaf broadcastable to the "
                         f"cond leaf's (B, ...) shape: {e}") from e


def drop_condition(cond: Any, null_cond: Any, drop: jax.Array) -> Any:
    """Per-example select: the null condition where drop (B,) is True, `cond` elsewhere (every leaf)."""
    null_b = _broadcast_null(cond, null_cond)
    sel = lambda c, n: jnp.where(drop.reshape(drop.shape + (1,) * (jnp.ndim(c) - 1)), n, c)
    return jax.tree_util.tree_map(sel, cond, null_b)


def training_loss(denoise_fn: DenoiseFn, schedule: Schedule, x0: jax.Array, cond: Any, rng: jax.Array,
                  prediction: str = "epsilon", cond_drop_prob: float = 0.1,
                  null_cond: Any = None) -> Tuple[jax.Array, dict]:
    """Simple DDPM loss: mean squared error of the model output against eps (or v), t ~ U{0..T-1}.

    With probability `cond_drop_prob` per example the condition is replaced by `null_cond`
    (classifier-free guidance needs a model that also knows p(x); the official CXR-IRGen code
    samples with guidance but never drops the condition -- DESIGN §6 -- so 0.1 is the default).
    Returns (loss, aux) with aux = {"per_example": (B,), "t": (B,), "dropped": (B,) bool}.
    """
    _check_choice("prediction", prediction, PREDICTIONS)
    if cond_drop_prob > 0 and null_cond is None:
        raise ValueError(f"training_loss: cond_drop_prob={cond_drop_prob} needs a null_cond "
                         "(the unconditional condition); pass cond_drop_prob=0 to train without dropout")
    b = x0.shape[0]
    if cond is not None and _batch_size(cond, "cond") != b:
        raise ValueError(f"training_loss: cond has batch {_batch_size(cond, 'cond')}, x0 has {b}")
    k_t, k_noise, k_drop = jax.random.split(rng, 3)
    t = jax.random.randint(k_t, (b,), 0, schedule.num_train_timesteps)
    noise = jax.random.normal(k_noise, x0.shape, jnp.float32)
    x0 = x0.astype(jnp.float32)
    if cond_drop_prob > 0:
        dropped = condition_dropout_mask(k_drop, b, cond_drop_prob)
        cond = drop_condition(cond, null_cond, dropped)
    else:
        dropped = jnp.zeros((b,), bool)
    out = denoise_fn(q_sample(schedule, x0, t, noise), t, cond)
    if out.shape != x0.shape:
        raise ValueError(f"training_loss: denoise_fn returned {out.shape}, expected {x0.shape}")
    err = jnp.square(out.astype(jnp.float32) - training_target(schedule, x0, t, noise, prediction))
    per_example = jnp.mean(err.reshape(b, -1), axis=1)
    return jnp.mean(per_example), {"per_example": per_example, "t": t, "dropped": dropped}


# ------------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """How to sample. Defaults are the official CXR-IRGen sampling (50 steps, guidance 7.5) with
    SD's scheduler settings (leading spacing, steps_offset 1, set_alpha_to_one False).

    guidance_scale None: no guidance (one conditional call per step; no null_cond needed).
    eta: DDIM stochasticity (0 deterministic, 1 DDPM-like); DPM-Solver++(2M) is deterministic.
    """

    sampler: str = "ddim"  # "ddim" | "dpm_solver_2m"
    num_steps: int = 50
    guidance_scale: Optional[float] = 7.5
    prediction: str = "epsilon"
    eta: float = 0.0
    spacing: str = "leading"
    steps_offset: int = 1
    set_alpha_to_one: bool = False  # DDIM's final alpha_bar: 1, or alphas_cumprod[0] (SD)

    def __post_init__(self):
        _check_choice("SamplerConfig.sampler", self.sampler, SAMPLERS)
        _check_choice("SamplerConfig.prediction", self.prediction, PREDICTIONS)
        _check_choice("SamplerConfig.spacing", self.spacing, SPACINGS)
        if self.num_steps < 1:
            raise ValueError(f"SamplerConfig.num_steps={self.num_steps} must be >= 1")
        if self.eta < 0:
            raise ValueError(f"SamplerConfig.eta={self.eta} must be >= 0")
        if self.eta > 0 and self.sampler != "ddim":
            raise ValueError(f"SamplerConfig.eta={self.eta}: only the DDIM sampler is stochastic")


def sampling_timesteps(num_train_timesteps: int, num_steps: int, spacing: str = "leading",
                       steps_offset: int = 1) -> np.ndarray:
    """Descending int64 timesteps, diffusers' DDIM `set_timesteps` rule (see the module docstring)."""
    _check_choice("spacing", spacing, SPACINGS)
    T, n = num_train_timesteps, num_steps
    if not 1 <= n <= T:
        raise ValueError(f"num_steps={n} must be in [1, num_train_timesteps={T}]")
    if spacing == "leading":
        ts = (np.arange(n) * (T // n)).round()[::-1].astype(np.int64) + steps_offset
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
    else:
        ts = np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
    if ts.max() >= T or ts.min() < 0:
        raise ValueError(f"timesteps {ts.min()}..{ts.max()} leave [0, {T}) (steps_offset={steps_offset})")
    return ts.copy()


def ddim_step(x: jax.Array, model_output: jax.Array, alpha_bar_t: jax.Array, alpha_bar_prev: jax.Array,
              prediction: str = "epsilon", eta: float = 0.0, noise: Optional[jax.Array] = None) -> jax.Array:
    """One DDIM update x_t -> x_prev (Song et al. 2021, eq. 12):

    x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - s^2) eps + s z,
    s = eta sqrt((1 - ab_prev) / (1 - ab_t) (1 - ab_t / ab_prev)). Alpha bars are scalars or broadcast to x.
    """
    _check_choice("prediction", prediction, PREDICTIONS)
    alpha, sigma = jnp.sqrt(alpha_bar_t), jnp.sqrt(1.0 - alpha_bar_t)
    x0, eps = _to_x0_eps(x, model_output, alpha, sigma, prediction)
    std = eta * jnp.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t) * (1.0 - alpha_bar_t / alpha_bar_prev))
    x_prev = jnp.sqrt(alpha_bar_prev) * x0 + jnp.sqrt(jnp.maximum(1.0 - alpha_bar_prev - std ** 2, 0.0)) * eps
    if noise is not None:
        x_prev = x_prev + std * noise
    elif eta != 0.0:
        raise ValueError("ddim_step: eta > 0 needs noise")
    return x_prev


def dpm_solver_2m_step(x: jax.Array, x0: jax.Array, prev_x0: jax.Array, alpha_bar_s: jax.Array,
                       alpha_bar_t: jax.Array, alpha_bar_prev_s: jax.Array, second_order: jax.Array) -> jax.Array:
    """One DPM-Solver++(2M) update from s to t (Lu et al. 2022, data prediction, midpoint form).

    x0: the model's data prediction at s; prev_x0 the one at the previous step s' (alpha_bar_prev_s);
    with h = lambda_t - lambda_s, lambda = log(alpha / sigma), r = (lambda_s - lambda_s') / h:
      x_t = sigma_t / sigma_s x + alpha_t (1 - e^-h) (x0 + (x0 - prev_x0) / (2 r))
    where the bracketed correction is dropped when `second_order` is False (first order == DDIM).
    alpha_bar_t = 1 (sigma_t = 0) is the clean end: the result is x0.
    """
    a_s, s_s = jnp.sqrt(alpha_bar_s), jnp.sqrt(1.0 - alpha_bar_s)
    a_t, s_t = jnp.sqrt(alpha_bar_t), jnp.sqrt(1.0 - alpha_bar_t)
    a_p, s_p = jnp.sqrt(alpha_bar_prev_s), jnp.sqrt(1.0 - alpha_bar_prev_s)
    tiny = jnp.finfo(jnp.float32).tiny
    lam = lambda a, s: jnp.log(a) - jnp.log(jnp.maximum(s, tiny))
    exp_neg_h = (s_t * a_s) / (a_t * s_s)  # e^{-h} without logs: exactly 0 at sigma_t = 0
    h = lam(a_t, s_t) - lam(a_s, s_s)
    r = (lam(a_s, s_s) - lam(a_p, s_p)) / h
    d1 = jnp.where(second_order, (x0 - prev_x0) / (2.0 * jnp.where(second_order, r, 1.0)), 0.0)
    return (s_t / s_s) * x + a_t * (1.0 - exp_neg_h) * (x0 + d1)


def guided_denoiser(denoise_fn: DenoiseFn, cond: Any, null_cond: Any,
                    guidance_scale: Optional[float]) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """(x, t) -> out_u + s (out_c - out_u), with ONE denoiser call on the batch [uncond; cond].

    Guidance is applied to the raw model output (eps, or v: both are affine in the model's x0 and
    eps estimates at fixed x_t, so guiding either is the same rule). `guidance_scale` None: the
    conditional output alone (single call on the batch, no null_cond needed). It may be a traced
    value, so changing it does not recompile.
    """
    if guidance_scale is None:
        return lambda x, t: denoise_fn(x, t, cond)
    if null_cond is None:
        raise ValueError("classifier-free guidance needs null_cond (the unconditional condition)")
    both = jax.tree_util.tree_map(lambda n, c: jnp.concatenate([n, c], axis=0),
                                  _broadcast_null(cond, null_cond), cond)

    def fn(x, t):
        b = x.shape[0]
        out = denoise_fn(jnp.concatenate([x, x], axis=0), jnp.concatenate([t, t], axis=0), both)
        out_u, out_c = out[:b], out[b:]
        return out_u + guidance_scale * (out_c - out_u)

    return fn


def _plan(schedule: Schedule, cfg: SamplerConfig) -> dict:
    """Per-step timesteps and alpha bars (numpy) for the scan; see the module docstring."""
    ts = sampling_timesteps(schedule.num_train_timesteps, cfg.num_steps, cfg.spacing, cfg.steps_offset)
    ac = schedule.alphas_cumprod
    if cfg.sampler == "ddim":
        final = 1.0 if cfg.set_alpha_to_one else ac[0]
    else:
        final = 1.0
    ab_t = ac[ts]
    ab_next = np.concatenate([ab_t[1:], [final]])
    ab_before = np.concatenate([ab_t[:1], ab_t[:-1]])  # the previous step's alpha bar (unused at step 0)
    n = len(ts)
    second = np.arange(n) > 0
    second[-1] = False  # final step to sigma 0 is first order (diffusers' lower_order_final)
    f32 = lambda a: np.asarray(a, np.float32)
    return {"t": ts.astype(np.int32), "ab_t": f32(ab_t), "ab_next": f32(ab_next),
            "ab_before": f32(ab_before), "second": second}


def sample(denoise_fn: DenoiseFn, schedule: Schedule, x_T: jax.Array, cond: Any, null_cond: Any = None,
           config: SamplerConfig = SamplerConfig(), rng: Optional[jax.Array] = None,
           guidance_scale: Any = None) -> jax.Array:
    """Runs the reverse process from x_T (standard normal, (B, ...)) and returns the final sample.

    One `lax.scan` over `config.num_steps` steps (traceable: wrap the caller in `jax.jit`; the
    schedule and config are compile-time constants). `guidance_scale` overrides the config's (a
    traced scalar is fine, so a guidance sweep compiles once); None keeps the config's (whose None
    means no guidance). DDIM with eta > 0 needs `rng`.
    """
    s = config.guidance_scale if guidance_scale is None else guidance_scale
    if cond is not None and _batch_size(cond, "cond") != x_T.shape[0]:
        raise ValueError(f"sample: cond has batch {_batch_size(cond, 'cond')}, x_T has {x_T.shape[0]}")
    fn = guided_denoiser(denoise_fn, cond, null_cond, s)
    plan = _plan(schedule, config)
    b, pred = x_T.shape[0], config.prediction
    stochastic = config.sampler == "ddim" and config.eta > 0
    if stochastic and rng is None:
        raise ValueError(f"sample: DDIM with eta={config.eta} needs rng")
    keys = jax.random.split(rng, len(plan["t"])) if stochastic else jnp.zeros((len(plan["t"]), 2), jnp.uint32)

    def body(carry, step):
        x, prev_x0 = carry
        t = jnp.full((b,), step["t"], jnp.int32)
        out = fn(x, t).astype(jnp.float32)
        if config.sampler == "ddim":
            noise = jax.random.normal(step["key"], x.shape, jnp.float32) if stochastic else None
            x = ddim_step(x, out, step["ab_t"], step["ab_next"], pred, config.eta, noise)
            return (x, prev_x0), None
        x0, _ = _to_x0_eps(x, out, jnp.sqrt(step["ab_t"]), jnp.sqrt(1.0 - step["ab_t"]), pred)
        x = dpm_solver_2m_step(x, x0, prev_x0, step["ab_t"], step["ab_next"], step["ab_before"], step["second"])
        return (x, x0), None

    xs = {k: jnp.asarray(v) for k, v in plan.items()}
    xs["key"] = keys
    x = x_T.astype(jnp.float32)
    (x, _), _ = jax.lax.scan(body, (x, jnp.zeros_like(x)), xs)
    return x
