"""Progressive-growing GAN networks (Karras et al. 2018), as the CXR PGGAN paper uses them.

Both networks hold the blocks of *every* resolution from the start (level 0 = 4x4, level k =
4 * 2**k px); a call at `level` uses blocks 0..level only. So the parameter tree never changes
shape while the model grows: growing keeps the trained weights by construction, one optimiser
state covers the whole run, and a checkpoint restores into the same structure at any level.
`level` is static (a new resolution compiles once); the fade-in weight `alpha` is traced.

Equalised learning rate: weights are stored as N(0, 1) and multiplied at run time by the He
constant gain / sqrt(fan_in), so Adam's per-parameter step is equally effective in every layer.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from xray_gen.nn.conv import small_output_conv_general_dilated

LEAK = 0.2


def he_scale(fan_in: int, gain: float = math.sqrt(2.0)) -> float:
    """The run-time multiplier of an equalised layer: gain / sqrt(fan_in)."""
    return gain / math.sqrt(fan_in)


class EqualizedDense(nn.Module):
    features: int
    gain: float = math.sqrt(2.0)

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.normal(1.0), (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return x @ (kernel * he_scale(x.shape[-1], self.gain)).astype(x.dtype) + bias.astype(x.dtype)


class EqualizedConv(nn.Module):
    features: int
    kernel_size: int = 3
    gain: float = math.sqrt(2.0)
    padding: str = "SAME"

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.normal(1.0), (k, k, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        scaled = (kernel * he_scale(k * k * x.shape[-1], self.gain)).astype(x.dtype)
        # the 4x4 critic head (a 1x1 output) runs as a matmul on the CPU (xray_gen/nn/conv.py)
        y = small_output_conv_general_dilated(x, scaled, (1, 1), self.padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias.astype(x.dtype)


def pixel_norm(x, eps: float = 1e-8):
    """Each pixel's feature vector scaled to unit root-mean-square (keeps G's magnitudes in check)."""
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def minibatch_stddev(x, group_size: int = 4, eps: float = 1e-8):
    """Appends one feature map: the standard deviation of each feature across a group of samples,
    averaged over features and pixels, so D can see a lack of variety within the batch.

    `group_size` 0 uses the whole batch as one group (the official CXR code); Karras uses 4. The
    batch must divide into groups; sample n belongs to group n % (N / G) (Karras' layout).
    A group of 1 gives a constant zero map (a per-image classifier built from D uses that).
    """
    n, h, w, c = x.shape
    g = n if group_size <= 0 else min(group_size, n)
    if n % g:
        raise ValueError(f"minibatch stddev: batch {n} is not divisible by group size {g}")
    y = x.astype(jnp.float32).reshape(g, n // g, h, w, c)
    std = jnp.sqrt(jnp.mean(jnp.square(y - jnp.mean(y, axis=0)), axis=0) + eps)  # (M, H, W, C)
    stat = jnp.mean(std, axis=(1, 2, 3))  # (M,)
    stat = jnp.tile(stat, g)[:, None, None, None]  # sample n -> its group n % M
    return jnp.concatenate([x, jnp.broadcast_to(stat, (n, h, w, 1)).astype(x.dtype)], axis=-1)


def upsample(x):
    """Nearest-neighbour x2."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def downsample(x):
    """2x2 average pooling."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def fade(old, new, alpha):
    """old at alpha 0, new at alpha 1 (the smooth introduction of a new block)."""
    return old + alpha * (new - old)


def resolution_of(level: int) -> int:
    return 4 * 2**level


def level_of(resolution: int) -> int:
    level = int(round(math.log2(resolution))) - 2
    if level < 0 or resolution_of(level) != resolution:
        raise ValueError(f"resolution {resolution} is not 4 * 2**k (4, 8, 16, ..., 1024)")
    return level


class _GBlock(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        x = upsample(x)
        x = pixel_norm(nn.leaky_relu(EqualizedConv(self.features)(x), LEAK))
        return pixel_norm(nn.leaky_relu(EqualizedConv(self.features)(x), LEAK))


class Generator(nn.Module):
    """z (N, latent) -> image (N, R, R, out_channels) at `level`, linear output (data in [-1, 1]).

    `channels[k]` is the width at level k (4x4 first). During a fade-in the new level's image is
    blended with the previous level's image upsampled: fade(up(rgb_{k-1}(h_{k-1})), rgb_k(h_k), alpha).
    """

    channels: Sequence[int]
    out_channels: int = 1

    def setup(self):
        c0 = self.channels[0]
        self.dense = EqualizedDense(4 * 4 * c0, gain=math.sqrt(2.0) / 4)  # Karras: a 4x4 "conv" on a 1x1 input
        self.conv0 = EqualizedConv(c0)
        self.blocks = [_GBlock(c) for c in self.channels[1:]]
        self.to_rgb = [EqualizedConv(self.out_channels, kernel_size=1, gain=1.0) for _ in self.channels]

    @property
    def max_level(self) -> int:
        return len(self.channels) - 1

    def __call__(self, z, level: int, alpha=1.0):
        if not 0 <= level <= self.max_level:
            raise ValueError(f"generator level {level} outside [0, {self.max_level}]")
        x = pixel_norm(z)
        x = pixel_norm(nn.leaky_relu(self.dense(x), LEAK)).reshape(z.shape[0], 4, 4, self.channels[0])
        x = pixel_norm(nn.leaky_relu(self.conv0(x), LEAK))
        initializing = self.is_initializing()
        prev = x
        for k in range(1, level + 1):
            if initializing:
                self.to_rgb[k - 1](x)  # create every level's output layer at init
            prev, x = x, self.blocks[k - 1](x)
        image = self.to_rgb[level](x)
        if level == 0:
            return image
        return fade(upsample(self.to_rgb[level - 1](prev)), image, alpha)


class _DBlock(nn.Module):
    features: int  # channels[k]
    out_features: int  # channels[k - 1]

    @nn.compact
    def __call__(self, x):
        x = nn.leaky_relu(EqualizedConv(self.features)(x), LEAK)
        x = nn.leaky_relu(EqualizedConv(self.out_features)(x), LEAK)
        return downsample(x)


class Discriminator(nn.Module):
    """image (N, R, R, C) at `level` -> (scores (N, num_outputs), features (N, channels[0])).

    `num_outputs` 1 is the WGAN critic; the paper's re-purposed classifier replaces the `head`
    with per-class logits (same trunk parameters). During a fade-in the new block's output is
    blended with from_rgb_{k-1} of the image downsampled: fade(rgb(down(x)), block_k(rgb_k(x)), alpha).
    """

    channels: Sequence[int]
    num_outputs: int = 1
    mbstd_group: int = 4

    def setup(self):
        self.from_rgb = [EqualizedConv(c, kernel_size=1) for c in self.channels]
        self.blocks = [_DBlock(self.channels[k], self.channels[k - 1]) for k in range(1, len(self.channels))]
        c0 = self.channels[0]
        self.conv0 = EqualizedConv(c0)
        self.conv4x4 = EqualizedConv(c0, kernel_size=4, padding="VALID")  # = dense over the 4x4 map
        self.head = EqualizedDense(self.num_outputs, gain=1.0)

    @property
    def max_level(self) -> int:
        return len(self.channels) - 1

    def __call__(self, images, level: int, alpha=1.0):
        if not 0 <= level <= self.max_level:
            raise ValueError(f"discriminator level {level} outside [0, {self.max_level}]")
        if images.shape[1] != resolution_of(level):
            raise ValueError(f"discriminator level {level} expects {resolution_of(level)} px, got {images.shape[1]}")
        x = nn.leaky_relu(self.from_rgb[level](images), LEAK)
        if self.is_initializing():  # create every level's input layer and block at init
            h = images
            for k in range(level - 1, -1, -1):
                h = downsample(h)
                self.from_rgb[k](h)
        if level > 0:
            x = self.blocks[level - 1](x)
            skip = nn.leaky_relu(self.from_rgb[level - 1](downsample(images)), LEAK)
            x = fade(skip, x, alpha)
            for k in range(level - 1, 0, -1):
                x = self.blocks[k - 1](x)
        x = minibatch_stddev(x, self.mbstd_group)
        x = nn.leaky_relu(self.conv0(x), LEAK)
        features = nn.leaky_relu(self.conv4x4(x), LEAK).reshape(images.shape[0], -1)
        return self.head(features), features


@dataclasses.dataclass(frozen=True)
class Networks:
    generator: Generator
    critic: Discriminator


def build_networks(config) -> Networks:
    """The generator and critic for every level up to `data.resolution`; checks the per-level
    config lists and the minibatch-stddev group against each level's batch size."""
    p = config.pggan
    n = level_of(config.data.resolution) + 1
    for field in ("channels", "batch_sizes"):
        if len(p[field]) < n:
            raise ValueError(f"pggan.{field} needs {n} entries (levels 4..{config.data.resolution} px), "
                             f"got {len(p[field])}")
    for level, bs in enumerate(p.batch_sizes[:n]):
        group = bs if p.mbstd_group <= 0 else min(p.mbstd_group, bs)
        if bs % group:
            raise ValueError(f"pggan.batch_sizes[{level}]={bs} is not divisible by pggan.mbstd_group={p.mbstd_group}")
    if p.out_channels not in (1, 3):
        raise ValueError(f"pggan.out_channels must be 1 or 3, got {p.out_channels}")
    channels = tuple(p.channels[:n])
    return Networks(Generator(channels, p.out_channels), Discriminator(channels, num_outputs=1, mbstd_group=p.mbstd_group))
