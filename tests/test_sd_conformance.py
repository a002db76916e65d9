"""Conformance of the Flax SD U-Net and VAE with diffusers (skipped without torch + diffusers).

Tiny randomly initialised diffusers models (norm scales/biases perturbed too, so a swapped or
dropped affine shows up) are saved with `save_pretrained(safe_serialization=True)`, imported
through `xray_gen.models.cxr_irgen.weights` from the folder alone (config.json -> Flax config), and
run on the same inputs as PyTorch; outputs must agree to ~1e-4 relative error.
Install the extra first: `pip install torch==2.13.0` then `pip install -e .[conformance]`.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="conformance needs a CPU torch (pip install torch==2.13.0)")
diffusers = pytest.importorskip("diffusers", reason="conformance needs diffusers (the 'conformance' extra)")

from xray_gen.models.cxr_irgen import weights  # noqa: E402
from xray_gen.nn.autoencoder_kl import AutoencoderKL  # noqa: E402
from xray_gen.nn.unet2d import UNet2DConditionModel  # noqa: E402

RTOL = 1e-4


def _perturb(model, seed):
    """Random norm scales/biases and biases: the defaults (1, 0) would hide a mis-mapped affine."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                base = 1.0 if ("norm" in name and name.endswith("weight")) else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def _rel_err(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-12))


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def _nhwc(t):
    return np.transpose(t.detach().numpy(), (0, 2, 3, 1))


UNET_VARIANTS = {
    # SD-1.x layout: 1x1-conv projections, attention_head_dim read as a head count.
    "sd1": dict(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                layers_per_block=2, attention_head_dim=4, use_linear_projection=False),
    # SD-2.x-like: linear projections, per-level heads, two transformer layers, attention in the
    # lower level only (so the mid block and a cross-attention up block follow a plain one).
    "sd2": dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                layers_per_block=1, attention_head_dim=(2, 4), use_linear_projection=True,
                transformer_layers_per_block=2),
}


@pytest.mark.parametrize("variant", sorted(UNET_VARIANTS))
def test_unet_matches_diffusers(tmp_path, variant):
    torch.manual_seed(0)
    ref = diffusers.UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        norm_num_groups=8, cross_attention_dim=32, **UNET_VARIANTS[variant])
    _perturb(ref, 1).save_pretrained(tmp_path, safe_serialization=True)

    cfg = weights.unet_config_from_diffusers(tmp_path)
    params = weights.load_diffusers_unet(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16, 16, 4)).astype(np.float32)
    t = np.array([3, 917], np.int64)
    ctx = rng.standard_normal((2, 5, 32)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.float32)
    with torch.no_grad():
        want = _nhwc(ref(_nchw(x), torch.from_numpy(t), torch.from_numpy(ctx),
                         encoder_attention_mask=torch.from_numpy(mask)).sample)
    got = UNet2DConditionModel(cfg).apply({"params": params}, x, t, ctx, mask)
    assert got.shape == want.shape
    err = _rel_err(got, want)
    print(f"unet {variant}: relative error {err:.2e}")
    assert err < RTOL, f"{variant}: relative error {err:.2e}"
    # The mask matters in both implementations (not a vacuous match).
    got_unmasked = UNet2DConditionModel(cfg).apply({"params": params}, x, t, ctx)
    assert _rel_err(got_unmasked, want) > 1e-3


def _tiny_vae(tmp_path, legacy_names=False):
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 32),
        layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=32)
    _perturb(ref, 2).save_pretrained(tmp_path, safe_serialization=True)
    if legacy_names:  # rewrite as pre-0.14 diffusers / converted-LDM files store the mid attention
        from safetensors.numpy import load_file, save_file

        path = os.path.join(tmp_path, weights.WEIGHTS_NAME)
        old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
        state = {}
        for k, v in load_file(path).items():
            for new, legacy in old.items():
                if f"attentions.0.{new}." in k:
                    k = k.replace(f".{new}.", f".{legacy}.")
                    if v.ndim == 2 and k.endswith("weight"):
                        v = v[:, :, None, None]  # some converted files keep them as 1x1 convs
            state[k] = v
        save_file(state, path)
    return ref


@pytest.mark.parametrize("legacy_names", [False, True], ids=["names", "legacy_names"])
def test_vae_matches_diffusers(tmp_path, legacy_names):
    ref = _tiny_vae(tmp_path, legacy_names)
    cfg = weights.vae_config_from_diffusers(tmp_path)
    assert cfg.downsampling_factor == 4 and cfg.in_channels == 3
    params = weights.load_diffusers_vae(tmp_path)
    model = AutoencoderKL(cfg)
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    z = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
    with torch.no_grad():
        dist = ref.encode(_nchw(x)).latent_dist
        want_mean, want_logvar = _nhwc(dist.mean), _nhwc(dist.logvar)
        want_x = _nhwc(ref.decode(_nchw(z)).sample)
    post = model.apply({"params": params}, x, method=model.encode)
    got_x = model.apply({"params": params}, z, method=model.decode)
    for name, got, want in (("mean", post.mean, want_mean), ("logvar", post.logvar, want_logvar),
                            ("decode", got_x, want_x)):
        err = _rel_err(got, want)
        print(f"vae {name} (legacy={legacy_names}): relative error {err:.2e}")
        assert err < RTOL, f"{name}: relative error {err:.2e}"


def test_bf16_import_and_compute(tmp_path):
    """A half-precision export imports (cast to the requested dtype) and runs in bf16 compute."""
    ref = _tiny_vae(tmp_path)
    ref.half().save_pretrained(tmp_path, safe_serialization=True)
    params = weights.load_diffusers_vae(tmp_path, dtype=jnp.float32)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
    with open(os.path.join(tmp_path, weights.CONFIG_NAME)) as f:
        cfg = weights.vae_config_from_diffusers(json.load(f))
    x = np.random.default_rng(2).uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
    run = lambda dtype: jax.jit(AutoencoderKL(cfg, dtype=dtype).apply)({"params": params}, x)[0]
    f32, bf16 = run(jnp.float32), run(jnp.bfloat16)
    assert bf16.dtype == jnp.float32
    assert _rel_err(bf16, f32) < 5e-2


def test_exported_folders_load_in_diffusers_and_match(tmp_path):
    """`weights.save_diffusers` writes what diffusers' from_pretrained reads, to the same outputs."""
    ours = {}
    for name in ("unet", "vae"):
        src = tmp_path / f"src_{name}"
        if name == "unet":
            torch.manual_seed(0)
            _perturb(diffusers.UNet2DConditionModel(
                sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), norm_num_groups=8,
                cross_attention_dim=32, **UNET_VARIANTS["sd1"]), 1).save_pretrained(src, safe_serialization=True)
            cfg, params = weights.unet_config_from_diffusers(src), weights.load_diffusers_unet(src)
        else:
            _tiny_vae(src)
            cfg, params = weights.vae_config_from_diffusers(src), weights.load_diffusers_vae(src)
        ours[name] = (cfg, params, weights.save_diffusers(tmp_path / f"out_{name}", params, cfg))
    rng = np.random.default_rng(2)
    cfg, params, folder = ours["unet"]
    ref = diffusers.UNet2DConditionModel.from_pretrained(folder).eval()
    x, t, ctx = (rng.standard_normal((2, 16, 16, 4)).astype(np.float32), np.array([5, 700], np.int64),
                 rng.standard_normal((2, 5, 32)).astype(np.float32))
    with torch.no_grad():
        want = _nhwc(ref(_nchw(x), torch.from_numpy(t), torch.from_numpy(ctx)).sample)
    assert _rel_err(UNet2DConditionModel(cfg).apply({"params": params}, x, t, ctx), want) < RTOL
    cfg, params, folder = ours["vae"]
    ref = diffusers.AutoencoderKL.from_pretrained(folder).eval()
    z = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
    with torch.no_grad():
        want = _nhwc(ref.decode(_nchw(z)).sample)
    model = AutoencoderKL(cfg)
    assert _rel_err(model.apply({"params": params}, z, method=model.decode), want) < RTOL
