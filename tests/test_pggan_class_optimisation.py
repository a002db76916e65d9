"""Latent class optimisation on a toy differentiable generator and a toy linear classifier."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xray_gen.models.pggan import class_optimisation as co

D = 4


def generate(w, z):
    return jnp.tanh(z @ w).reshape(-1, 8, 8, 1)


def logits(v, images):
    return images.reshape(images.shape[0], -1) @ v


def toy_networks(seed=0):
    """generate(z) = tanh(z W) as 8x8x1 images; logits = flat images V (14 classes)."""
    k_w, k_v = jax.random.split(jax.random.PRNGKey(seed))
    w = 2.0 * jax.random.normal(k_w, (D, 64))
    v = jax.random.normal(k_v, (64, 14)) / 8.0
    return generate, logits, w, v


def optimiser(max_steps=200, learning_rate=0.05, seed=0):
    generate, logits, w, v = toy_networks(seed)
    return co.make_optimiser(jax.tree_util.Partial(generate, w), jax.tree_util.Partial(logits, v),
                             max_steps=max_steps, learning_rate=learning_rate), (generate, logits, w, v)


def test_optimisation_raises_target_logit_and_converged_rows_pass_their_target():
    run, (generate, logits, w, v) = optimiser()
    z0 = co.truncated_normal_latents(jax.random.PRNGKey(1), 6, D)
    classes = jnp.array([0, 2, 5, 5, 9, 13], jnp.int32)
    start = jnp.take_along_axis(logits(v, generate(w, z0)), classes[:, None], 1)[:, 0]
    target = start + 0.5
    z, converged, steps, final = run(z0, classes, target)
    assert bool(converged.all()), (start, final)
    recomputed = jnp.take_along_axis(logits(v, generate(w, z)), classes[:, None], 1)[:, 0]
    np.testing.assert_allclose(final, recomputed, rtol=1e-5, atol=1e-5)
    assert bool(jnp.all(final >= target))
    assert bool(jnp.all(steps > 0)) and bool(jnp.all(steps < 200))


def test_rows_already_above_target_converge_at_step_zero_and_do_not_move():
    run, (generate, logits, w, v) = optimiser()
    z0 = co.truncated_normal_latents(jax.random.PRNGKey(2), 4, D)
    classes = jnp.array([1, 1, 3, 3], jnp.int32)
    start = jnp.take_along_axis(logits(v, generate(w, z0)), classes[:, None], 1)[:, 0]
    # rows 0 and 2 already pass; rows 1 and 3 must climb (so the loop runs several steps)
    target = start + jnp.array([-0.5, 1.0, 0.0, 1.0])
    z, converged, steps, _ = run(z0, classes, target)
    assert bool(converged.all())
    np.testing.assert_array_equal(np.asarray(steps)[[0, 2]], [0, 0])
    assert int(steps[1]) > 0 and int(steps[3]) > 0
    np.testing.assert_array_equal(np.asarray(z)[[0, 2]], np.asarray(z0)[[0, 2]])
    assert not np.allclose(np.asarray(z)[[1, 3]], np.asarray(z0)[[1, 3]])


def test_unreachable_target_fails_at_max_steps_while_others_converge():
    run, (generate, logits, w, v) = optimiser(max_steps=30)
    z0 = co.truncated_normal_latents(jax.random.PRNGKey(3), 2, D)
    bound = float(jnp.abs(v[:, 4]).sum())  # |tanh| <= 1: no image reaches a logit above this
    start = logits(v, generate(w, z0))[:, 4]
    z, converged, steps, final = run(z0, jnp.array([4, 4], jnp.int32), jnp.array([bound + 1.0, start[1] + 0.2]))
    np.testing.assert_array_equal(converged, [False, True])
    assert int(steps[0]) == 30 and int(steps[1]) < 30
    assert float(final[0]) < bound + 1.0 and float(final[0]) > float(start[0])  # it climbed but fell short


def test_each_row_follows_its_own_trajectory_whatever_the_batch():
    """Freezing and Adam are per row: optimising a row alone or inside a batch gives the same result."""
    run, _ = optimiser(max_steps=40)
    z0 = co.truncated_normal_latents(jax.random.PRNGKey(4), 3, D)
    classes = jnp.array([2, 7, 7], jnp.int32)
    target = jnp.array([1e9, 1e9, -1e9])  # two rows run all steps, one converges at once
    z, _, _, final = run(z0, classes, target)
    z_alone, _, _, final_alone = run(z0[1:2], classes[1:2], target[1:2])
    np.testing.assert_allclose(z[1], z_alone[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(final[1], final_alone[0], rtol=1e-5, atol=1e-5)


def test_optimiser_compiles_once_per_shape_with_new_weights():
    before = co._step_jit._cache_size()
    z0 = co.truncated_normal_latents(jax.random.PRNGKey(5), 5, D)
    classes, target = jnp.zeros(5, jnp.int32), jnp.full(5, 0.5)
    for seed in (10, 11):  # same shapes, different weights (Partial leaves are jit arguments)
        run, _ = optimiser(max_steps=7, seed=seed)
        jax.block_until_ready(run(z0, classes, target))
    assert co._step_jit._cache_size() == before + 1


def test_host_stepped_optimiser_equals_the_while_loop():
    """make_optimiser (one jitted step per call, early stop checked every few steps) gives exactly
    what the traceable lax.while_loop version gives, whatever the check interval."""
    generate, logits, w, v = toy_networks(3)
    z0 = co.truncated_normal_latents(jax.random.PRNGKey(7), 5, D)
    classes = jnp.array([0, 3, 3, 7, 13], jnp.int32)
    start = jnp.take_along_axis(logits(v, generate(w, z0)), classes[:, None], 1)[:, 0]
    target = start + jnp.array([0.3, 0.8, -1.0, 0.5, 1e9])  # one at once, one never
    looped = jax.jit(lambda z, c, t: co.optimise_latents(lambda x: generate(w, x), lambda x: logits(v, x), z, c, t,
                                                          max_steps=30, learning_rate=0.05))(z0, classes, target)
    for check_every in (1, 8):
        run = co.make_optimiser(jax.tree_util.Partial(generate, w), jax.tree_util.Partial(logits, v), max_steps=30,
                                learning_rate=0.05, check_every=check_every)
        for a, b in zip(run(z0, classes, target), looped):
            np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-6, atol=1e-6)


def test_optimise_latents_rejects_mismatched_shapes():
    generate, logits, w, v = toy_networks()
    with pytest.raises(ValueError, match="target_logit"):
        co.optimise_latents(lambda z: generate(w, z), lambda x: logits(v, x), jnp.zeros((3, D)),
                            jnp.zeros(3, jnp.int32), jnp.zeros(2), max_steps=3, learning_rate=0.1)


def test_truncated_normal_bound_and_severity_margins():
    z = co.truncated_normal_latents(jax.random.PRNGKey(0), 4000, 8, truncation=0.7)
    assert z.shape == (4000, 8) and z.dtype == jnp.float32
    assert float(jnp.abs(z).max()) <= 0.7
    assert float(jnp.abs(z).max()) > 0.65  # truncated, not squashed into a smaller range
    m = co.severity_margins(jax.random.PRNGKey(1), 20000)
    assert m.shape == (20000,) and float(m.min()) >= 0.0
    # E|N(1, 1)| = sqrt(2/pi) exp(-1/2) + (1 - 2 Phi(-1)) = 1.1666
    assert float(m.mean()) == pytest.approx(1.1666, abs=0.03)


def test_threshold_logits():
    np.testing.assert_allclose(co.threshold_logits([0.5, 0.8808, np.nan])[:2], [0.0, 2.0], atol=1e-3)
    assert np.isnan(co.threshold_logits([np.nan])[0])
    with pytest.raises(ValueError, match=r"thresholds\[1\]"):
        co.threshold_logits([0.5, 1.0])


def test_patient_series_shape_centre_and_spread():
    centre = jnp.arange(64, dtype=jnp.float32) / 64
    series = co.patient_series(jax.random.PRNGKey(0), centre, 5, std=0.2)
    assert series.shape == (5, 64)
    np.testing.assert_array_equal(series[0], centre)
    offsets = np.asarray(series[1:] - centre)
    assert offsets.std() == pytest.approx(0.2, rel=0.15)
    assert abs(offsets.mean()) < 0.05
    assert len({tuple(np.round(r, 5)) for r in np.asarray(series)}) == 5  # neighbours differ
    assert co.patient_series(jax.random.PRNGKey(0), centre, 1).shape == (1, 64)


def test_label_images_uses_sigmoid_and_per_class_thresholds():
    logits = jnp.array([[0.0, 2.0, -1.0], [1.0, -2.0, 3.0]])
    probs, labels = co.label_images(lambda x: x, logits, jnp.array([0.5, 0.9, np.nan]))
    np.testing.assert_allclose(probs, jax.nn.sigmoid(logits), rtol=1e-6)
    np.testing.assert_array_equal(labels[:, :2], [[1, 0], [1, 0]])  # sigmoid(2) = 0.881 < 0.9
    assert bool(jnp.isnan(labels[:, 2]).all())
