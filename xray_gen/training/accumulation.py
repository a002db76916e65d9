"""Gradient accumulation: a large batch's mean gradient from equal microbatches, one at a time.

The paper batches (EMIXER's 512, a diffusion U-Net's 256) do not fit one device's memory with their
activations; scanning over microbatches keeps one microbatch's activations alive and gives the same
mean loss and gradient (exactly, for losses that are means over examples and have no batch statistics).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def split_microbatches(data: Any, steps: int, name: str = "train.grad_accum_steps") -> Any:
    """(n, ...) arrays -> (steps, n // steps, ...); `n` must be a multiple of `steps`."""
    def split(x):
        if x.shape[0] % steps:
            raise ValueError(f"{name}={steps} must divide the batch of {x.shape[0]} examples it splits")
        return x.reshape((steps, x.shape[0] // steps) + x.shape[1:])
    return jax.tree.map(split, data)


def accumulate(fn: Callable, params: Any, data: Any, carry: Any, steps: int):
    """Mean of `fn` over `steps` microbatches of `data`, run in sequence under `lax.scan`.

    fn(params, microbatch, carry, index) -> ((loss, (carry, metrics)), grads), i.e. a
    `jax.value_and_grad(..., has_aux=True)` whose aux is (carry, metrics). `carry` threads state
    that must advance between microbatches (batch-norm or spectral-norm statistics); `index` lets
    `fn` draw fresh randomness per microbatch. Returns the same structure with loss, metrics and
    grads averaged and the last carry. steps == 1 calls `fn` once on the whole batch.
    """
    if steps == 1:
        return fn(params, data, carry, jnp.zeros((), jnp.int32))
    micro = split_microbatches(data, steps)

    def body(acc, xs):
        carry, loss_sum, metrics_sum, grads_sum = acc
        (loss, (carry, metrics)), grads = fn(params, xs[0], carry, xs[1])
        add = lambda a, b: jax.tree.map(jnp.add, a, b)
        return (carry, loss_sum + loss, add(metrics_sum, metrics), add(grads_sum, grads)), None

    first = jax.tree.map(lambda x: x[0], micro)
    (loss_s, (_, metrics_s)), grads_s = jax.eval_shape(fn, params, first, carry, jnp.zeros((), jnp.int32))
    zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)
    init = (carry, zeros(loss_s), zeros(metrics_s), zeros(grads_s))
    (carry, loss, metrics, grads), _ = jax.lax.scan(body, init, (micro, jnp.arange(steps)))
    mean = lambda tree: jax.tree.map(lambda x: x / steps, tree)
    return (loss / steps, (carry, mean(metrics))), mean(grads)
