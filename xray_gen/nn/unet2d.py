"""Cross-attention U-Net denoiser of the Stable-Diffusion-1.x family, in Flax linen (NHWC).

`UNet2DConditionModel(config)(x, t, context, context_mask=None)` predicts the noise (or v, the
training Task decides) for latents x (B, h, w, in_channels) at timesteps t (scalar or (B,), int or
float) given context tokens (B, S, cross_attention_dim), e.g. CLIP text states plus one reference-
image token, with an optional (B, S) mask (1 = real token) that removes padded tokens from every
cross-attention.

Layout and parameter names follow diffusers' `UNet2DConditionModel` (see
`xray_gen.models.cxr_irgen.weights` for SD weight import):

  t -> sinusoidal(block_out_channels[0]; flip_sin_to_cos, freq_shift) -> time_embedding
       (Dense 4C -> SiLU -> Dense 4C) = temb
  conv_in -> down_blocks_i: layers_per_block x [ResnetBlock2D(temb) (+ Transformer2D if
       cross_attn[i])] + stride-2 conv except the last level; every output is kept as a skip
  mid_block: resnet, Transformer2D, resnet
  up_blocks_i (widths reversed, cross_attn reversed): (layers_per_block + 1) x [concat(skip) ->
       resnet (+ Transformer2D)] + nearest x2 conv except the last
  GroupNorm -> SiLU -> conv_out

Transformer2D = GroupNorm(eps 1e-6) -> proj_in (1x1 conv, or Dense if use_linear_projection) ->
transformer_layers x BasicTransformerBlock [LN -> self-attn, LN -> cross-attn(context), LN ->
GEGLU feed-forward (4x)] -> proj_out -> + input. Heads per level come from `num_heads`
(SD-1.x: 8 heads at every level, i.e. diffusers' `attention_head_dim=8`, which diffusers
actually uses as a head *count*) or from `head_dim` (heads = width // head_dim).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from xray_gen.nn.autoencoder_kl import Attention, Downsample2D, ResnetBlock2D, Upsample2D, conv, group_norm

Dtype = Any


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Architecture of `UNet2DConditionModel` (defaults: SD-1.x, 860M parameters)."""

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: Tuple[int, ...] = (320, 640, 1280, 1280)
    cross_attn: Tuple[bool, ...] = (True, True, True, False)  # per down level; up levels mirror it
    layers_per_block: int = 2
    transformer_layers: int = 1
    num_heads: Union[int, Tuple[int, ...], None] = 8  # per level (int: same everywhere)
    head_dim: Optional[int] = None  # alternative to num_heads: heads = width // head_dim
    cross_attention_dim: int = 768
    use_linear_projection: bool = False  # SD-2.x style Dense proj_in/proj_out instead of 1x1 convs
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    sample_size: Optional[int] = None  # latent side the weights were trained at (informational)

    def __post_init__(self):
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        object.__setattr__(self, "cross_attn", tuple(bool(a) for a in self.cross_attn))
        if isinstance(self.num_heads, (list, tuple)):
            object.__setattr__(self, "num_heads", tuple(int(h) for h in self.num_heads))
        n = len(self.block_out_channels)
        if n == 0:
            raise ValueError("UNetConfig.block_out_channels is empty")
        if len(self.cross_attn) != n:
            raise ValueError(f"UNetConfig.cross_attn has {len(self.cross_attn)} entries, "
                             f"block_out_channels has {n}")
        if (self.num_heads is None) == (self.head_dim is None):
            raise ValueError("UNetConfig: set exactly one of num_heads and head_dim "
                             f"(got num_heads={self.num_heads}, head_dim={self.head_dim})")
        if isinstance(self.num_heads, tuple) and len(self.num_heads) != n:
            raise ValueError(f"UNetConfig.num_heads has {len(self.num_heads)} entries, "
                             f"block_out_channels has {n}")
        for i, c in enumerate(self.block_out_channels):
            if c % self.norm_num_groups:
                raise ValueError(f"UNetConfig.block_out_channels[{i}]={c} is not divisible by "
                                 f"norm_num_groups={self.norm_num_groups}")
            if c % self.heads(i):
                raise ValueError(f"UNetConfig: block_out_channels[{i}]={c} is not divisible by "
                                 f"{self.heads(i)} heads")
        if self.layers_per_block < 1 or self.transformer_layers < 1:
            raise ValueError("UNetConfig.layers_per_block and transformer_layers must be >= 1")

    def heads(self, level: int) -> int:
        """Attention heads at down level `level` (the mid block uses the last level's)."""
        if self.head_dim is not None:
            return max(1, self.block_out_channels[level] // self.head_dim)
        if isinstance(self.num_heads, tuple):
            return self.num_heads[level]
        return int(self.num_heads)

    @property
    def downsampling_factor(self) -> int:
        """Inputs need H and W divisible by this (one stride-2 conv per level except the last)."""
        return 2 ** (len(self.block_out_channels) - 1)


def timestep_embedding(t: jax.Array, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0.0,
                       max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding (B,) -> (B, dim), float32, frequencies exp(-log(P) i / (dim/2 - shift)).

    Same convention as diffusers/SD: [sin, cos] halves, swapped to [cos, sin] by flip_sin_to_cos;
    an odd `dim` gets one zero column.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift))
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
    sin, cos = jnp.sin(args), jnp.cos(args)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nn.Module):
    """Dense(linear_1) -> SiLU -> Dense(linear_2)."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(self.features, dtype=self.dtype, name="linear_1")(x.astype(self.dtype))
        return nn.Dense(self.features, dtype=self.dtype, name="linear_2")(nn.silu(x))


class GEGLU(nn.Module):
    """Dense to 2*inner (`proj`), split into value and gate, value * GELU(gate) (exact erf GELU)."""

    inner: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h, gate = jnp.split(nn.Dense(2 * self.inner, dtype=self.dtype, name="proj")(x), 2, axis=-1)
        return h * nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
    """net_0 (GEGLU to 4*dim) -> net_2 (Dense back to dim); names as diffusers' `ff.net.{0,2}`."""

    mult: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = GEGLU(self.mult * x.shape[-1], self.dtype, name="net_0")(x)
        return nn.Dense(x.shape[-1], dtype=self.dtype, name="net_2")(h)


class BasicTransformerBlock(nn.Module):
    """Pre-LN self-attention, cross-attention to `context` and GEGLU feed-forward, each residual."""

    heads: int
    head_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
        ln = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name=name)
        attn = lambda name: Attention(self.heads, self.head_dim, qkv_bias=False, dtype=self.dtype, name=name)
        x = x + attn("attn1")(ln("norm1")(x))
        x = x + attn("attn2")(ln("norm2")(x), context, mask)
        return x + FeedForward(dtype=self.dtype, name="ff")(ln("norm3")(x))


class Transformer2D(nn.Module):
    """GroupNorm -> proj_in -> transformer blocks over the H*W tokens -> proj_out -> + input."""

    heads: int
    layers: int = 1
    use_linear_projection: bool = False
    groups: int = 32
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
        b, h, w, c = x.shape
        proj = (lambda name: nn.Dense(c, dtype=self.dtype, name=name)) if self.use_linear_projection \
            else (lambda name: conv(c, 1, self.dtype, name))
        y = proj("proj_in")(group_norm(self.groups, 1e-6, self.dtype, "norm")(x)).reshape(b, h * w, c)
        for k in range(self.layers):
            y = BasicTransformerBlock(self.heads, c // self.heads, self.dtype, name=f"transformer_blocks_{k}")(
                y, context, mask)
        return x + proj("proj_out")(y.reshape(b, h, w, c))


def _blocks(remat: bool):
    """(resnet, transformer) classes, rematerialised in the backward pass when `remat` (less memory)."""
    if not remat:
        return ResnetBlock2D, Transformer2D
    return nn.remat(ResnetBlock2D), nn.remat(Transformer2D)


class DownLevel(nn.Module):
    """diffusers' (CrossAttn)DownBlock2D; returns (h, skips) with one skip per resnet and the downsample."""

    config: UNetConfig
    level: int
    dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, h, temb, context, mask):
        cfg, i = self.config, self.level
        ch = cfg.block_out_channels[i]
        resnet, transformer = _blocks(self.remat)
        skips = []
        for j in range(cfg.layers_per_block):
            h = resnet(ch, cfg.norm_num_groups, cfg.norm_eps, self.dtype, name=f"resnets_{j}")(h, temb)
            if cfg.cross_attn[i]:
                h = transformer(cfg.heads(i), cfg.transformer_layers, cfg.use_linear_projection,
                                cfg.norm_num_groups, self.dtype, name=f"attentions_{j}")(h, context, mask)
            skips.append(h)
        if i < len(cfg.block_out_channels) - 1:
            h = Downsample2D(ch, dtype=self.dtype, name="downsamplers_0")(h)
            skips.append(h)
        return h, skips


class UpLevel(nn.Module):
    """diffusers' (CrossAttn)UpBlock2D at reversed position `position`: concat a skip before each resnet."""

    config: UNetConfig
    position: int
    dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, h, skips, temb, context, mask):
        cfg = self.config
        level = len(cfg.block_out_channels) - 1 - self.position
        ch = cfg.block_out_channels[level]
        resnet, transformer = _blocks(self.remat)
        for j in range(cfg.layers_per_block + 1):
            h = jnp.concatenate([h, skips.pop()], axis=-1)
            h = resnet(ch, cfg.norm_num_groups, cfg.norm_eps, self.dtype, name=f"resnets_{j}")(h, temb)
            if cfg.cross_attn[level]:
                h = transformer(cfg.heads(level), cfg.transformer_layers, cfg.use_linear_projection,
                                cfg.norm_num_groups, self.dtype, name=f"attentions_{j}")(h, context, mask)
        if level > 0:
            h = Upsample2D(ch, dtype=self.dtype, name="upsamplers_0")(h)
        return h


class MidLevel(nn.Module):
    """diffusers' UNetMidBlock2DCrossAttn: resnet, Transformer2D, resnet at the lowest resolution."""

    config: UNetConfig
    dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, h, temb, context, mask):
        cfg = self.config
        last = len(cfg.block_out_channels) - 1
        ch = cfg.block_out_channels[last]
        resnet, transformer = _blocks(self.remat)
        h = resnet(ch, cfg.norm_num_groups, cfg.norm_eps, self.dtype, name="resnets_0")(h, temb)
        h = transformer(cfg.heads(last), cfg.transformer_layers, cfg.use_linear_projection,
                        cfg.norm_num_groups, self.dtype, name="attentions_0")(h, context, mask)
        return resnet(ch, cfg.norm_num_groups, cfg.norm_eps, self.dtype, name="resnets_1")(h, temb)


class UNet2DConditionModel(nn.Module):
    """`__call__(x, t, context, context_mask=None) -> (B, h, w, out_channels)` float32.

    x: (B, h, w, in_channels) latents, h and w multiples of `config.downsampling_factor`;
    t: scalar or (B,) timesteps (int or float); context: (B, S, cross_attention_dim);
    context_mask: optional (B, S), 1/True on tokens that may be attended to.
    `dtype` is the compute dtype (parameters stay float32); `remat` recomputes resnet and
    transformer activations in the backward pass to save memory.
    """

    config: UNetConfig
    dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, context: jax.Array,
                 context_mask: Optional[jax.Array] = None) -> jax.Array:
        cfg = self.config
        f = cfg.downsampling_factor
        if x.ndim != 4 or x.shape[-1] != cfg.in_channels:
            raise ValueError(f"UNet2DConditionModel: x must be (B, h, w, {cfg.in_channels}), got {x.shape}")
        if x.shape[1] % f or x.shape[2] % f:
            raise ValueError(f"UNet2DConditionModel: h and w must be multiples of {f}, got {x.shape}")
        if context.ndim != 3 or context.shape[0] != x.shape[0] or context.shape[-1] != cfg.cross_attention_dim:
            raise ValueError(f"UNet2DConditionModel: context must be (B={x.shape[0]}, S, "
                             f"{cfg.cross_attention_dim}), got {context.shape}")
        mask = None
        if context_mask is not None:
            if context_mask.shape != context.shape[:2]:
                raise ValueError(f"UNet2DConditionModel: context_mask must be {context.shape[:2]}, "
                                 f"got {context_mask.shape}")
            mask = (context_mask > 0)[:, None, None, :]  # (B, heads, queries, keys)
        t = jnp.broadcast_to(jnp.asarray(t), (x.shape[0],))
        emb = timestep_embedding(t, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        temb = TimestepEmbedding(4 * cfg.block_out_channels[0], self.dtype, name="time_embedding")(emb)
        context = context.astype(self.dtype)

        h = conv(cfg.block_out_channels[0], 3, self.dtype, "conv_in")(x.astype(self.dtype))
        skips = [h]
        for i in range(len(cfg.block_out_channels)):
            h, level_skips = DownLevel(cfg, i, self.dtype, self.remat, name=f"down_blocks_{i}")(h, temb, context, mask)
            skips.extend(level_skips)
        h = MidLevel(cfg, self.dtype, self.remat, name="mid_block")(h, temb, context, mask)
        for p in range(len(cfg.block_out_channels)):
            n = cfg.layers_per_block + 1
            level_skips, skips = skips[-n:], skips[:-n]
            h = UpLevel(cfg, p, self.dtype, self.remat, name=f"up_blocks_{p}")(h, level_skips, temb, context, mask)
        h = nn.silu(group_norm(cfg.norm_num_groups, cfg.norm_eps, self.dtype, "conv_norm_out")(h))
        return conv(cfg.out_channels, 3, self.dtype, "conv_out")(h).astype(jnp.float32)
