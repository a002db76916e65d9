"""Latent class optimisation (the PGGAN-for-CXR paper's Algorithm 1, "Pathology Generation").

An unconditional generator has no label input, so a labelled sample is found by gradient ASCENT of a
classifier's logit for one class over the latent: start from z ~ N(0, 1) truncated at +-0.7, step
(Adam) until ``logits_fn(generate_fn(z))[class]`` passes a target. The target is the class's Youden
threshold raised by a severity margin ``|N(1, 1)|``, both in LOGIT space, so that samples show the
finding more or less strongly. A converged latent is the centre of a synthetic "patient": its
neighbours ``z + N(0, 0.2^2)`` keep the diagnosis with small changes of pose and exposure.

Everything here takes plain JAX callables (``generate_fn(z) -> images (N, H, W, C)``,
``logits_fn(images) -> (N, 14)``), so it is testable with toy networks and independent of the model
code. Both must treat batch rows independently (no batch statistics): the ascent uses the gradient of
the SUM of the per-row logits, which is each row's own gradient only then.
"""

from __future__ import annotations

from typing import Callable, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["truncated_normal_latents", "severity_margins", "threshold_logits", "optimise_latents",
           "make_optimiser", "patient_series", "label_images"]

Array = jax.Array


def truncated_normal_latents(rng: Array, n: int, latent_dim: int, truncation: float = 0.7) -> Array:
    """(n, latent_dim) float32 latents from N(0, 1) truncated to [-truncation, truncation] (the
    paper's starting points: the truncation trick keeps them where the generator is best)."""
    if not truncation > 0:
        raise ValueError(f"truncation must be > 0, got {truncation}")
    return jax.random.truncated_normal(rng, -truncation, truncation, (n, latent_dim), jnp.float32)


def severity_margins(rng: Array, n: int) -> Array:
    """(n,) margins |N(1, 1)| by which a class's logit threshold is raised (simulated severity)."""
    return jnp.abs(1.0 + jax.random.normal(rng, (n,), jnp.float32))


def threshold_logits(thresholds) -> np.ndarray:
    """Per-class probability thresholds (e.g. Youden's) -> logit(p); NaN stays NaN. Raises naming
    the class when a finite threshold is outside (0, 1) (its logit would be infinite)."""
    p = np.asarray(thresholds, np.float64)
    bad = np.isfinite(p) & ((p <= 0) | (p >= 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"thresholds[{i}] = {p[i]!r}: a probability threshold must be in (0, 1)")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(p) - np.log1p(-p)


def _checked(z0, target_class, target_logit, max_steps):
    z0 = jnp.asarray(z0, jnp.float32)
    if z0.ndim != 2:
        raise ValueError(f"z0 must be (N, latent_dim), got shape {z0.shape}")
    n = z0.shape[0]
    target_class = jnp.asarray(target_class, jnp.int32)
    target_logit = jnp.asarray(target_logit, jnp.float32)
    for name, a in (("target_class", target_class), ("target_logit", target_logit)):
        if a.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},) like z0's rows, got {a.shape}")
    if max_steps < 0:
        raise ValueError(f"max_steps must be >= 0, got {max_steps}")
    return z0, target_class, target_logit


def _ascent(generate_fn, logits_fn, target_class, target_logit, max_steps: int, learning_rate: float):
    """(init(z0) -> carry, step(carry) -> carry): one check-then-Adam-step per call (see
    :func:`optimise_latents` for the rules); a call after every row converged changes nothing."""
    opt = optax.adam(learning_rate)

    def objective(z):
        logits = logits_fn(generate_fn(z))
        picked = jnp.take_along_axis(logits, target_class[:, None], axis=1)[:, 0]
        return -jnp.sum(picked), picked  # descent on the negated sum = per-row ascent

    grad_fn = jax.value_and_grad(objective, has_aux=True)

    def init(z0):
        n = z0.shape[0]
        return (jnp.zeros((), jnp.int32), z0, opt.init(z0), jnp.zeros((n,), bool),
                jnp.full((n,), max_steps, jnp.int32), jnp.full((n,), -jnp.inf, jnp.float32))

    def step(carry):
        s, z, opt_state, done, steps, final = carry
        (_, logit), grad = grad_fn(z)
        newly = ~done & (logit >= target_logit)
        final = jnp.where(done, final, logit)  # frozen rows keep the logit they converged with
        steps = jnp.where(newly, s, steps)
        done = done | newly
        updates, opt_state = opt.update(grad, opt_state, z)
        move = ~done & (s < max_steps)
        z = jnp.where(move[:, None], z + updates, z)
        return s + 1, z, opt_state, done, steps, final

    return init, step


def optimise_latents(generate_fn: Callable, logits_fn: Callable, z0, target_class, target_logit, *,
                     max_steps: int, learning_rate: float) -> Tuple[Array, Array, Array, Array]:
    """Adam ascent of each row's target logit, all rows together, in one ``lax.while_loop``.

    Args:
      z0: (N, D) starting latents.
      target_class: (N,) int class index per row (a batch may mix classes).
      target_logit: (N,) float logit each row must reach (``>=``).
    Returns:
      ``(z, converged (N,) bool, steps (N,) int32, logits (N,))``. At step ``s`` (0..max_steps) the
      logit of the current z is checked first: a row at or above its target is frozen (never moves
      again) with ``steps = s`` (0: the start already passed); otherwise it takes one Adam step
      (none after the last check). Unconverged rows report ``steps = max_steps``. ``logits`` are the
      target logits of the returned z. The loop ends as soon as every row has converged.

    Traceable (for use inside a bigger jitted program). :func:`make_optimiser` runs the same steps
    from the host instead, which is ~5x faster on CPU (XLA's CPU convolutions are slow inside loop
    bodies, jax-ml/jax#12868) and no slower on accelerators.
    """
    z0, target_class, target_logit = _checked(z0, target_class, target_logit, max_steps)
    init, step = _ascent(generate_fn, logits_fn, target_class, target_logit, max_steps, learning_rate)
    cond = lambda carry: (carry[0] <= max_steps) & ~jnp.all(carry[3])
    _, z, _, done, steps, final = jax.lax.while_loop(cond, step, init(z0))
    return z, done, steps, final


def _as_pytree_fn(fn: Callable) -> jax.tree_util.Partial:
    """A callable as a pytree. A ``jax.tree_util.Partial(apply, params)`` stays one, so its arrays
    are jit ARGUMENTS (new weights reuse the compiled step; big weights are not baked into the
    program); any other callable becomes static (compiled once per callable)."""
    return fn if isinstance(fn, jax.tree_util.Partial) else jax.tree_util.Partial(fn)


def _init_pytree(fns, z0, target_class, target_logit, *, max_steps, learning_rate):
    init, _ = _ascent(*fns, target_class, target_logit, max_steps, learning_rate)
    return init(z0)


def _step_pytree(fns, carry, target_class, target_logit, *, max_steps, learning_rate):
    _, step = _ascent(*fns, target_class, target_logit, max_steps, learning_rate)
    return step(carry)


_STATIC = ("max_steps", "learning_rate")
_init_jit = jax.jit(_init_pytree, static_argnames=_STATIC)
_step_jit = jax.jit(_step_pytree, static_argnames=_STATIC, donate_argnums=1)


def make_optimiser(generate_fn: Callable, logits_fn: Callable, *, max_steps: int,
                   learning_rate: float, check_every: int = 8) -> Callable:
    """``run(z0, target_class, target_logit) -> (z, converged, steps, logits)``: the steps of
    :func:`optimise_latents` (same results), each one jitted call dispatched from the host, which
    asks every ``check_every`` steps whether all rows converged (one scalar transfer) to stop early.
    Compiled once per batch shape.

    Pass networks as ``jax.tree_util.Partial(apply_fn, params)`` so their weights are arguments of
    the compiled step rather than constants folded into it (see :func:`_as_pytree_fn`).
    """
    fns = (_as_pytree_fn(generate_fn), _as_pytree_fn(logits_fn))
    static = dict(max_steps=int(max_steps), learning_rate=float(learning_rate))

    def run(z0, target_class, target_logit):
        z0, target_class, target_logit = _checked(z0, target_class, target_logit, max_steps)
        carry = _init_jit(fns, z0, target_class, target_logit, **static)
        for s in range(int(max_steps) + 1):
            carry = _step_jit(fns, carry, target_class, target_logit, **static)
            if (s + 1) % check_every == 0 and bool(jax.device_get(jnp.all(carry[3]))):
                break
        _, z, _, done, steps, final = carry
        return z, done, steps, final

    return run


def patient_series(rng: Array, z_centre, num_images: int, std: float = 0.2) -> Array:
    """(num_images, D): the converged latent itself, then ``num_images - 1`` neighbours
    ``z_centre + N(0, std^2)``; rendered together they are one synthetic patient's image series."""
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    z_centre = jnp.asarray(z_centre, jnp.float32)
    noise = std * jax.random.normal(rng, (num_images - 1,) + z_centre.shape, jnp.float32)
    return jnp.concatenate([z_centre[None], z_centre[None] + noise], axis=0)


def label_images(label_fn: Callable, images, thresholds) -> Tuple[Array, Array]:
    """Multi-label labels of images: ``(probabilities (N, 14) = sigmoid(label_fn(images)),
    labels (N, 14) float: 1 where probability >= the class's threshold, else 0; NaN where the
    threshold is NaN (class never seen by the threshold's validation set))``."""
    probs = jax.nn.sigmoid(label_fn(images).astype(jnp.float32))
    thr = jnp.asarray(thresholds, jnp.float32)
    labels = jnp.where(jnp.isnan(thr), jnp.nan, (probs >= thr).astype(jnp.float32))
    return probs, labels
