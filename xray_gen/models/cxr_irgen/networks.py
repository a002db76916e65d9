"""CXR-IRGen's networks, built from the config: the KL autoencoder (trained here or a diffusers
folder), the CLIP dual encoder (trained here or a transformers folder) and its prompt tokenizer, the
BART-style report autoencoder (optionally from a transformers folder) and its tokenizer, the latent
prior, the latent denoiser (U-Net or U-ViT); plus the latents' normalisation. Shared by the stage
runs, the main task, sampling and evaluation."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from xray_gen.data import augment as aug
from xray_gen.models.cxr_irgen import bart_weights, clip_weights, language, weights
from xray_gen.nn import clip as clip_nn
from xray_gen.nn.autoencoder_kl import AutoencoderKL, VAEConfig
from xray_gen.nn.bart import REPORT_TOKENIZER_IDS, bart_config
from xray_gen.nn.unet2d import UNet2DConditionModel, UNetConfig
from xray_gen.nn.uvit import UViT, uvit_config

BACKBONES = ("uvit", "unet")


def pretrained_vae(config) -> str:
    """The diffusers VAE folder named by `cxr_irgen.autoencoder.pretrained` ('' : train one here)."""
    return config.cxr_irgen.autoencoder.get("pretrained", "") or ""


def vae_config(config) -> VAEConfig:
    a = config.cxr_irgen.autoencoder
    if pretrained_vae(config):
        return weights.vae_config_from_diffusers(pretrained_vae(config))
    return VAEConfig(in_channels=1, block_out_channels=tuple(a.block_out_channels), layers_per_block=a.layers_per_block,
                     latent_channels=a.latent_channels, norm_num_groups=a.norm_num_groups)


def vae_encode(net: AutoencoderKL, params, images):
    """Images in [-1, 1] (B, H, W, 1) -> the posterior. An RGB autoencoder (SD weights) sees the
    grey image in all three channels."""
    want = net.config.in_channels
    if images.shape[-1] != want:
        if images.shape[-1] != 1:
            raise ValueError(f"the autoencoder takes {want} channels, the images have {images.shape[-1]}")
        images = jnp.repeat(images, want, axis=-1)
    return net.apply({"params": params}, images, method=net.encode)


def vae_decode(net: AutoencoderKL, params, z):
    """Latents -> images (B, H, W, 1): an RGB decoder's channels are averaged to grey."""
    x = net.apply({"params": params}, z, method=net.decode)
    return jnp.mean(x, axis=-1, keepdims=True) if x.shape[-1] != 1 else x


def latent_side(config) -> int:
    factor = vae_config(config).downsampling_factor
    if config.data.resolution % factor:
        raise ValueError(f"data.resolution={config.data.resolution} is not a multiple of the autoencoder's "
                         f"downsampling factor {factor} (cxr_irgen.autoencoder.block_out_channels)")
    return config.data.resolution // factor


def pretrained_clip(config) -> str:
    """The transformers CLIP folder named by `cxr_irgen.clip.pretrained` ('' : train one here)."""
    return config.cxr_irgen.clip.get("pretrained", "") or ""


def from_pretrained(config, stage: str, load, *args):
    """`load(folder, *args)` for the folder named by `cxr_irgen.<stage>.pretrained`, with errors
    prefixed by that config field."""
    path = config.cxr_irgen[stage].get("pretrained", "")
    try:
        return load(path, *args)
    except (OSError, ValueError) as e:
        kind = FileNotFoundError if isinstance(e, OSError) else ValueError
        raise kind(f"cxr_irgen.{stage}.pretrained={path}: {e}") from e


def clip_model(config, vocab_size: int) -> clip_nn.CLIP:
    """The CLIP stage's module: a pretrained folder's architecture, else text over the report
    tokenizer's `vocab_size` ids and a grey ViT at data.resolution, sized by `cxr_irgen.clip`."""
    if pretrained_clip(config):
        return from_pretrained(config, "clip", clip_weights.clip_model_of)
    k, res = config.cxr_irgen.clip, config.data.resolution
    if res % k.patch_size:
        raise ValueError(f"cxr_irgen.clip.patch_size={k.patch_size} does not divide data.resolution={res}")
    text = clip_nn.text_config("tiny", vocab_size=vocab_size, max_length=config.cxr_irgen.prompt_len, width=k.width,
                               layers=k.layers, heads=k.heads, mlp_dim=4 * k.width, projection_dim=k.projection_dim)
    vision = clip_nn.vision_config("tiny", image_size=res, patch_size=k.patch_size, num_channels=1, width=k.width,
                                   layers=k.layers, heads=k.heads, mlp_dim=4 * k.width, projection_dim=k.projection_dim)
    return clip_nn.CLIP(text=text, vision=vision)


def load_pretrained_clip(config, net: clip_nn.CLIP):
    """Params of `net` (= `clip_model(config, ...)`) from `cxr_irgen.clip.pretrained`."""
    return from_pretrained(config, "clip", lambda path: clip_weights.load_clip(path, net)[1])


def prompt_tokenizer(config, tokenizer, length: int):
    """The label prompt's tokenizer: a pretrained CLIP's own BPE (in its folder, or SD's sibling
    tokenizer/), padded to `length`; else the report tokenizer the other stages share."""
    if pretrained_clip(config):
        return from_pretrained(config, "clip", clip_weights.load_clip_tokenizer, length)
    return tokenizer


def clip_init_inputs(net: clip_nn.CLIP) -> dict:
    """Zeros shaped like one example of `net`'s inputs (for init): the text length, the image size."""
    out = {}
    if net.text is not None:
        n = net.text.max_length
        out.update(ids=jnp.zeros((1, n), jnp.int32), mask=jnp.ones((1, n)))
    if net.vision is not None:
        v = net.vision
        out["images"] = jnp.zeros((1, v.image_size, v.image_size, v.num_channels))
    return out


def clip_images(config, net: clip_nn.CLIP, images):
    """uint8 (B, R, R, 1) -> the vision tower's input: [-1, 1] grey for a CLIP trained here; for a
    pretrained one, what it saw in training: grey repeated into RGB, resized (bicubic) to its
    image_size and normalised with CLIP's mean/std."""
    x = aug.to_float(images)
    if not pretrained_clip(config):
        return x
    size = net.vision.image_size
    if x.shape[1:3] != (size, size):
        x = jnp.clip(jax.image.resize(x, (x.shape[0], size, size, x.shape[-1]), "bicubic"), -1.0, 1.0)
    return clip_nn.clip_pixels(x)


def pretrained_bart(config) -> str:
    """The transformers BART folder named by `cxr_irgen.language.pretrained` ('' : start from random)."""
    return config.cxr_irgen.language.get("pretrained", "") or ""


def report_model(config, vocab_size: int) -> language.ReportAutoencoder:
    """The language stage's module: a pretrained BART folder's architecture (`language.size` and
    `vocab_size` unused; `language.dropout` still applies), else `language.size` over the report
    tokenizer's `vocab_size` ids with its special ids."""
    g, n = config.cxr_irgen.language, config.cxr_irgen.report_len
    if pretrained_bart(config):
        cfg = from_pretrained(config, "language", bart_weights.bart_config_of)
        if n > cfg.max_position_embeddings:
            raise ValueError(f"cxr_irgen.report_len={n} exceeds max_position_embeddings={cfg.max_position_embeddings} "
                             f"of cxr_irgen.language.pretrained={pretrained_bart(config)}")
        cfg = dataclasses.replace(cfg, dropout=float(g.dropout))
    else:
        cfg = bart_config(g.size, vocab_size=vocab_size, dropout=g.dropout, max_position_embeddings=max(n, 64),
                          **REPORT_TOKENIZER_IDS)
    return language.ReportAutoencoder(cfg, pooling=g.pooling)


def report_tokenizer(config, tokenizer):
    """The reports' tokenizer (language stage, prior targets, decoded reports): a pretrained
    BART's own BPE (its folder's vocab.json + merges.txt), else the run's report tokenizer."""
    if not pretrained_bart(config):
        return tokenizer
    tok = from_pretrained(config, "language", bart_weights.load_bart_tokenizer, config.cxr_irgen.report_len)
    cfg = report_model(config, tok.vocab_size).config
    got = (tok.pad_id, tok.bos_id, tok.eos_id)
    want = (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id)
    if got != want or max(tok.decoder) >= cfg.vocab_size:
        raise ValueError(f"cxr_irgen.language.pretrained={pretrained_bart(config)}: the tokenizer ({tok.source}: "
                         f"pad/bos/eos ids {got}, largest id {max(tok.decoder)}) does not fit config.json "
                         f"(pad/bos/eos ids {want}, vocab_size {cfg.vocab_size})")
    return tok


def prior_model(config, vocab_size: int) -> language.LatentPrior:
    p = config.cxr_irgen.prior
    side = latent_side(config)
    out_dim = report_model(config, vocab_size).config.d_model
    patch = p.patch_size if side % p.patch_size == 0 else 1
    cfg = language.prior_config(p.size, "latents", input_size=side, in_channels=vae_config(config).latent_channels,
                                patch_size=patch, out_dim=out_dim)
    return language.LatentPrior(cfg)


def normalize_latents(z, scale, shift):
    """Autoencoder latents -> the diffusion space: (z - shift) * scale. `shift` broadcasts against one
    latent: the measured mean latent (H, W, C) here, a per-channel (C,) or scalar one elsewhere (the
    diffusers `shift_factor`; SD-1.x has none: shift 0, scale 0.18215)."""
    return (z - shift) * scale


def denormalize_latents(z, scale, shift):
    """The diffusion space -> autoencoder latents (the inverse of `normalize_latents`)."""
    return z / scale + shift


def pretrained_unet(config) -> str:
    """The diffusers U-Net folder named by `cxr_irgen.unet.pretrained` ('' : start from random)."""
    return config.cxr_irgen.unet.get("pretrained", "") or ""


def check_clip_towers(config, clip: clip_nn.CLIP) -> None:
    """The prompt needs CLIP's text tower, the reference image its vision tower."""
    if clip.text is None or (config.cxr_irgen.reference_image and clip.vision is None):
        missing = "text" if clip.text is None else "vision"
        raise ValueError(f"cxr_irgen.clip.pretrained={pretrained_clip(config)} has no {missing} tower; the "
                         "prompt needs a text one and the reference image a vision one: use a full CLIPModel "
                         "folder (e.g. openai/clip-vit-large-patch14) or --config.cxr_irgen.reference_image=False")


def denoiser_model(config, clip: clip_nn.CLIP, latent_shape: tuple):
    """The latent denoiser: a U-Net conditioned on CLIP's text token states (+ the reference
    embedding as one more token), or a U-ViT conditioned on one token (pooled text and reference
    embeddings averaged); checks the widths the conditioning needs to agree."""
    x = config.cxr_irgen
    if x.backbone not in BACKBONES:
        raise ValueError(f"cxr_irgen.backbone={x.backbone!r} is not one of {BACKBONES}")
    side, ch = latent_shape[0], latent_shape[-1]
    width = clip.text.width  # the text token states' (the U-Net's context)
    emb = clip.text.projection_dim or width  # the pooled text embedding's (the U-ViT's context)
    image_dim = (clip.vision.projection_dim or clip.vision.width) if x.reference_image else None
    clip_source = f"cxr_irgen.clip.pretrained={pretrained_clip(config)}" if pretrained_clip(config) else "cxr_irgen.clip"
    if x.compute_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"cxr_irgen.compute_dtype={x.compute_dtype!r} is not one of ('float32', 'bfloat16')")
    numerics = dict(dtype=jnp.dtype(x.compute_dtype), remat=bool(x.remat))
    unet_folder = pretrained_unet(config)
    if x.backbone == "unet":
        if x.reference_image and image_dim != width:
            raise ValueError(f"{clip_source}: the image embedding's width {image_dim} (projection_dim) must equal "
                             f"the text width {width} for the U-Net: the reference embedding is one more token "
                             "among the text token states")
        u = x.unet
        if unet_folder:
            ucfg = weights.unet_config_from_diffusers(unet_folder)
            got = {"in_channels": ucfg.in_channels, "out_channels": ucfg.out_channels,
                   "cross_attention_dim": ucfg.cross_attention_dim}
            need = {"in_channels": ch, "out_channels": ch, "cross_attention_dim": width}
            for field in got:
                if got[field] != need[field]:
                    raise ValueError(
                        f"cxr_irgen.unet.pretrained={unet_folder}: its {field} is {got[field]}, this "
                        f"pipeline needs {need[field]} (latent channels of the autoencoder; "
                        f"cross_attention_dim = the text width of {clip_source})")
        else:
            ucfg = UNetConfig(in_channels=ch, out_channels=ch, block_out_channels=tuple(u.block_out_channels),
                              cross_attn=tuple(u.cross_attn), layers_per_block=u.layers_per_block,
                              num_heads=u.num_heads, cross_attention_dim=width, norm_num_groups=u.norm_num_groups)
        denoiser = UNet2DConditionModel(ucfg, **numerics)
        if side % denoiser.config.downsampling_factor:
            raise ValueError(f"latent side {side} is not a multiple of the U-Net's downsampling factor "
                             f"{denoiser.config.downsampling_factor} (cxr_irgen.unet.block_out_channels)")
        return denoiser
    if x.reference_image and image_dim != emb:
        raise ValueError(f"{clip_source}: the image embedding's width {image_dim} differs from the pooled "
                         f"text embedding's {emb}; the U-ViT averages them")
    if unet_folder:
        raise ValueError("cxr_irgen.unet.pretrained is set but cxr_irgen.backbone is 'uvit': "
                         "use --config.cxr_irgen.backbone=unet (or a unet variant)")
    size = {"width": int(x.uvit.width)} if x.uvit.get("width") else {}  # 0: the named size's
    return UViT(uvit_config(x.uvit.size, sample_size=side, in_channels=ch, patch_size=x.uvit.patch_size,
                            context_dim=emb, num_context_tokens=1, **size), **numerics)
