"""KL-regularised convolutional autoencoder of the Stable-Diffusion-1.x family (Rombach et al. 2022).

Layout (NHWC) follows diffusers' `AutoencoderKL`, and parameter names mirror its state-dict keys
(`encoder.down_blocks.0.resnets.1.conv1.weight` <-> `encoder/down_blocks_0/resnets_1/conv1/kernel`)
so that `xray_gen.models.cxr_irgen.weights` can import SD weights by a mechanical rule:

  Encoder  conv_in -> L levels of [layers_per_block ResnetBlock2D, Downsample2D except the last]
           -> mid (resnet, single-head self-attention, resnet) -> GroupNorm, SiLU -> conv_out
           (2 * latent_channels: mean and log-variance)
  quant_conv (1x1) -> DiagonalGaussian ; post_quant_conv (1x1) -> Decoder
  Decoder  conv_in -> mid -> L levels (reversed widths) of [layers_per_block + 1 resnets,
           Upsample2D except the last] -> GroupNorm, SiLU -> conv_out

With SD's 4 levels the spatial downsampling factor is 8 and the latent has 4 channels. GroupNorm has
32 groups and eps 1e-6 throughout. `VAEConfig.scaling_factor` is carried for the diffusion model
(0.18215 for SD weights; measure it from data for an autoencoder trained here) and is *not* applied
by this module.

The building blocks (`ResnetBlock2D`, `Downsample2D`, `Upsample2D`, `Attention`) are shared with
`xray_gen.nn.unet2d`. Parameters are float32 by default; `dtype` sets the compute dtype (bf16 on
accelerators), with normalisation statistics and attention softmax kept in float32.

Usage::

    vae = AutoencoderKL(VAEConfig(block_out_channels=(32, 64, 64, 64)))
    params = vae.init(rng, x)["params"]                       # x (B, H, W, 1) in [-1, 1]
    post = vae.apply({"params": params}, x, method=vae.encode)  # DiagonalGaussian
    z = post.sample(rng) * cfg.scaling_factor
    x_hat = vae.apply({"params": params}, z / cfg.scaling_factor, method=vae.decode)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from xray_gen.nn.attention import multi_head_attention

Dtype = Any


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Architecture of `AutoencoderKL` (defaults: SD-1.x widths with a 1-channel X-ray input)."""

    in_channels: int = 1
    out_channels: Optional[int] = None  # None: same as in_channels
    block_out_channels: Tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    norm_eps: float = 1e-6
    mid_attention: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    scaling_factor: float = 0.18215  # latent scale used by the diffusion model, not by this module
    shift_factor: Optional[float] = None  # SD-1.x has none; kept for other diffusers VAEs' configs

    def __post_init__(self):
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
        if not self.block_out_channels:
            raise ValueError("VAEConfig.block_out_channels is empty")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"VAEConfig.block_out_channels entry {c} is not divisible by "
                                 f"norm_num_groups={self.norm_num_groups}")
        if self.layers_per_block < 1:
            raise ValueError(f"VAEConfig.layers_per_block={self.layers_per_block} must be >= 1")

    @property
    def downsampling_factor(self) -> int:
        """Spatial ratio image/latent: one stride-2 conv per level except the last (8 for SD)."""
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def image_channels(self) -> int:
        return self.in_channels if self.out_channels is None else self.out_channels


@flax.struct.dataclass
class DiagonalGaussian:
    """Posterior q(z|x) = N(mean, exp(logvar)) per latent element, as returned by `encode`.

    A pytree, so it can leave `apply` and jitted functions. `logvar` is clipped to [-30, 20] as in
    SD, so an untrained encoder cannot produce inf/0 variances.
    """

    mean: jax.Array
    logvar: jax.Array

    @classmethod
    def from_moments(cls, moments: jax.Array) -> "DiagonalGaussian":
        """Splits (..., 2C) channels into mean (first C) and log-variance (last C)."""
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        return cls(mean=mean, logvar=jnp.clip(logvar, -30.0, 20.0))

    @property
    def std(self) -> jax.Array:
        return jnp.exp(0.5 * self.logvar)

    def sample(self, rng: jax.Array) -> jax.Array:
        """Reparameterised draw mean + std * eps (gradients flow to mean and logvar)."""
        return self.mean + self.std * jax.random.normal(rng, self.mean.shape, self.mean.dtype)

    def mode(self) -> jax.Array:
        return self.mean

    def kl(self) -> jax.Array:
        """KL(q || N(0, I)) summed over all non-batch axes -> (B,)."""
        var = jnp.exp(self.logvar)
        per_elem = 0.5 * (jnp.square(self.mean) + var - 1.0 - self.logvar)
        return jnp.sum(per_elem, axis=tuple(range(1, per_elem.ndim)))


# ------------------------------------------------------------------------------------------------
# Building blocks (shared with the U-Net)
# ------------------------------------------------------------------------------------------------


def conv(features: int, kernel: int, dtype: Dtype, name: str, stride: int = 1, padding: Any = None) -> nn.Conv:
    """Torch-style conv: symmetric padding kernel//2 unless given (PyTorch's `padding=k//2`)."""
    if padding is None:
        padding = ((kernel // 2, kernel // 2),) * 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding, dtype=dtype, name=name)


def group_norm(groups: int, eps: float, dtype: Dtype, name: str) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, epsilon=eps, dtype=dtype, name=name)


class ResnetBlock2D(nn.Module):
    """GroupNorm -> SiLU -> conv3x3 (+ Dense(SiLU(temb)) per channel) -> GroupNorm -> SiLU -> conv3x3,
    plus the input (through a 1x1 `conv_shortcut` when the width changes).

    `temb` is optional: the autoencoder's blocks have no time embedding (and no `time_emb_proj`).
    """

    out_channels: int
    groups: int = 32
    eps: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, temb: Optional[jax.Array] = None) -> jax.Array:
        h = nn.silu(group_norm(self.groups, self.eps, self.dtype, "norm1")(x))
        h = conv(self.out_channels, 3, self.dtype, "conv1")(h)
        if temb is not None:
            t = nn.Dense(self.out_channels, dtype=self.dtype, name="time_emb_proj")(nn.silu(temb))
            h = h + t[:, None, None, :]
        h = nn.silu(group_norm(self.groups, self.eps, self.dtype, "norm2")(h))
        h = conv(self.out_channels, 3, self.dtype, "conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, self.dtype, "conv_shortcut")(x)
        return x + h


class Downsample2D(nn.Module):
    """Stride-2 3x3 conv named `conv`. `asymmetric`: pad only bottom/right by one (the SD
    autoencoder's layout); otherwise pad one on each side (the U-Net's)."""

    out_channels: int
    asymmetric: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad = ((0, 1), (0, 1)) if self.asymmetric else ((1, 1), (1, 1))
        return conv(self.out_channels, 3, self.dtype, "conv", stride=2, padding=pad)(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv named `conv`."""

    out_channels: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return conv(self.out_channels, 3, self.dtype, "conv")(x)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, heads: int,
                          mask: Optional[jax.Array] = None) -> jax.Array:
    """Projected q (B, T, N*H), k and v (B, S, N*H) -> (B, T, N*H), scale 1/sqrt(H).

    `mask` is boolean, broadcastable to (B, N, T, S). Softmax in float32; a query whose keys are
    all masked attends uniformly, as with diffusers' additive -10000 bias. The kernel is
    `xray_gen.nn.attention.multi_head_attention` (a backward pass XLA:CPU runs without copies).
    """
    head_dim = q.shape[-1] // heads
    split = lambda a: a.reshape(a.shape[:-1] + (heads, head_dim))
    out = multi_head_attention(split(q), split(k), split(v), mask)
    return out.reshape(q.shape)


class Attention(nn.Module):
    """Multi-head attention with diffusers' names: to_q, to_k, to_v, to_out_0.

    Queries (B, T, D) attend to `context` (B, S, Dc) (self-attention when None); `mask` is boolean,
    broadcastable to (B, heads, T, S). Output width is D.
    """

    heads: int
    head_dim: int
    qkv_bias: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: Optional[jax.Array] = None,
                 mask: Optional[jax.Array] = None) -> jax.Array:
        ctx = x if context is None else context.astype(self.dtype)
        inner = self.heads * self.head_dim
        dense = lambda name: nn.Dense(inner, use_bias=self.qkv_bias, dtype=self.dtype, name=name)
        out = dot_product_attention(dense("to_q")(x), dense("to_k")(ctx), dense("to_v")(ctx), self.heads, mask)
        return nn.Dense(x.shape[-1], dtype=self.dtype, name="to_out_0")(out)


class SpatialSelfAttention(nn.Module):
    """The autoencoder's mid-block attention: GroupNorm, one head over all H*W positions, residual.

    Its projections sit beside `group_norm` (not in a child module), as in diffusers' state dict.
    """

    groups: int = 32
    eps: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        y = group_norm(self.groups, self.eps, self.dtype, "group_norm")(x).reshape(b, h * w, c)
        dense = lambda name: nn.Dense(c, dtype=self.dtype, name=name)
        y = dot_product_attention(dense("to_q")(y), dense("to_k")(y), dense("to_v")(y), heads=1)
        y = dense("to_out_0")(y)
        return x + y.reshape(b, h, w, c)


class MidBlock(nn.Module):
    """resnet -> self-attention (optional) -> resnet at the lowest resolution (names resnets_0/1, attentions_0)."""

    channels: int
    groups: int
    eps: float
    attention: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        block = lambda i: ResnetBlock2D(self.channels, self.groups, self.eps, self.dtype, name=f"resnets_{i}")
        x = block(0)(x)
        if self.attention:
            x = SpatialSelfAttention(self.groups, self.eps, self.dtype, name="attentions_0")(x)
        return block(1)(x)


# ------------------------------------------------------------------------------------------------
# Encoder, decoder, autoencoder
# ------------------------------------------------------------------------------------------------


class EncoderLevel(nn.Module):
    """diffusers' DownEncoderBlock2D: `layers` resnets, then an asymmetric stride-2 conv unless last."""

    channels: int
    layers: int
    downsample: bool
    groups: int
    eps: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for j in range(self.layers):
            x = ResnetBlock2D(self.channels, self.groups, self.eps, self.dtype, name=f"resnets_{j}")(x)
        if self.downsample:
            x = Downsample2D(self.channels, asymmetric=True, dtype=self.dtype, name="downsamplers_0")(x)
        return x


class DecoderLevel(nn.Module):
    """diffusers' UpDecoderBlock2D: `layers` resnets, then nearest x2 + conv unless last."""

    channels: int
    layers: int
    upsample: bool
    groups: int
    eps: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for j in range(self.layers):
            x = ResnetBlock2D(self.channels, self.groups, self.eps, self.dtype, name=f"resnets_{j}")(x)
        if self.upsample:
            x = Upsample2D(self.channels, dtype=self.dtype, name="upsamplers_0")(x)
        return x


class Encoder(nn.Module):
    """Image (B, H, W, in_channels) -> moments (B, H/f, W/f, 2 * latent_channels)."""

    config: VAEConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        g, eps, n = cfg.norm_num_groups, cfg.norm_eps, len(cfg.block_out_channels)
        h = conv(cfg.block_out_channels[0], 3, self.dtype, "conv_in")(x.astype(self.dtype))
        for i, ch in enumerate(cfg.block_out_channels):
            h = EncoderLevel(ch, cfg.layers_per_block, i < n - 1, g, eps, self.dtype, name=f"down_blocks_{i}")(h)
        h = MidBlock(cfg.block_out_channels[-1], g, eps, cfg.mid_attention, self.dtype, name="mid_block")(h)
        h = nn.silu(group_norm(g, eps, self.dtype, "conv_norm_out")(h))
        return conv(2 * cfg.latent_channels, 3, self.dtype, "conv_out")(h)


class Decoder(nn.Module):
    """Latent (B, h, w, latent_channels) -> image (B, h*f, w*f, out_channels)."""

    config: VAEConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        cfg = self.config
        g, eps = cfg.norm_num_groups, cfg.norm_eps
        widths = cfg.block_out_channels[::-1]
        h = conv(widths[0], 3, self.dtype, "conv_in")(z.astype(self.dtype))
        h = MidBlock(widths[0], g, eps, cfg.mid_attention, self.dtype, name="mid_block")(h)
        for i, ch in enumerate(widths):
            h = DecoderLevel(ch, cfg.layers_per_block + 1, i < len(widths) - 1, g, eps, self.dtype,
                             name=f"up_blocks_{i}")(h)
        h = nn.silu(group_norm(g, eps, self.dtype, "conv_norm_out")(h))
        return conv(cfg.image_channels, 3, self.dtype, "conv_out")(h)


class AutoencoderKL(nn.Module):
    """KL autoencoder: `encode(x) -> DiagonalGaussian`, `decode(z) -> x`; `__call__` does both.

    Images are NHWC with H and W multiples of `config.downsampling_factor`; outputs are float32.
    """

    config: VAEConfig
    dtype: Dtype = jnp.float32

    def setup(self):
        cfg = self.config
        self.encoder = Encoder(cfg, self.dtype)
        self.decoder = Decoder(cfg, self.dtype)
        if cfg.use_quant_conv:
            self.quant_conv = conv(2 * cfg.latent_channels, 1, self.dtype, "quant_conv")
        if cfg.use_post_quant_conv:
            self.post_quant_conv = conv(cfg.latent_channels, 1, self.dtype, "post_quant_conv")

    def _check(self, x: jax.Array, channels: int, what: str, factor: int):
        if x.ndim != 4 or x.shape[-1] != channels:
            raise ValueError(f"AutoencoderKL.{what}: expected (B, H, W, {channels}) NHWC, got {x.shape}")
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(f"AutoencoderKL.{what}: H and W must be multiples of {factor}, got {x.shape}")

    def encode(self, x: jax.Array) -> DiagonalGaussian:
        self._check(x, self.config.in_channels, "encode", self.config.downsampling_factor)
        moments = self.encoder(x)
        if self.config.use_quant_conv:
            moments = self.quant_conv(moments)
        return DiagonalGaussian.from_moments(moments)

    def decode(self, z: jax.Array) -> jax.Array:
        self._check(z, self.config.latent_channels, "decode", 1)
        z = z.astype(self.dtype)
        if self.config.use_post_quant_conv:
            z = self.post_quant_conv(z)
        return self.decoder(z).astype(jnp.float32)

    def __call__(self, x: jax.Array, rng: Optional[jax.Array] = None) -> Tuple[jax.Array, DiagonalGaussian]:
        """Reconstruction and posterior; decodes a posterior sample when `rng` is given, else its mode."""
        posterior = self.encode(x)
        z = posterior.mode() if rng is None else posterior.sample(rng)
        return self.decode(z), posterior
