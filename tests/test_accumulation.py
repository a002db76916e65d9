"""Gradient accumulation: microbatch means equal the whole batch's; state threads through; bad splits named."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xray_gen.training.accumulation import accumulate


def _regression_fn(params, batch, carry, index):
    def loss_fn(w):
        err = batch["x"] @ w - batch["y"]
        return jnp.mean(err ** 2), ((carry[0] + 1, carry[1] + index), {"mae": jnp.mean(jnp.abs(err))})
    return jax.value_and_grad(loss_fn, has_aux=True)(params)


def test_microbatch_mean_equals_whole_batch_and_carry_advances():
    rng = np.random.default_rng(0)
    batch = {"x": jnp.asarray(rng.normal(size=(12, 3)), jnp.float32), "y": jnp.asarray(rng.normal(size=(12,)), jnp.float32)}
    w = jnp.asarray([0.5, -1.0, 2.0])
    (loss1, (_, m1)), g1 = accumulate(_regression_fn, w, batch, (0, 0), 1)
    (loss4, (carry, m4)), g4 = jax.jit(accumulate, static_argnums=(0, 4))(_regression_fn, w, batch, (0, 0), 4)
    np.testing.assert_allclose(loss4, loss1, rtol=1e-6)
    np.testing.assert_allclose(g4, g1, rtol=1e-5)
    np.testing.assert_allclose(m4["mae"], m1["mae"], rtol=1e-6)  # equal-sized microbatches: mean of means
    assert (int(carry[0]), int(carry[1])) == (4, 0 + 1 + 2 + 3)  # every microbatch ran once, in order


def test_uneven_split_names_the_setting():
    batch = {"x": jnp.zeros((10, 3)), "y": jnp.zeros((10,))}
    with pytest.raises(ValueError, match="train.grad_accum_steps=4"):
        accumulate(_regression_fn, jnp.zeros(3), batch, (0, 0), 4)
