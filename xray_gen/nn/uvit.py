"""U-ViT denoiser (Bao et al. 2023, "All are Worth Words: A ViT Backbone for Diffusion Models"), Flax linen.

Everything is a token: the time, the condition and the latent patches go through one plain ViT
whose shallow and deep halves are joined by long skip connections (the "U").

  x (B, H, W, C) --patch conv (p x p, stride p)--> (B, HW/p^2, D)
  t --sinusoidal(D) [--Dense 4D, SiLU, Dense D when mlp_time_embed]--> 1 time token
  context (B, S, context_dim) --Dense D--> S condition tokens
  [time; context; patches] + learned position embeddings (1 + S + HW/p^2 positions)
  in_blocks_0..k-1 (each output kept) -> mid_block -> out_blocks_0..k-1, out block i first mixes
      in the skip of in block k-1-i: Dense_D(concat[h, skip]) (`skip_linear`)
  LayerNorm -> Dense(p^2 C) on the patch tokens -> unpatchify -> 3x3 conv (`final_layer`, optional)

Blocks are pre-LayerNorm: h += Attn(LN(h)); h += MLP(LN(h)), MLP = Dense 4D -> GELU (erf) -> Dense D,
as U-ViT (a plain MLP, not the U-Net's GEGLU, so parameter counts match the paper: small ~44M).
The attention is `xray_gen.nn.autoencoder_kl.Attention`; `context_mask` (B, S) removes padded
condition tokens from every key set, as the U-Net does. depth = 2k + 1.

CXR-IRGen's U-ViT variant conditions on one vector: the average of the pooled CLIP text and
reference-image embeddings (DESIGN §6), i.e. a context of S = 1 token; U-ViT's text-to-image model
takes all 77 CLIP token states (S = 77). `UViTConfig.num_context_tokens` fixes S (the position table).

Official U-ViT initialises Linear layers with truncated normal(0.02); here only the position table
is (Flax defaults elsewhere).

Usage::

    cfg = uvit_config("small", context_dim=768)     # or "mid", "large", "tiny"
    model = UViT(cfg)
    params = model.init(rng, z, t, ctx)["params"]    # z (B, 32, 32, 4), t (B,), ctx (B, 1, 768)
    eps = model.apply({"params": params}, z, t, ctx)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from xray_gen.nn.autoencoder_kl import Attention, conv
from xray_gen.nn.unet2d import timestep_embedding

Dtype = Any

__all__ = ["UViTConfig", "UVIT_SIZES", "uvit_config", "UViTBlock", "UViT"]


@dataclasses.dataclass(frozen=True)
class UViTConfig:
    """Architecture of `UViT` (defaults: U-ViT-S/2 on SD latents 32x32x4 with one 768-d condition token)."""

    sample_size: int = 32  # latent side H = W
    in_channels: int = 4
    out_channels: Optional[int] = None  # None: in_channels
    patch_size: int = 2
    width: int = 512
    depth: int = 13
    num_heads: int = 8
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    mlp_time_embed: bool = False  # U-ViT's latent/text models feed the raw sinusoid as the time token
    context_dim: int = 768
    num_context_tokens: int = 1
    final_conv: bool = True
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.depth < 1 or self.depth % 2 == 0:
            raise ValueError(f"UViTConfig.depth={self.depth} must be odd (in blocks, mid block, out blocks)")
        if self.width % self.num_heads:
            raise ValueError(f"UViTConfig.width={self.width} is not divisible by num_heads={self.num_heads}")
        if self.width % 2:
            raise ValueError(f"UViTConfig.width={self.width} must be even (sinusoidal time token)")
        if self.sample_size % self.patch_size:
            raise ValueError(f"UViTConfig.sample_size={self.sample_size} is not a multiple of "
                             f"patch_size={self.patch_size}")
        if self.num_context_tokens < 0:
            raise ValueError(f"UViTConfig.num_context_tokens={self.num_context_tokens} must be >= 0")

    @property
    def num_patches(self) -> int:
        return (self.sample_size // self.patch_size) ** 2

    @property
    def num_extra_tokens(self) -> int:
        """Time token plus condition tokens, in front of the patch tokens."""
        return 1 + self.num_context_tokens

    @property
    def image_channels(self) -> int:
        return self.in_channels if self.out_channels is None else self.out_channels


# Named sizes of the U-ViT paper (Table 6 there: 44M, 131M, 287M parameters) and small ones for tests/CPU.
UVIT_SIZES = {
    "small": dict(width=512, depth=13, num_heads=8),
    "mid": dict(width=768, depth=17, num_heads=12),
    "large": dict(width=1024, depth=21, num_heads=16),
    "cpu": dict(width=256, depth=9, num_heads=4),
    "tiny": dict(width=64, depth=3, num_heads=2),
}


def uvit_config(size: str = "small", **overrides) -> UViTConfig:
    """A named size ("small", "mid", "large", "cpu", "tiny") with any other field overridden."""
    if size not in UVIT_SIZES:
        raise ValueError(f"unknown U-ViT size {size!r}; choose from {sorted(UVIT_SIZES)}")
    return UViTConfig(**{**UVIT_SIZES[size], **overrides})


class Mlp(nn.Module):
    """fc1 (hidden) -> exact GELU -> fc2 (back to the input width)."""

    hidden: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.gelu(nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x), approximate=False)
        return nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(h)


class UViTBlock(nn.Module):
    """Pre-LN transformer block; with `skip`, first h = skip_linear(concat[h, skip]) (U-ViT's long skip)."""

    heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    skip: bool = False
    eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, skip: Optional[jax.Array] = None, mask: Optional[jax.Array] = None) -> jax.Array:
        d = x.shape[-1]
        if self.skip:
            if skip is None:
                raise ValueError(f"{self.name}: a skip block needs the skip tokens")
            x = nn.Dense(d, dtype=self.dtype, name="skip_linear")(jnp.concatenate([x, skip], axis=-1))
        ln = lambda name: nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, name=name)
        attn = Attention(self.heads, d // self.heads, self.qkv_bias, self.dtype, name="attn")
        x = x + attn(ln("norm1")(x), mask=mask)
        return x + Mlp(int(d * self.mlp_ratio), self.dtype, name="mlp")(ln("norm2")(x))


class UViT(nn.Module):
    """`__call__(x, t, context, context_mask=None) -> (B, H, W, out_channels)` float32.

    x: (B, sample_size, sample_size, in_channels); t: scalar or (B,) timesteps (int or float);
    context: (B, num_context_tokens, context_dim) (a (B, context_dim) pooled vector is taken as one
    token); context_mask: optional (B, num_context_tokens), 1/True on real tokens. `dtype` is the
    compute dtype (parameters stay float32); `remat` recomputes block activations in the backward pass.
    """

    config: UViTConfig
    dtype: Dtype = jnp.float32
    remat: bool = False

    def _check(self, x, context, context_mask):
        cfg = self.config
        want = (cfg.sample_size, cfg.sample_size, cfg.in_channels)
        if x.ndim != 4 or x.shape[1:] != want:
            raise ValueError(f"UViT: x must be (B, {want[0]}, {want[1]}, {want[2]}), got {x.shape}")
        if context.ndim == 2:
            context = context[:, None, :]
        if context.shape != (x.shape[0], cfg.num_context_tokens, cfg.context_dim):
            raise ValueError(f"UViT: context must be (B={x.shape[0]}, num_context_tokens={cfg.num_context_tokens}, "
                             f"context_dim={cfg.context_dim}), got {context.shape}")
        if context_mask is not None and context_mask.shape != context.shape[:2]:
            raise ValueError(f"UViT: context_mask must be {context.shape[:2]}, got {context_mask.shape}")
        return context

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, context: jax.Array,
                 context_mask: Optional[jax.Array] = None) -> jax.Array:
        cfg = self.config
        context = self._check(x, context, context_mask)
        b, p, d = x.shape[0], cfg.patch_size, cfg.width
        g = cfg.sample_size // p

        patches = conv(d, p, self.dtype, "patch_embed", stride=p, padding="VALID")(x.astype(self.dtype))
        patches = patches.reshape(b, g * g, d)
        t = jnp.broadcast_to(jnp.asarray(t), (b,))
        temb = timestep_embedding(t, d, flip_sin_to_cos=True).astype(self.dtype)  # U-ViT: [cos, sin]
        if cfg.mlp_time_embed:
            temb = nn.Dense(4 * d, dtype=self.dtype, name="time_embed_0")(temb)
            temb = nn.Dense(d, dtype=self.dtype, name="time_embed_2")(nn.silu(temb))
        ctx = nn.Dense(d, dtype=self.dtype, name="context_embed")(context.astype(self.dtype))
        h = jnp.concatenate([temb[:, None, :], ctx, patches], axis=1)
        pos = self.param("pos_embed", nn.initializers.truncated_normal(0.02),
                         (1, cfg.num_extra_tokens + cfg.num_patches, d))
        h = h + pos.astype(self.dtype)

        mask = None
        if context_mask is not None:  # keys: time token and patches always visible
            keep = jnp.concatenate([jnp.ones((b, 1), bool), context_mask > 0,
                                    jnp.ones((b, cfg.num_patches), bool)], axis=1)
            mask = keep[:, None, None, :]

        block_cls = nn.remat(UViTBlock) if self.remat else UViTBlock
        block = lambda name, skip: block_cls(cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, skip,
                                             cfg.layer_norm_eps, self.dtype, name=name)
        half = cfg.depth // 2
        skips = []
        for i in range(half):
            h = block(f"in_blocks_{i}", False)(h, None, mask)
            skips.append(h)
        h = block("mid_block", False)(h, None, mask)
        for i in range(half):
            h = block(f"out_blocks_{i}", True)(h, skips.pop(), mask)

        h = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name="norm")(h)
        c_out = cfg.image_channels
        h = nn.Dense(p * p * c_out, dtype=self.dtype, name="decoder_pred")(h[:, cfg.num_extra_tokens:])
        h = h.reshape(b, g, g, p, p, c_out).transpose(0, 1, 3, 2, 4, 5)
        h = h.reshape(b, g * p, g * p, c_out)
        if cfg.final_conv:
            h = conv(c_out, 3, self.dtype, "final_layer")(h)
        return h.astype(jnp.float32)
