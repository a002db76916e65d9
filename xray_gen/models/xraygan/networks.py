"""XRayGAN's MSCGAN (paper section 2.2): report-conditioned generators from 32 px up to 256 px.

Layout follows the official code in spirit (DESIGN.md section 6): a basic generator maps the report
embedding c (and optional noise, off by default as in paper and code) through a Dense to a 4x4 map,
then upsampling conv blocks to 32x32; each progressive stage encodes the previous image, concatenates
a spatially tiled Dense(c) (the conditioning), runs residual blocks, doubles the size with a
pixel shuffle and blends: x_n = a * G_n(x_{n-1}, c) + (1 - a) * U(x_{n-1}), a = 0.5.
Normalisation is per-pixel LayerNorm (or none): no batch statistics, so generator variables are
params only and outputs do not depend on the rest of the batch.

Patch discriminators (one per stage and view) use stride-2 blocks down to 4x4 like the official code,
but are conditioned for real: the tiled text projection is concatenated without normalisation (the
official instance norm zeroes it), a joint conv mixes it with image features, and a projection term
<embed(c), h> per patch makes the c-dependence multiplicative, so it cannot cancel in the WGAN
difference D(real, c) - D(fake, c).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from xray_gen.nn.conv import im2col_conv_general_dilated
from xray_gen.nn.text import FlatReportEncoder, HierarchicalReportEncoder

VIEWS = ("frontal", "lateral")

Dtype = Any


def blend(new, previous_upsampled, a=0.5):
    """Paper eq. (1): a * G_n(x_{n-1}, c) + (1 - a) * U(x_{n-1})."""
    return a * new + (1.0 - a) * previous_upsampled


def upsample2x(x):
    """Bilinear 2x upsampling (the paper's U), NHWC."""
    b, h, w, ch = x.shape
    return jax.image.resize(x, (b, 2 * h, 2 * w, ch), method="bilinear")


def _tile(v, h, w):
    return jnp.broadcast_to(v[:, None, None, :], (v.shape[0], h, w, v.shape[-1]))


def _pixel_shuffle(x, r=2):
    """Depth-to-space: (B, H, W, C*r*r) -> (B, H*r, W*r, C)."""
    b, h, w, ch = x.shape
    c = ch // (r * r)
    x = x.reshape(b, h, w, r, r, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * r, w * r, c)


def icnr_init(base_init=nn.initializers.lecun_normal(), r: int = 2):
    """ICNR (Aitken et al. 2017) for a conv feeding `_pixel_shuffle(r)`: the r*r sub-pixel groups of
    output channels start as copies, so the shuffled output starts as a nearest-neighbour upsampling
    of one conv instead of a checkerboard of r*r independent ones."""

    def init(key, shape, dtype=jnp.float32):
        if shape[-1] % (r * r):
            raise ValueError(f"ICNR needs output channels divisible by {r * r}, got {shape[-1]}")
        kernel = base_init(key, shape[:-1] + (shape[-1] // (r * r),), dtype)
        return jnp.tile(kernel, (1,) * (len(shape) - 1) + (r * r,))  # channel (i*r + j)*C + c

    return init


class _Norm(nn.Module):
    kind: str = "layer"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.kind == "none":
            return x
        if self.kind == "layer":
            return nn.LayerNorm(dtype=self.dtype)(x)
        raise ValueError(f"unknown norm {self.kind!r}: use 'layer' or 'none'")


def _conv(features, dtype, kernel=3, stride=1, name=None):
    # Strided convs (and kernels larger than their output) as patches + matmul on CPU: the critic's
    # gradient penalty differentiates them twice, which XLA:CPU otherwise runs on a slow generic path
    # (xray_gen/nn/conv.py).
    return nn.Conv(features, (kernel, kernel), strides=stride, padding="SAME", dtype=dtype, name=name,
                   conv_general_dilated=im2col_conv_general_dilated)


class _ResBlock(nn.Module):
    """conv-norm-act-conv-norm + skip (official ResBlock/ResBlockv3 shape)."""

    norm: str = "layer"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        ch = x.shape[-1]
        y = nn.leaky_relu(_Norm(self.norm, self.dtype)(_conv(ch, self.dtype)(x)), 0.2)
        y = _Norm(self.norm, self.dtype)(_conv(ch, self.dtype)(y))
        return x + y


class _BaseTrunk(nn.Module):
    """c [+ z] -> Dense -> 4x4 x width -> 3 x (upsample, conv, norm, act, res block) -> 32x32 x width/8."""

    width: int = 512
    noise_dim: int = 0
    norm: str = "layer"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, c, z=None):
        if self.noise_dim > 0:
            if z is None or z.shape[-1] != self.noise_dim:
                raise ValueError(f"generator has noise_dim={self.noise_dim}: pass z of shape (B, {self.noise_dim})")
            c = jnp.concatenate([c, z.astype(c.dtype)], axis=-1)
        elif z is not None:
            raise ValueError("generator has noise_dim=0 (paper/official): do not pass z")
        h = nn.Dense(16 * self.width, dtype=self.dtype)(c.astype(self.dtype))
        h = nn.leaky_relu(_Norm(self.norm, self.dtype)(h.reshape(c.shape[0], 4, 4, self.width)), 0.2)
        ch = self.width
        for _ in range(3):  # 4 -> 8 -> 16 -> 32
            ch = max(ch // 2, 1)
            h = _conv(ch, self.dtype)(upsample2x(h))
            h = nn.leaky_relu(_Norm(self.norm, self.dtype)(h), 0.2)
            h = _ResBlock(self.norm, self.dtype)(h)
        return h


class _StageTrunk(nn.Module):
    """features (B,H,W,width/2) + c -> concat tiled Dense(c) -> res blocks -> pixel shuffle -> (B,2H,2W,width)."""

    width: int = 128
    num_res: int = 4
    norm: str = "layer"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, feats, c):
        b, hh, ww, _ = feats.shape
        t = nn.leaky_relu(nn.Dense(self.width - feats.shape[-1], dtype=self.dtype)(c.astype(self.dtype)), 0.2)
        h0 = jnp.concatenate([feats, _tile(t, hh, ww)], axis=-1)
        h = h0
        for _ in range(self.num_res):
            h = _ResBlock(self.norm, self.dtype)(h)
        h = nn.Conv(4 * self.width, (3, 3), padding="SAME", dtype=self.dtype, kernel_init=icnr_init())(h + h0)
        return nn.leaky_relu(_pixel_shuffle(h, 2), 0.2)


def _to_img(h, dtype):
    return jnp.tanh(nn.Conv(1, (1, 1), dtype=dtype, name="to_img")(h)).astype(jnp.float32)


class BaseGenerator(nn.Module):
    """Stage 0: c (B, cond_dim) [+ z (B, noise_dim)] -> (B, 32, 32, 1) in [-1, 1]."""

    width: int = 512
    noise_dim: int = 0
    norm: str = "layer"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, c, z=None):
        h = _BaseTrunk(self.width, self.noise_dim, self.norm, self.dtype, name="trunk")(c, z)
        return _to_img(h, self.dtype)


class ProgressiveGenerator(nn.Module):
    """Stage n >= 1: (x_prev (B,H,W,1), c) -> blend(G_n(x_prev, c), U(x_prev), a), shape (B,2H,2W,1).

    Conditioning: Dense(c) tiled over space and concatenated to the image features (official PDecoder).
    """

    width: int = 128
    num_res: int = 4
    a: float = 0.5
    norm: str = "layer"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_prev, c):
        f = nn.leaky_relu(_conv(self.width // 2, self.dtype, name="encode")(x_prev.astype(self.dtype)), 0.2)
        h = _StageTrunk(self.width, self.num_res, self.norm, self.dtype, name="trunk")(f, c)
        return blend(_to_img(h, self.dtype), upsample2x(x_prev.astype(jnp.float32)), self.a)


class MultiScaleGenerator(nn.Module):
    """One view's cascade: base (32 px) + num_stages progressive stages (up to 32 * 2**num_stages).

    `__call__(c, z=None, stage=k)` runs stages 0..k only and returns [x_32, ..., x_{32*2**k}].
    `stage=None` means all stages; initialise with it so every stage's parameters exist.
    """

    base_width: int = 512
    stage_width: int = 128
    num_stages: int = 3
    num_res: int = 4
    noise_dim: int = 0
    a: float = 0.5
    norm: str = "layer"
    dtype: Dtype = jnp.float32

    def setup(self):
        self.base = BaseGenerator(self.base_width, self.noise_dim, self.norm, self.dtype)
        self.stages = [
            ProgressiveGenerator(self.stage_width, self.num_res, self.a, self.norm, self.dtype)
            for _ in range(self.num_stages)
        ]

    def __call__(self, c, z=None, stage: Optional[int] = None):
        stage = self.num_stages if stage is None else stage
        if not 0 <= stage <= self.num_stages:
            raise ValueError(f"stage must be in [0, {self.num_stages}], got {stage}")
        images = [self.base(c, z)]
        for n in range(stage):
            images.append(self.stages[n](images[-1], c))
        return images


class XRayGANGenerator(nn.Module):
    """Two cascades, G_f and G_l, sharing the report condition c (and z if any).

    Returns {"frontal": [images per stage], "lateral": [images per stage]}.
    """

    base_width: int = 512
    stage_width: int = 128
    num_stages: int = 3
    num_res: int = 4
    noise_dim: int = 0
    a: float = 0.5
    norm: str = "layer"
    dtype: Dtype = jnp.float32

    def setup(self):
        kw = dict(base_width=self.base_width, stage_width=self.stage_width, num_stages=self.num_stages,
                  num_res=self.num_res, noise_dim=self.noise_dim, a=self.a, norm=self.norm, dtype=self.dtype)
        self.frontal = MultiScaleGenerator(**kw)
        self.lateral = MultiScaleGenerator(**kw)

    def __call__(self, c, z=None, stage: Optional[int] = None):
        return {"frontal": self.frontal(c, z, stage), "lateral": self.lateral(c, z, stage)}


class OneShotGenerator(nn.Module):
    """Ablation 'w/o MSCGAN': c -> resolution px in one pass, returning only the final image.

    Same blocks as the cascade (base trunk to 32 px, then one stage trunk per doubling) minus the
    intermediate to-image/re-encode and blends, so depth and parameter count match the cascade at
    that resolution. Stage-wise losses apply only at the final resolution.
    """

    base_width: int = 512
    stage_width: int = 128
    resolution: int = 256
    num_res: int = 4
    noise_dim: int = 0
    norm: str = "layer"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, c, z=None):
        doublings = math.log2(self.resolution / 32)
        if doublings < 0 or doublings != int(doublings):
            raise ValueError(f"resolution must be 32 * 2**k, got {self.resolution}")
        h = _BaseTrunk(self.base_width, self.noise_dim, self.norm, self.dtype, name="trunk")(c, z)
        for n in range(int(doublings)):
            h = nn.leaky_relu(_conv(self.stage_width // 2, self.dtype, name=f"bridge_{n}")(h), 0.2)
            h = _StageTrunk(self.stage_width, self.num_res, self.norm, self.dtype, name=f"stage_{n}")(h, c)
        return _to_img(h, self.dtype)


class PatchDiscriminator(nn.Module):
    """(image (B,H,W,1), c) -> patch logits (B, 4, 4) for any H = W = 2**k >= 8.

    conv3x3 + LeakyReLU, then stride-2 blocks (channels doubling to max_width) down to 4x4. The text
    projection LeakyReLU(Dense(c)) is tiled and concatenated unnormalised; a joint conv mixes it in;
    logits = Dense(h) + <embed(c), h> per patch. No batch norm (WGAN-GP); 'layer' or 'none' norm.
    """

    width: int = 64
    max_width: int = 512
    text_dim: int = 128
    norm: str = "layer"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, c):
        h = nn.leaky_relu(_conv(self.width, self.dtype)(x.astype(self.dtype)), 0.2)
        ch = self.width
        while h.shape[1] > 4:
            ch = min(ch * 2, self.max_width)
            h = nn.leaky_relu(_Norm(self.norm, self.dtype)(_conv(ch, self.dtype, stride=2)(h)), 0.2)
        c = c.astype(self.dtype)
        t = nn.leaky_relu(nn.Dense(self.text_dim, dtype=self.dtype, name="text")(c), 0.2)
        h = jnp.concatenate([h, _tile(t, h.shape[1], h.shape[2])], axis=-1)
        h = nn.leaky_relu(_conv(ch, self.dtype, name="joint")(h), 0.2)
        out = nn.Dense(1, dtype=self.dtype, name="out")(h)[..., 0]
        proj = jnp.einsum("bhwc,bc->bhw", h, nn.Dense(ch, dtype=self.dtype, name="embed")(c))
        return (out + proj).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Networks:
    encoder: Any  # report -> condition vector (HAE or the flat ablation)
    generator: Any  # the two-view cascade, or {view: one-shot generator} (the MSCGAN ablation)
    critic: PatchDiscriminator  # one module; a parameter set per view and stage


def build_networks(config, vocab_size: int) -> Networks:
    x = config.xraygan
    if x.encoder not in ("hae", "flat") or x.generator not in ("cascade", "oneshot"):
        raise ValueError("xraygan.encoder must be hae|flat and xraygan.generator cascade|oneshot")
    enc_cls = HierarchicalReportEncoder if x.encoder == "hae" else FlatReportEncoder
    gen_kw = dict(base_width=x.base_width, stage_width=x.stage_width, num_res=x.num_res, noise_dim=x.noise_dim)
    if x.generator == "cascade":
        generator = XRayGANGenerator(num_stages=x.num_stages - 1, **gen_kw)
    else:
        generator = {v: OneShotGenerator(resolution=config.data.resolution, **gen_kw) for v in VIEWS}
    return Networks(enc_cls(vocab_size, x.embed_dim, x.hidden, out_dim=x.cond_dim), generator,
                    PatchDiscriminator(width=x.d_width, max_width=x.d_max_width))


def optimizer(x) -> optax.GradientTransformation:
    """Adam's scaling; the step applies the phase's learning rate itself."""
    return optax.scale_by_adam(b1=x.b1, b2=x.b2)
