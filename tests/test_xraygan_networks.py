"""XRayGAN networks: per-stage shapes, the blend, noise, a genuinely conditioned D, one-shot size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xray_gen.models.xraygan.networks import (
    MultiScaleGenerator, OneShotGenerator, PatchDiscriminator, ProgressiveGenerator, XRayGANGenerator,
    blend, upsample2x)

TINY = dict(base_width=16, stage_width=8, num_res=1)
B, COND = 2, 32


def _key(seed):
    # rbg keys: flax init under threefry takes ~3x longer to compile on CPU
    return jax.random.key(seed, impl="rbg")


def _n_params(tree):
    return sum(x.size for x in jax.tree_util.tree_leaves(tree))


def _cond(seed=0):
    return jax.random.normal(jax.random.key(seed), (B, COND))


def test_stage_shapes_both_views_range_and_prefix_consistency():
    g = XRayGANGenerator(num_stages=3, **TINY)
    c = _cond()
    # stage=None: every stage gets parameters; init's own forward is the one 256-px forward
    full, params = jax.jit(g.init_with_output)(_key(1), c)
    short = jax.jit(lambda p, c: g.apply(p, c, stage=1))(params, c)
    for view in ("frontal", "lateral"):
        assert [im.shape for im in full[view]] == [(B, s, s, 1) for s in (32, 64, 128, 256)]
        assert len(short[view]) == 2
        for im in full[view]:
            assert np.all(np.abs(np.asarray(im)) <= 1.0) and np.all(np.isfinite(im))
        # running fewer stages must give the same early images (loose: tiny widths amplify
        # float reassociation between the two compiled programs through LayerNorm)
        np.testing.assert_allclose(short[view][1], full[view][1], atol=2e-2)
    # the two views are separate cascades
    assert not np.allclose(full["frontal"][0], full["lateral"][0])
    with pytest.raises(ValueError):
        g.apply(params, c, stage=4)


def test_blend_hand_values():
    new, prev = jnp.array([1.0, -1.0, 0.5]), jnp.array([0.0, 1.0, 0.5])
    np.testing.assert_allclose(blend(new, prev, 0.5), [0.5, 0.0, 0.5])
    np.testing.assert_allclose(blend(new, prev, 0.25), [0.25, 0.5, 0.5])
    np.testing.assert_allclose(blend(new, prev, 1.0), new)
    np.testing.assert_allclose(blend(new, prev, 0.0), prev)


def test_progressive_stage_blend_endpoints():
    x_prev = jax.random.uniform(_key(2), (B, 8, 8, 1), minval=-1, maxval=1)
    c = _cond()
    params = jax.jit(ProgressiveGenerator(width=8, num_res=1).init)(_key(3), x_prev, c)
    out = {a: ProgressiveGenerator(width=8, num_res=1, a=a).apply(params, x_prev, c) for a in (0.0, 0.5, 1.0)}
    up = upsample2x(x_prev)
    assert out[0.5].shape == (B, 16, 16, 1)
    np.testing.assert_allclose(out[0.0], up, atol=1e-6)  # a=0: upsampled previous only
    assert not np.allclose(out[1.0], up, atol=1e-3)  # a=1: the generator's own image
    np.testing.assert_allclose(out[0.5], 0.5 * out[1.0] + 0.5 * up, atol=1e-6)
    # bilinear upsampling of a constant image stays constant
    np.testing.assert_allclose(upsample2x(jnp.full((1, 4, 4, 1), 0.3)), jnp.full((1, 8, 8, 1), 0.3), atol=1e-6)


def test_noise_input():
    c = _cond()
    g = MultiScaleGenerator(num_stages=0, noise_dim=4, **TINY)
    z1, z2 = jax.random.normal(_key(4), (2, B, 4))
    params = jax.jit(g.init)(_key(5), c, z1)
    a, a_again, b = g.apply(params, c, z1), g.apply(params, c, z1), g.apply(params, c, z2)
    np.testing.assert_array_equal(a[-1], a_again[-1])
    assert not np.allclose(a[-1], b[-1], atol=1e-4)
    with pytest.raises(ValueError):
        g.apply(params, c)  # noise_dim > 0 needs z
    g0 = MultiScaleGenerator(num_stages=0, **TINY)
    p0 = jax.jit(g0.init)(_key(5), c)
    assert g0.apply(p0, c)[-1].shape == (B, 32, 32, 1)
    with pytest.raises(ValueError):
        g0.apply(p0, c, z1)  # noise_dim=0: z would be silently ignored


def test_discriminator_is_conditioned():
    d = PatchDiscriminator(width=8, max_width=32, text_dim=8)
    x = jax.random.uniform(_key(6), (B, 32, 32, 1), minval=-1, maxval=1)
    c1, c2 = _cond(1), _cond(2)
    params = jax.jit(d.init)(_key(7), x, c1)

    @jax.jit
    def probe(params, x, c1, c2):
        both_x = jnp.concatenate([x, jnp.flip(x, axis=1)])  # an image pair per condition
        s1, s2 = d.apply(params, both_x, jnp.tile(c1, (2, 1))), d.apply(params, both_x, jnp.tile(c2, (2, 1)))
        grad_c = jax.grad(lambda c: jnp.sum(d.apply(params, x, c)))(c1)
        return s1, s2, grad_c, d.apply(params, x[:1], c1[:1])

    s1, s2, grad_c, s_single = probe(params, x, c1, c2)
    assert s1.shape == (2 * B, 4, 4)
    assert not np.allclose(s1[:B], s2[:B], atol=1e-5)  # same image, different c
    assert float(jnp.max(jnp.abs(grad_c))) > 1e-6
    # c must interact with the image: an additive c-only term would cancel in D(real,c) - D(fake,c)
    assert not np.allclose(s1[:B] - s1[B:], s2[:B] - s2[B:], atol=1e-5)
    # no cross-sample coupling (no batch norm): sample 0's score ignores sample 1
    np.testing.assert_allclose(s_single, s1[:1], atol=1e-4)
    # stride-2 blocks end at a 4x4 patch map at every stage's resolution
    for size in (64, 256):
        shape = jax.eval_shape(lambda p: d.apply(p, jnp.zeros((B, size, size, 1)), c1),
                               jax.eval_shape(d.init, _key(0), jnp.zeros((B, size, size, 1)), c1))
        assert shape.shape == (B, 4, 4)


def test_one_shot_matches_cascade_size_and_shape():
    c = _cond()
    k = _key(8)
    for res, stages in ((64, 1), (256, 3)):
        cascade = jax.eval_shape(MultiScaleGenerator(num_stages=stages, **TINY).init, k, c)
        one = jax.eval_shape(OneShotGenerator(resolution=res, **TINY).init, k, c)
        ratio = _n_params(one) / _n_params(cascade)
        assert 0.7 <= ratio <= 1.3, (res, ratio)
    g = OneShotGenerator(resolution=64, **TINY)
    params = jax.jit(g.init)(k, c)
    out = g.apply(params, c)
    assert out.shape == (B, 64, 64, 1) and np.all(np.abs(np.asarray(out)) <= 1.0)
    with pytest.raises(ValueError):
        OneShotGenerator(resolution=48, **TINY).init(k, c)


def test_bfloat16_compute_keeps_float32_params_and_outputs():
    c = _cond()
    g = MultiScaleGenerator(num_stages=1, dtype=jnp.bfloat16, **TINY)
    params = jax.eval_shape(g.init, _key(9), c)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
    assert jax.eval_shape(g.apply, params, c)[-1].dtype == jnp.float32


def test_icnr_init_makes_the_pixel_shuffle_start_as_nearest_upsampling():
    import flax.linen as nn

    from xray_gen.models.xraygan.networks import _pixel_shuffle, icnr_init

    conv = nn.Conv(4 * 3, (3, 3), padding="SAME", kernel_init=icnr_init())
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 5, 6))
    y = _pixel_shuffle(conv.apply(conv.init(jax.random.PRNGKey(1), x), x), 2)  # (2, 10, 10, 3)
    np.testing.assert_allclose(y, jnp.repeat(jnp.repeat(y[:, ::2, ::2], 2, axis=1), 2, axis=2), atol=1e-6)
    assert float(jnp.std(y)) > 0.1
