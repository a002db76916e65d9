"""PGGAN building blocks against hand-computed values, and the fade-in / growth contracts."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xray_gen.models.pggan import networks as pn

CHANNELS = (8, 8, 4)  # levels 0..2: 4, 8, 16 px


def test_equalized_dense_scales_weights_at_run_time():
    layer = pn.EqualizedDense(3, gain=2.0)
    x = jnp.arange(8.0).reshape(2, 4)
    params = layer.init(jax.random.PRNGKey(0), x)
    kernel = np.asarray(params["params"]["kernel"])
    assert abs(kernel.std() - 1.0) < 0.6  # stored as N(0, 1), not He-scaled
    expected = np.asarray(x) @ (kernel * 2.0 / math.sqrt(4))
    np.testing.assert_allclose(layer.apply(params, x), expected, rtol=1e-5)


def test_equalized_conv_scale_uses_kernel_fan_in():
    layer = pn.EqualizedConv(2, kernel_size=3)
    x = jnp.ones((1, 5, 5, 4))
    params = layer.init(jax.random.PRNGKey(1), x)
    kernel = np.asarray(params["params"]["kernel"])
    centre = np.asarray(layer.apply(params, x))[0, 2, 2]  # interior pixel: every tap sees a 1
    np.testing.assert_allclose(centre, kernel.sum(axis=(0, 1, 2)) * math.sqrt(2) / math.sqrt(9 * 4), rtol=1e-5)


def test_pixel_norm_hand_computed():
    x = jnp.array([[[[3.0, 4.0]]]])
    rms = math.sqrt((9 + 16) / 2)
    np.testing.assert_allclose(pn.pixel_norm(x)[0, 0, 0], [3 / rms, 4 / rms], rtol=1e-6)


def test_minibatch_stddev_groups_hand_computed():
    # 4 samples, 1x1 pixel, 1 feature: values 0, 1, 2, 5. Groups of 2 in Karras' layout pair
    # sample n with n + 2 (n % 2 is the group member index): {0, 2} and {1, 5}.
    x = jnp.array([0.0, 1.0, 2.0, 5.0]).reshape(4, 1, 1, 1)
    out = np.asarray(pn.minibatch_stddev(x, group_size=2, eps=0.0))
    assert out.shape == (4, 1, 1, 2)
    np.testing.assert_allclose(out[:, 0, 0, 0], [0, 1, 2, 5])
    np.testing.assert_allclose(out[:, 0, 0, 1], [1.0, 2.0, 1.0, 2.0], rtol=1e-6)  # std {0,2}=1, {1,5}=2
    whole = np.asarray(pn.minibatch_stddev(x, group_size=0, eps=0.0))[:, 0, 0, 1]
    np.testing.assert_allclose(whole, np.std([0, 1, 2, 5]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(pn.minibatch_stddev(x, group_size=1))[..., 1], 1e-4, rtol=1e-3)  # sqrt(eps)
    with pytest.raises(ValueError, match="not divisible"):
        pn.minibatch_stddev(jnp.zeros((6, 1, 1, 1)), group_size=4)


def test_level_and_resolution():
    assert [pn.resolution_of(k) for k in range(9)] == [4, 8, 16, 32, 64, 128, 256, 512, 1024]
    assert pn.level_of(1024) == 8 and pn.level_of(4) == 0
    for bad in (2, 48, 100):
        with pytest.raises(ValueError, match="4 \\* 2\\*\\*k"):
            pn.level_of(bad)


def _init_generator():
    g = pn.Generator(CHANNELS)
    params = g.init(jax.random.PRNGKey(0), jnp.zeros((1, 6)), 2)
    return g, params


def _perturb(params, path):
    """A copy of `params` with the subtree at `path` replaced by different random values."""
    params = jax.tree.map(lambda a: a, params)
    node = params["params"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = jax.tree.map(lambda a: a + 1.0, node[path[-1]])
    return params


def test_generator_creates_every_level_and_fades():
    g, params = _init_generator()
    keys = set(params["params"])
    assert {"to_rgb_0", "to_rgb_1", "to_rgb_2", "blocks_0", "blocks_1", "dense", "conv0"} <= keys
    z = jax.random.normal(jax.random.PRNGKey(3), (4, 6))
    for level in (1, 2):
        old = g.apply(params, z, level - 1)
        at0 = g.apply(params, z, level, 0.0)
        assert at0.shape == (4, pn.resolution_of(level), pn.resolution_of(level), 1)
        np.testing.assert_allclose(at0, pn.upsample(old), rtol=1e-5, atol=1e-6)  # the old path exactly
        # alpha 1 is the new path only: the previous level's output layer no longer matters ...
        at1 = g.apply(params, z, level, 1.0)
        np.testing.assert_allclose(g.apply(_perturb(params, [f"to_rgb_{level - 1}"]), z, level, 1.0), at1, rtol=1e-5, atol=1e-6)
        # ... while at alpha 0 the new block does not matter.
        np.testing.assert_allclose(g.apply(_perturb(params, [f"blocks_{level - 1}"]), z, level, 0.0), at0, rtol=1e-5, atol=1e-6)
        mid = g.apply(params, z, level, 0.25)
        np.testing.assert_allclose(mid, 0.75 * at0 + 0.25 * at1, rtol=1e-4, atol=1e-5)


def test_discriminator_fade_in_matches_previous_level_at_alpha_zero():
    d = pn.Discriminator(CHANNELS, mbstd_group=2)
    params = d.init(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 1)), 2)
    assert {"from_rgb_0", "from_rgb_1", "from_rgb_2", "blocks_0", "blocks_1", "head"} <= set(params["params"])
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 1))
    old, _ = d.apply(params, pn.downsample(x), 1)
    new0, _ = d.apply(params, x, 2, 0.0)
    np.testing.assert_allclose(new0, old, rtol=1e-5, atol=1e-6)
    new1, feats = d.apply(params, x, 2, 1.0)
    assert feats.shape == (4, CHANNELS[0]) and new1.shape == (4, 1)
    np.testing.assert_allclose(d.apply(_perturb(params, ["from_rgb_1"]), x, 2, 1.0)[0], new1, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="expects 16 px"):
        d.apply(params, jnp.zeros((2, 8, 8, 1)), 2)


def test_growth_keeps_weights_and_trains_only_used_levels():
    """One parameter tree for all levels: a level-0 training step leaves the unused blocks as they were."""
    from xray_gen.configs import pggan as pggan_config
    from xray_gen.models.pggan.task import PGGANTask

    config = pggan_config.get_config("smoke")
    task = PGGANTask(config, workdir=None)
    state = task.init(jax.random.PRNGKey(0))
    batch = {"frontal": np.random.default_rng(0).integers(0, 255, (8, 4, 4, 1), dtype=np.uint8)}
    new, metrics = jax.jit(task.phase_step(0))(state, {}, batch)
    assert jax.tree.structure(new.g_params) == jax.tree.structure(state.g_params)
    changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), state.g_params, new.g_params)
    g = changed["params"]
    assert g["dense"]["kernel"] and g["conv0"]["kernel"] and g["to_rgb_0"]["kernel"]
    assert not any(jax.tree.leaves(g["blocks_0"])) and not any(jax.tree.leaves(g["to_rgb_1"]))
    d = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), state.d_params, new.d_params)["params"]
    assert d["from_rgb_0"]["kernel"] and not any(jax.tree.leaves(d["from_rgb_2"])) and not any(jax.tree.leaves(d["blocks_1"]))
    assert float(metrics["alpha"]) == 1.0 and np.isfinite(float(metrics["d_loss"]))
