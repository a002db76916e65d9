"""SD-family autoencoder and U-Net (xray_gen.nn) and diffusers-format import, pure JAX, tiny configs.

Numerical agreement with diffusers itself is in test_sd_conformance.py (needs torch); here the
properties that hold without a reference: shapes, the KL closed form, dependence on t and context,
the context mask, SD's parameter counts, and import errors on hand-built safetensors files.
"""

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import save_file

from xray_gen.models.cxr_irgen import weights
from xray_gen.nn.autoencoder_kl import AutoencoderKL, DiagonalGaussian, VAEConfig
from xray_gen.nn.unet2d import UNet2DConditionModel, UNetConfig, timestep_embedding

VAE_CFG = VAEConfig(block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4)
UNET_CFG = UNetConfig(block_out_channels=(16, 32), cross_attn=(True, False), layers_per_block=1,
                      num_heads=2, cross_attention_dim=8, norm_num_groups=8)


def _random_params(model, *args, seed=0):
    """Params of `model` drawn in NumPy from `eval_shape` (compiling `init`'s RNG takes ~40 s on 2
    busy cores): kernels N(0, 1/fan_in), norm scales 1 + noise and biases noise, so that no norm
    affine or bias is a silent identity."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), *args)["params"]
    r = np.random.default_rng(seed)
    flat = {}
    for path, s in traverse_util.flatten_dict(shapes).items():
        v = r.standard_normal(s.shape).astype(np.float32)
        if path[-1] == "kernel":
            v /= np.sqrt(math.prod(s.shape[:-1]))
        else:
            v = (1.0 if path[-1] == "scale" else 0.0) + 0.1 * v
        flat[path] = jnp.asarray(v)
    return traverse_util.unflatten_dict(flat)


@pytest.fixture(scope="module")
def vae():
    model = AutoencoderKL(VAE_CFG)
    return model, _random_params(model, jnp.zeros((1, 16, 16, 1)))


@pytest.fixture(scope="module")
def unet():
    model = UNet2DConditionModel(UNET_CFG)
    return model, _random_params(model, jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,)), jnp.zeros((1, 3, 8)), seed=1)


@pytest.fixture(scope="module")
def unet_apply(unet):
    """One compiled U-Net call (with a mask) for every test: variants go in as extra batch rows."""
    model, params = unet
    fn = jax.jit(lambda x, t, ctx, mask: model.apply({"params": params}, x, t, ctx, mask))
    return lambda x, t, ctx, mask=None: fn(x, t, ctx, np.ones(ctx.shape[:2], np.float32) if mask is None else mask)


def _inputs(seed=0, b=2, s=4):
    r = np.random.default_rng(seed)
    return (r.standard_normal((b, 8, 8, 4)).astype(np.float32), np.array([10, 500][:b]),
            r.standard_normal((b, s, 8)).astype(np.float32))


# ------------------------------------------------------------------------------------------------
# Autoencoder
# ------------------------------------------------------------------------------------------------


def test_vae_shapes_and_roundtrip(vae):
    model, params = vae
    assert VAE_CFG.downsampling_factor == 4 and VAEConfig().downsampling_factor == 8
    x = jax.random.uniform(jax.random.key(2), (2, 16, 32, 1), minval=-1, maxval=1)
    post = jax.jit(functools.partial(model.apply, method=model.encode))({"params": params}, x)
    assert post.mean.shape == post.logvar.shape == (2, 4, 8, 4)
    recon, post2 = jax.jit(model.apply)({"params": params}, x, jax.random.key(3))
    assert recon.shape == x.shape and recon.dtype == jnp.float32
    np.testing.assert_allclose(post2.mean, post.mean, rtol=1e-6)
    with pytest.raises(ValueError, match="multiples of 4"):
        model.apply({"params": params}, jnp.zeros((1, 10, 16, 1)), method=model.encode)
    with pytest.raises(ValueError, match=r"\(B, H, W, 1\)"):
        model.apply({"params": params}, jnp.zeros((1, 16, 16, 3)), method=model.encode)


def test_vae_without_quant_convs_or_mid_attention():
    cfg = VAEConfig(block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4, use_quant_conv=False,
                    use_post_quant_conv=False, mid_attention=False, in_channels=3, out_channels=3)
    params = jax.eval_shape(AutoencoderKL(cfg).init, jax.random.key(0), jnp.zeros((1, 4, 4, 3)))["params"]
    assert "quant_conv" not in params and "post_quant_conv" not in params
    assert "attentions_0" not in params["encoder"]["mid_block"]


def test_kl_closed_form_and_sampling():
    zero = DiagonalGaussian(mean=jnp.zeros((3, 2, 2, 4)), logvar=jnp.zeros((3, 2, 2, 4)))
    np.testing.assert_array_equal(zero.kl(), np.zeros(3))
    # mean 1, var e: 0.5 * (1 + e - 1 - 1) per element, 16 elements per row.
    g = DiagonalGaussian(mean=jnp.ones((2, 2, 2, 4)), logvar=jnp.ones((2, 2, 2, 4)))
    np.testing.assert_allclose(g.kl(), np.full(2, 16 * 0.5 * (math.e - 1)), rtol=1e-6)
    eps = jax.random.normal(jax.random.key(5), g.mean.shape)
    np.testing.assert_allclose(g.sample(jax.random.key(5)), 1 + math.exp(0.5) * eps, rtol=1e-6)
    np.testing.assert_array_equal(g.mode(), g.mean)
    moments = jnp.concatenate([jnp.zeros((1, 2, 2, 4)), jnp.full((1, 2, 2, 4), 100.0)], axis=-1)
    assert float(DiagonalGaussian.from_moments(moments).logvar.max()) == 20.0  # clipped as in SD


def test_kl_gradient_pulls_towards_prior():
    grad = jax.grad(lambda m, lv: DiagonalGaussian(m, lv).kl().sum(), argnums=(0, 1))
    gm, glv = grad(jnp.full((1, 1, 1, 1), 2.0), jnp.full((1, 1, 1, 1), 1.0))
    assert float(gm[0, 0, 0, 0]) == pytest.approx(2.0)  # d/dm 0.5 m^2
    assert float(glv[0, 0, 0, 0]) == pytest.approx(0.5 * (math.e - 1))


# ------------------------------------------------------------------------------------------------
# U-Net
# ------------------------------------------------------------------------------------------------


def test_timestep_embedding_convention():
    e = np.asarray(timestep_embedding(jnp.array([0.0, 1.0]), 8, flip_sin_to_cos=True, freq_shift=0))
    np.testing.assert_allclose(e[0], [1, 1, 1, 1, 0, 0, 0, 0], atol=1e-7)  # cos first when flipped
    freqs = np.exp(-np.log(10000) * np.arange(4) / 4)
    np.testing.assert_allclose(e[1], np.concatenate([np.cos(freqs), np.sin(freqs)]), rtol=1e-6)
    e1 = np.asarray(timestep_embedding(jnp.array([1.0]), 8, flip_sin_to_cos=False, freq_shift=1))
    freqs1 = np.exp(-np.log(10000) * np.arange(4) / 3)
    np.testing.assert_allclose(e1[0], np.concatenate([np.sin(freqs1), np.cos(freqs1)]), rtol=1e-6)


def test_unet_shapes_and_dependence(unet_apply):
    x, t, ctx = _inputs()
    # rows: base (2), later timesteps (2), swapped contexts (2), other latents (2); 8 rows like
    # the mask test, so both reuse one compilation
    out = unet_apply(np.concatenate([x, x, x, x[::-1]]), np.concatenate([t, t + 100, t, t]),
                     np.concatenate([ctx, ctx, ctx[::-1], ctx]))
    assert out.shape == (8, 8, 8, 4) and out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
    base = out[:2]
    for name, rows in (("t", out[2:4]), ("context", out[4:6]), ("x", out[6:])):
        assert float(jnp.min(jnp.max(jnp.abs(rows - base), axis=(1, 2, 3)))) > 1e-3, name


def test_context_mask_removes_masked_tokens(unet_apply):
    x, t, ctx = _inputs()
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 0]], np.float32)
    noise = 50.0 * np.random.default_rng(9).standard_normal(ctx.shape).astype(np.float32)
    scrambled = np.where(mask[..., None] > 0, ctx, noise)  # only masked tokens change
    changed = ctx.copy()
    changed[:, 0] += 1.0  # a real token changes
    out = unet_apply(np.concatenate([x] * 4), np.concatenate([t] * 4),
                     np.concatenate([ctx, scrambled, changed, ctx]), np.concatenate([mask] * 3 + [np.ones_like(mask)]))
    base, scr, chg, unmasked = out[:2], out[2:4], out[4:6], out[6:]
    np.testing.assert_allclose(scr, base, rtol=1e-5, atol=1e-5)
    assert float(jnp.min(jnp.max(jnp.abs(chg - base), axis=(1, 2, 3)))) > 1e-3
    assert float(jnp.min(jnp.max(jnp.abs(unmasked - base), axis=(1, 2, 3)))) > 1e-3


def test_unet_input_validation(unet):
    model, params = unet
    x, t, ctx = _inputs()
    with pytest.raises(ValueError, match="multiples of 2"):
        model.apply({"params": params}, x[:, :7, :7], t, ctx)
    with pytest.raises(ValueError, match="context must be"):
        model.apply({"params": params}, x, t, ctx[..., :4])
    with pytest.raises(ValueError, match="context_mask"):
        model.apply({"params": params}, x, t, ctx, np.ones((2, 3)))
    with pytest.raises(ValueError, match="num_heads and head_dim"):
        UNetConfig(num_heads=None)
    with pytest.raises(ValueError, match="cross_attn"):
        UNetConfig(cross_attn=(True,))


MICRO_CFG = UNetConfig(block_out_channels=(8,), cross_attn=(True,), layers_per_block=1, num_heads=2,
                       cross_attention_dim=4, norm_num_groups=4)


def test_unet_bf16_compute_close_to_f32():
    x, t, ctx = np.random.default_rng(3).standard_normal((2, 4, 4, 4)).astype(np.float32), np.array([1, 9]), \
        np.random.default_rng(4).standard_normal((2, 3, 4)).astype(np.float32)
    params = _random_params(UNet2DConditionModel(MICRO_CFG), x, t, ctx)
    run = lambda dtype: jax.jit(UNet2DConditionModel(MICRO_CFG, dtype=dtype).apply)({"params": params}, x, t, ctx)
    ref, bf16 = run(jnp.float32), run(jnp.bfloat16)
    assert bf16.dtype == jnp.float32
    err = float(jnp.max(jnp.abs(bf16 - ref)) / jnp.max(jnp.abs(ref)))
    assert 0 < err < 5e-2  # bf16 really was used, and stays close


def test_unet_remat_keeps_names_and_checkpoints():
    args = (jnp.zeros((1, 4, 4, 4)), jnp.zeros((1,)), jnp.zeros((1, 3, 4)))
    plain, remat = UNet2DConditionModel(MICRO_CFG), UNet2DConditionModel(MICRO_CFG, remat=True)
    shapes = lambda m: jax.tree_util.tree_map(lambda s: s.shape, jax.eval_shape(m.init, jax.random.key(0), *args))
    assert shapes(plain) == shapes(remat)  # same names: checkpoints and imports stay interchangeable
    params = _random_params(plain, *args)
    grad_jaxpr = lambda m: str(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(m.apply({"params": p}, *args))))(params))
    assert "remat" in grad_jaxpr(remat) and "remat" not in grad_jaxpr(plain)


def test_head_dim_option_sets_heads():
    cfg = UNetConfig(block_out_channels=(32, 64), cross_attn=(True, True), num_heads=None, head_dim=16,
                     norm_num_groups=8)
    assert (cfg.heads(0), cfg.heads(1)) == (2, 4)
    assert UNetConfig(num_heads=(5, 10, 20, 20), block_out_channels=(320, 640, 1280, 1280)).heads(2) == 20


def test_sd_parameter_counts():
    """SD-1.5's published sizes: U-Net 859,520,964 and VAE 83,653,863 parameters."""
    count = lambda shapes: sum(math.prod(s.shape) for s in shapes.values())
    assert count(weights.unet_param_shapes(UNetConfig())) == 859_520_964
    assert count(weights.vae_param_shapes(VAEConfig(in_channels=3))) == 83_653_863


# ------------------------------------------------------------------------------------------------
# diffusers-format import (hand-built files)
# ------------------------------------------------------------------------------------------------


def _to_diffusers(params):
    """Flax params -> diffusers-named torch-layout arrays (the inverse of the importer's rule)."""
    out = {}
    for path, v in traverse_util.flatten_dict(params).items():
        parts = []
        for p in path[:-1]:
            head, _, idx = p.rpartition("_")
            parts.append(f"{head}.{idx}" if idx.isdigit() and head in
                         ("down_blocks", "up_blocks", "resnets", "attentions", "transformer_blocks",
                          "downsamplers", "upsamplers", "to_out", "net") else p)
        parts.append("bias" if path[-1] == "bias" else "weight")
        v = np.asarray(v)
        if path[-1] == "kernel":
            v = v.transpose(3, 2, 0, 1) if v.ndim == 4 else v.T
        out[".".join(parts)] = np.ascontiguousarray(v)
    return out


def _diffusers_unet_json(cfg: UNetConfig):
    return {"_class_name": "UNet2DConditionModel", "in_channels": cfg.in_channels,
            "out_channels": cfg.out_channels, "block_out_channels": list(cfg.block_out_channels),
            "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.cross_attn],
            "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in cfg.cross_attn[::-1]],
            "layers_per_block": cfg.layers_per_block, "attention_head_dim": cfg.num_heads,
            "cross_attention_dim": cfg.cross_attention_dim, "norm_num_groups": cfg.norm_num_groups}


@pytest.fixture()
def unet_dir(tmp_path, unet):
    _, params = unet
    state = _to_diffusers(params)
    save_file(state, str(tmp_path / weights.WEIGHTS_NAME))
    (tmp_path / weights.CONFIG_NAME).write_text(json.dumps(_diffusers_unet_json(UNET_CFG)))
    return tmp_path, state


def test_import_roundtrip_and_names(unet_dir, unet):
    path, state = unet_dir
    for key in ("time_embedding.linear_1.weight", "conv_in.weight", "down_blocks.0.resnets.0.time_emb_proj.bias",
                "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_out.0.weight",
                "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj.weight",
                "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2.weight",
                "down_blocks.0.downsamplers.0.conv.weight", "mid_block.attentions.0.proj_in.weight",
                "up_blocks.1.resnets.1.conv_shortcut.weight", "up_blocks.0.upsamplers.0.conv.weight",
                "conv_norm_out.weight"):
        assert key in state, key
    assert state["conv_in.weight"].shape == (16, 4, 3, 3)  # OIHW
    assert state["time_embedding.linear_1.weight"].shape == (64, 16)  # (out, in)
    assert weights.unet_config_from_diffusers(path) == UNET_CFG
    loaded = weights.load_diffusers_unet(path)
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, unet[1])
    half = weights.load_diffusers_unet(str(path / weights.WEIGHTS_NAME), UNET_CFG, dtype=jnp.bfloat16)
    assert {p.dtype for p in jax.tree_util.tree_leaves(half)} == {jnp.dtype(jnp.bfloat16)}


def _expect_error(path, state, match, config=UNET_CFG):
    f = path / "bad.safetensors"
    save_file(state, str(f))
    with pytest.raises(ValueError, match=match):
        weights.load_diffusers_unet(str(f), config)


def test_import_errors_name_the_key(unet_dir):
    path, state = unet_dir
    extra = dict(state, **{"down_blocks.0.resnets.0.extra.weight": np.zeros(3, np.float32)})
    _expect_error(path, extra, r"1 unexpected key\(s\): 'down_blocks.0.resnets.0.extra.weight'")
    missing = {k: v for k, v in state.items() if k != "mid_block.attentions.0.transformer_blocks.0.attn1.to_k.weight"}
    _expect_error(path, missing, r"missing key\(s\): 'mid_block.attentions.0.transformer_blocks.0.attn1.to_k.weight'")
    bad = dict(state, **{"conv_out.weight": np.zeros((4, 16, 1, 1), np.float32)})
    _expect_error(path, bad, r"'conv_out.weight': shape \(4, 16, 1, 1\) does not fit .* \(3, 3, 16, 4\)")
    ints = dict(state, **{"conv_out.bias": np.zeros(4, np.int64)})
    _expect_error(path, ints, "'conv_out.bias' has dtype int64")
    # weights for a different architecture: the config is the likely culprit
    other = UNetConfig(block_out_channels=(16, 32), cross_attn=(False, True), layers_per_block=1, num_heads=2,
                       cross_attention_dim=8, norm_num_groups=8)
    _expect_error(path, state, "check that the config matches the weights", config=other)


def test_import_refuses_non_safetensors(tmp_path):
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(FileNotFoundError, match="only safetensors"):
        weights.load_diffusers_unet(tmp_path, UNET_CFG)
    with pytest.raises(ValueError, match="pickled checkpoints are never loaded"):
        weights.load_diffusers_unet(tmp_path / "diffusion_pytorch_model.bin", UNET_CFG)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk.safetensors: not a readable safetensors file"):
        weights.load_diffusers_unet(tmp_path / "junk.safetensors", UNET_CFG)
    save_file({"a": np.zeros(1, np.float32)}, str(tmp_path / "lonely.safetensors"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        weights.load_diffusers_unet(tmp_path / "lonely.safetensors")
    with pytest.raises(TypeError, match="UNetConfig"):
        weights.load_diffusers_unet(tmp_path / "lonely.safetensors", VAE_CFG)


def test_vae_import_with_legacy_attention_names(tmp_path, vae):
    _, params = vae
    state = _to_diffusers(params)
    legacy = {k.replace(".to_q.", ".query.").replace(".to_out.0.", ".proj_attn."): v for k, v in state.items()}
    assert "encoder.mid_block.attentions.0.query.weight" in legacy
    save_file(legacy, str(tmp_path / weights.WEIGHTS_NAME))
    loaded = weights.load_diffusers_vae(tmp_path, VAE_CFG)
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, params)
    both = dict(legacy, **{"encoder.mid_block.attentions.0.to_q.weight": state["encoder.mid_block.attentions.0.to_q.weight"]})
    save_file(both, str(tmp_path / weights.WEIGHTS_NAME))
    with pytest.raises(ValueError, match="duplicates another key"):
        weights.load_diffusers_vae(tmp_path, VAE_CFG)


SD15_UNET = {"_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
             "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False,
             "cross_attention_dim": 768, "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
             "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
             "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
             "out_channels": 4, "sample_size": 64,
             "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}


def test_configs_from_diffusers_json(tmp_path):
    cfg = weights.unet_config_from_diffusers(SD15_UNET)
    assert cfg == UNetConfig(sample_size=64)
    sd21 = dict(SD15_UNET, attention_head_dim=[5, 10, 20, 20], use_linear_projection=True, cross_attention_dim=1024)
    cfg21 = weights.unet_config_from_diffusers(sd21)
    assert cfg21.num_heads == (5, 10, 20, 20) and cfg21.use_linear_projection and cfg21.cross_attention_dim == 1024
    with pytest.raises(ValueError, match="'class_embed_type'='timestep' is not supported"):
        weights.unet_config_from_diffusers(dict(SD15_UNET, class_embed_type="timestep"))
    with pytest.raises(ValueError, match="'up_block_types'.*must mirror"):
        weights.unet_config_from_diffusers(dict(SD15_UNET, up_block_types=["UpBlock2D"] * 4))
    with pytest.raises(ValueError, match="is for 'AutoencoderKL'"):
        weights.unet_config_from_diffusers({"_class_name": "AutoencoderKL"})
    vae_json = {"_class_name": "AutoencoderKL", "block_out_channels": [128, 256, 512, 512], "in_channels": 3,
                "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
                "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
                "scaling_factor": 0.18215, "sample_size": 512}
    path = os.path.join(tmp_path, "config.json")
    with open(path, "w") as f:
        json.dump(vae_json, f)
    assert weights.vae_config_from_diffusers(path) == VAEConfig(in_channels=3, out_channels=3)
    with pytest.raises(ValueError, match="'down_block_types'"):
        weights.vae_config_from_diffusers(dict(vae_json, down_block_types=["DownBlock2D"] * 4))
