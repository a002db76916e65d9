"""U-ViT denoiser: shapes, dependence on t/context, long-skip wiring, patch layout, named sizes."""

import dataclasses

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xray_gen.nn.uvit import UViT, UViTConfig, uvit_config

TINY = uvit_config("tiny", sample_size=8, context_dim=12, num_context_tokens=2, depth=5)  # 2 in, mid, 2 out


def _numpy_params(model, *inputs, seed=0):
    """Random parameters of the right shapes drawn with numpy: `model.init` compiles one XLA program
    per initializer shape (tens of seconds on a busy 2-core machine) and these tests need none of it."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), *inputs)["params"]
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = path[-1].key
        n = rng.standard_normal(s.shape).astype(np.float32)
        if name == "kernel":
            return jnp.asarray(n / np.sqrt(np.prod(s.shape[:-1])))
        if name == "scale":
            return jnp.asarray(1.0 + 0.1 * n)
        return jnp.asarray((0.1 if name == "bias" else 0.02) * n)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def tiny():
    """(model, params, (x, t, ctx)) for the TINY config."""
    model = UViT(TINY)
    k1, k2 = jax.random.split(jax.random.key(0))
    x = jax.random.normal(k1, (2, 8, 8, TINY.in_channels))
    ctx = jax.random.normal(k2, (2, TINY.num_context_tokens, TINY.context_dim))
    t = jnp.array([10, 500])
    return model, _numpy_params(model, x, t, ctx), (x, t, ctx)


def _edit(params, fn):
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    flat = fn(dict(flat))
    return flax.traverse_util.unflatten_dict(flat, sep="/")


def test_output_shape_and_dependence_on_t_and_context(tiny):
    model, params, (x, t, ctx) = tiny
    apply = lambda x, t, c, m=None: model.apply({"params": params}, x, t, c, m)
    out = apply(x, t, ctx)
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert not np.allclose(apply(x, t + 100, ctx), out, atol=1e-4)
    assert not np.allclose(apply(x, t, ctx + 1.0), out, atol=1e-4)
    # examples are independent: changing example 1's context leaves example 0 alone
    out2 = apply(x, t, ctx.at[1].add(1.0))
    np.testing.assert_allclose(out2[0], out[0], atol=1e-5)
    # a masked condition token is ignored entirely; an unmasked one is not
    mask = jnp.array([[1, 0], [1, 0]])
    masked = apply(x, t, ctx, mask)
    np.testing.assert_allclose(apply(x, t, ctx.at[:, 1].set(7.0), mask), masked, atol=1e-5)
    assert not np.allclose(apply(x, t, ctx.at[:, 0].set(7.0), mask), masked, atol=1e-4)


def test_pooled_context_vector_and_input_errors(tiny):
    _, params, (x, t, ctx) = tiny
    cfg = dataclasses.replace(TINY, num_context_tokens=1)  # one condition token (CXR-IRGen's U-ViT)
    model = UViT(cfg)

    def one_token(flat):  # drop the second condition token's position
        flat["pos_embed"] = jnp.delete(flat["pos_embed"], 2, axis=1)
        return flat

    p1 = {"params": _edit(params, one_token)}
    np.testing.assert_allclose(model.apply(p1, x, t, ctx[:, 0]), model.apply(p1, x, t, ctx[:, :1]), atol=1e-6)
    with pytest.raises(ValueError, match="num_context_tokens=1"):
        model.apply(p1, x, t, ctx)
    with pytest.raises(ValueError, match="x must be"):
        model.apply(p1, x[:, :4], t, ctx[:, :1])
    with pytest.raises(ValueError, match="odd"):
        UViTConfig(depth=12)
    with pytest.raises(ValueError, match="unknown U-ViT size"):
        uvit_config("huge")


def test_long_skips_connect_in_block_k_minus_1_minus_i_to_out_block_i(tiny):
    model, params, (x, t, ctx) = tiny
    seen = {}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and context.module.name:
            name = context.module.name
            if name.startswith("in_blocks"):
                seen[name] = out
            elif name.startswith("out_blocks"):
                seen[name + "/skip"] = args[1]
        return out

    with nn.intercept_methods(record):
        model.apply({"params": params}, x, t, ctx)
    np.testing.assert_array_equal(seen["out_blocks_0/skip"], seen["in_blocks_1"])
    np.testing.assert_array_equal(seen["out_blocks_1/skip"], seen["in_blocks_0"])


def test_zeroing_the_skip_half_of_skip_linear_changes_the_output(tiny):
    model, params, (x, t, ctx) = tiny
    d = TINY.width

    def cut(flat):
        kernels = [k for k in flat if k.endswith("skip_linear/kernel")]
        assert len(kernels) == TINY.depth // 2
        for k in kernels:
            assert flat[k].shape == (2 * d, d)
            flat[k] = flat[k].at[d:].set(0.0)  # rows that read the skip tokens
        return flat

    out = model.apply({"params": params}, x, t, ctx)
    cut_out = model.apply({"params": _edit(params, cut)}, x, t, ctx)
    assert float(jnp.max(jnp.abs(cut_out - out))) > 1e-3


def test_patches_are_unpatchified_in_place(tiny):
    """With attention outputs zeroed, tokens do not mix and there is no final conv: an output pixel
    may depend only on the input pixels of its own 2x2 patch (catches a transposed unpatchify)."""
    _, params, (x, t, ctx) = tiny
    model = UViT(dataclasses.replace(TINY, final_conv=False))

    def isolate(flat):
        flat = {k: v for k, v in flat.items() if not k.startswith("final_layer/")}
        return {k: jnp.zeros_like(v) if "/attn/to_out_0/" in k else v for k, v in flat.items()}

    p = {"params": _edit(params, isolate)}
    y, xp, c = 2, 5, 1  # pixel in patch row 1, patch column 2
    grad = jax.grad(lambda xx: model.apply(p, xx, t, ctx)[0, y, xp, c])(x)
    dep = np.any(np.asarray(grad[0]) != 0, axis=-1)
    expected = np.zeros_like(dep)
    expected[2:4, 4:6] = True
    np.testing.assert_array_equal(dep, expected)


def test_remat_and_bfloat16_agree_with_the_plain_model(tiny):
    model, params, (x, t, ctx) = tiny
    out = model.apply({"params": params}, x, t, ctx)
    loss = lambda m: jax.grad(lambda p: jnp.mean(m.apply({"params": p}, x, t, ctx) ** 2))
    g = loss(model)(params)
    g_remat = loss(UViT(TINY, remat=True))(params)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g, g_remat)
    bf16 = UViT(TINY, dtype=jnp.bfloat16).apply({"params": params}, x, t, ctx)
    assert bf16.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(bf16 - out))) < 0.1 * float(jnp.max(jnp.abs(out)))


@pytest.mark.parametrize("size,millions", [("small", 44), ("mid", 131), ("large", 287)])
def test_named_sizes_match_the_paper(size, millions):
    """U-ViT paper (Bao et al. 2023, Table 6): U-ViT-S 44M, M 131M, L 287M parameters (patch 2)."""
    cfg = uvit_config(size)
    assert (cfg.width, cfg.depth, cfg.num_heads) == {"small": (512, 13, 8), "mid": (768, 17, 12),
                                                     "large": (1024, 21, 16)}[size]
    x = jnp.zeros((1, 32, 32, 4))
    shapes = jax.eval_shape(lambda: UViT(cfg).init(jax.random.key(0), x, jnp.zeros((1,)), jnp.zeros((1, 1, 768))))
    n = sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes))
    assert abs(n / 1e6 - millions) / millions < 0.03, n
    assert shapes["params"]["pos_embed"].shape == (1, 2 + 256, cfg.width)  # time + 1 condition + 256 patches
