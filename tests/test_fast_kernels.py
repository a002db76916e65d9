"""The CPU-friendly kernels (xray_gen/nn/attention.py, xray_gen/nn/conv.py) compute what the
library functions they replace compute, values and derivatives (second order for the strided
convolution: a gradient penalty differentiates it twice)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from xray_gen.nn import attention
from xray_gen.nn.attention import heads_per_chunk, multi_head_attention
from xray_gen.nn.conv import im2col_conv, im2col_conv_general_dilated, uses_im2col

DN = ("NHWC", "HWIO", "NHWC")


def _qkv(b=2, t=5, s=7, n=3, h=4, seed=0):
    ks = jax.random.split(jax.random.PRNGKey(seed), 3)
    return (jax.random.normal(ks[0], (b, t, n, h)), jax.random.normal(ks[1], (b, s, n, h)),
            jax.random.normal(ks[2], (b, s, n, h)))


def _reference_attention(q, k, v, mask=None):
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")


@pytest.mark.parametrize("masked", ["none", "keys", "all_masked_row"])
def test_attention_matches_jax_values_and_gradients(masked):
    q, k, v = _qkv()
    mask = None
    if masked != "none":
        m = np.ones((2, 1, 5, 7), bool)
        m[0, :, :, 4:] = False  # padded keys of the first sequence
        if masked == "all_masked_row":
            m[1, :, 2, :] = False  # one query sees no key: uniform attention, no NaN
        mask = jnp.asarray(m)
    np.testing.assert_allclose(multi_head_attention(q, k, v, mask), _reference_attention(q, k, v, mask),
                               rtol=1e-5, atol=1e-5)
    cot = jax.random.normal(jax.random.PRNGKey(9), q.shape[:2] + v.shape[2:])
    loss = lambda f: (lambda q, k, v: jnp.sum(f(q, k, v, mask) * cot))
    ours = jax.grad(loss(multi_head_attention), argnums=(0, 1, 2))(q, k, v)
    ref = jax.grad(loss(_reference_attention), argnums=(0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", ours, ref):
        assert np.isfinite(np.asarray(a)).all(), name
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=f"d{name}")


def test_attention_gradient_matches_finite_differences():
    q, k, v = _qkv(b=1, t=3, s=4, n=2, h=2, seed=3)
    f = lambda q: jnp.sum(jnp.sin(multi_head_attention(q, k, v)))
    g = jax.grad(f)(q)
    d = jax.random.normal(jax.random.PRNGKey(4), q.shape)
    eps = 1e-3
    fd = (f(q + eps * d) - f(q - eps * d)) / (2 * eps)
    np.testing.assert_allclose(jnp.vdot(g, d), fd, rtol=2e-3)


def test_attention_value_width_and_scale_as_sagan():
    """EMIXER's non-local block: values wider than keys, unscaled logits."""
    q, k, _ = _qkv(n=1)
    v = jax.random.normal(jax.random.PRNGKey(5), (2, 7, 1, 6))
    ref = jnp.einsum("bqk,bkc->bqc", jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", q[:, :, 0], k[:, :, 0]), -1), v[:, :, 0])
    np.testing.assert_allclose(multi_head_attention(q, k, v, scale=1.0)[:, :, 0], ref, rtol=1e-5, atol=1e-5)
    g = jax.grad(lambda v: jnp.sum(multi_head_attention(q, k, v, scale=1.0) ** 2))(v)
    g_ref = jax.grad(lambda v: jnp.sum(jnp.einsum("bqk,bkc->bqc", jax.nn.softmax(
        jnp.einsum("bqc,bkc->bqk", q[:, :, 0], k[:, :, 0]), -1), v[:, :, 0]) ** 2))(v)
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-5)


def test_heads_per_chunk_divides_heads_and_stays_off_accelerators():
    mb = 1 << 20
    assert heads_per_chunk(64, 1024, 1024, "cpu") == 1  # 4 MB per head: one head per chunk
    assert heads_per_chunk(64, 256, 256, "cpu") == 16
    assert heads_per_chunk(64, 1024, 77, "cpu") == 8  # 13 would fit; 8 is the largest divisor of 64 below
    assert heads_per_chunk(6, 1024, 1024, "cpu") == 1
    assert heads_per_chunk(4, 256, 256, "cpu") == 0  # 1 MB in all: one pass
    assert heads_per_chunk(64, 1024, 1024, "gpu") == 0
    assert attention.CHUNK_BYTES == 4 * mb


@pytest.mark.parametrize("value_width,scale", [(4, None), (6, 1.0)])
def test_chunked_attention_matches_jax_values_and_gradients(monkeypatch, value_width, scale):
    """The chunked CPU path (forced here on small shapes: 2 heads per chunk over 3 chunks) computes
    the same values and all three derivatives, values wider than keys included."""
    monkeypatch.setattr(attention, "CHUNK_BYTES", 2 * 5 * 7 * 4)
    assert heads_per_chunk(6, 5, 7, "cpu") == 2
    q, k, _ = _qkv()
    v = jax.random.normal(jax.random.PRNGKey(6), (2, 7, 3, value_width))
    factor = 4 ** -0.5 if scale is None else scale

    def reference(q, k, v):  # softmax attention written out, any value width
        probs = jax.nn.softmax(jnp.einsum("btnh,bsnh->bnts", q, k) * factor, axis=-1)
        return jnp.einsum("bnts,bsnv->btnv", probs, v)

    np.testing.assert_allclose(multi_head_attention(q, k, v, scale=scale), reference(q, k, v), rtol=1e-5, atol=1e-5)
    cot = jax.random.normal(jax.random.PRNGKey(9), q.shape[:3] + (value_width,))
    loss = lambda f: (lambda q, k, v: jnp.sum(f(q, k, v) * cot))
    ours = jax.jit(jax.grad(loss(lambda q, k, v: multi_head_attention(q, k, v, scale=scale)), argnums=(0, 1, 2)))
    ref = jax.grad(loss(reference), argnums=(0, 1, 2))
    for name, a, b in zip("qkv", ours(q, k, v), ref(q, k, v)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=f"d{name}")


def test_attention_rejects_mismatched_shapes():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="attention needs"):
        multi_head_attention(q, k, v[:, :3])
    with pytest.raises(ValueError, match="attention needs"):
        multi_head_attention(q, k[..., :2], v)
    with pytest.raises(ValueError):
        multi_head_attention(q, k, v, jnp.ones((2, 1, 5, 6), bool))


@pytest.mark.parametrize("hw,kernel,stride,padding", [
    (8, 3, 2, "SAME"), (9, 3, 2, "SAME"), (8, 4, 2, ((1, 1), (1, 1))), (7, 1, 2, "VALID"), (8, 3, 3, "VALID"),
    # kernels larger than their output, some taps reading only padding (dropped)
    (2, 3, 1, "SAME"), (1, 3, 1, "SAME"), (4, 4, 1, "VALID"), (2, 3, 2, "SAME"), (1, 3, 1, ((2, 2), (2, 2))),
    (3, 5, 1, ((0, 4), (3, 1))),
])
def test_im2col_conv_matches_lax(hw, kernel, stride, padding):
    """Values and both first derivatives."""
    kx, kw = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.normal(kx, (2, hw, hw, 3))
    w = jax.random.normal(kw, (kernel, kernel, 3, 5))
    lax_conv = lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=DN)
    ours = lambda x, w: im2col_conv(x, w, (stride, stride), padding)
    np.testing.assert_allclose(ours(x, w), lax_conv(x, w), rtol=1e-5, atol=1e-5)
    cot = jax.random.normal(jax.random.PRNGKey(7), lax_conv(x, w).shape)
    grads = lambda conv: jax.grad(lambda x, w: jnp.sum(conv(x, w) * cot), argnums=(0, 1))(x, w)
    for a, b in zip(grads(ours), grads(lax_conv)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_im2col_conv_of_padding_only_is_zero():
    x = jnp.ones((1, 1, 1, 3))
    w = jnp.ones((1, 1, 3, 4))
    args = ((3, 1), ((2, 0), (0, 0)))  # the one output row reads the top padding only
    out = im2col_conv(x, w, *args)
    ref = lax.conv_general_dilated(x, w, *args, dimension_numbers=DN)
    assert out.shape == ref.shape == (1, 1, 1, 4)
    np.testing.assert_array_equal(out, ref)


def test_im2col_dispatch_only_for_strided_or_tiny_nhwc_convs_on_cpu():
    dn = lax.conv_dimension_numbers((1, 8, 8, 3), (3, 3, 3, 4), DN)
    assert uses_im2col((1, 8, 8, 3), (3, 3, 3, 4), (2, 2), dimension_numbers=dn, backend="cpu")
    assert not uses_im2col((1, 8, 8, 3), (3, 3, 3, 4), (1, 1), dimension_numbers=dn, backend="cpu")
    assert not uses_im2col((1, 8, 8, 3), (3, 3, 3, 4), (1, 1), dimension_numbers=dn, backend="cpu", padding="SAME")
    assert not uses_im2col((1, 3, 3, 3), (3, 3, 3, 4), (1, 1), dimension_numbers=dn, backend="cpu", padding="SAME")
    assert uses_im2col((1, 2, 2, 3), (3, 3, 3, 4), (1, 1), dimension_numbers=dn, backend="cpu", padding="SAME")
    assert uses_im2col((1, 4, 4, 3), (4, 4, 3, 4), (1, 1), dimension_numbers=dn, backend="cpu")  # 1x1 output
    assert not uses_im2col((1, 2, 2, 3), (3, 3, 3, 4), (1, 1), dimension_numbers=dn, backend="gpu", padding="SAME")
    assert not uses_im2col((1, 8, 8, 3), (3, 3, 3, 4), (2, 2), dimension_numbers=dn, backend="gpu")
    assert not uses_im2col((1, 8, 8, 3), (3, 3, 3, 4), (2, 2), rhs_dilation=(2, 2), dimension_numbers=dn,
                           backend="cpu")
    assert not uses_im2col((1, 8, 8, 3), (3, 3, 1, 4), (2, 2), feature_group_count=3, dimension_numbers=
                           lax.conv_dimension_numbers((1, 8, 8, 3), (3, 3, 1, 4), DN), backend="cpu")
    nchw = lax.conv_dimension_numbers((1, 3, 8, 8), (4, 3, 3, 3), ("NCHW", "OIHW", "NCHW"))
    assert not uses_im2col((1, 3, 8, 8), (4, 3, 3, 3), (2, 2), dimension_numbers=nchw, backend="cpu")


def test_flax_conv_with_im2col_equals_default_conv():
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 16, 16, 4))
    plain = nn.Conv(6, (3, 3), strides=2, padding="SAME")
    fast = nn.Conv(6, (3, 3), strides=2, padding="SAME", conv_general_dilated=im2col_conv_general_dilated)
    params = plain.init(jax.random.PRNGKey(3), x)
    np.testing.assert_allclose(fast.apply(params, x), plain.apply(params, x), rtol=1e-5, atol=1e-5)


def test_xla_cpu_defaults_respect_user_flags():
    from xray_gen.xla_flags import YNN_FLAG, cpu_defaults

    assert cpu_defaults("", "0.10.2") == YNN_FLAG
    assert cpu_defaults("--xla_force_host_platform_device_count=4", "0.10.2").split() == [
        "--xla_force_host_platform_device_count=4", YNN_FLAG]
    mine = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
    assert cpu_defaults(mine, "0.10.2") == mine  # the user's own setting wins
    assert cpu_defaults("", "0.11.0") == ""  # unknown jaxlib: no flag that could abort XLA
