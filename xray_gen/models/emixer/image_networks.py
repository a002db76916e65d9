"""EMIXER image networks (paper §3.2.1 and supplement tables 7-8), BigGAN-style (DESIGN.md §6).

* `Generator` G(z, y): z split into equal chunks (one for the input linear layer, one per up-block),
  the multi-hot label vector embedded by one shared bias-free linear layer, residual up-blocks with
  conditional batch norm (gain 1 + Linear(cond), bias Linear(cond), cond = [y_emb, z_i]), a
  non-local self-attention block at `attention_resolution`, then BN-ReLU-conv3x3-tanh.
* `Discriminator` D(x, y): residual down-blocks, ReLU, global *sum* pooling -> h, then
  score = linear(h) + has_label * <W y, h> (projection; multi-hot y needs a linear embedding, not a
  lookup) and a rotation head linear(h) -> 4 logits (SSGAN).

Spectral normalisation (`SNDense`, `SNConv`) is on every G and D layer except G's shared label
embedding (as in BigGAN). Its power-iteration vectors `u` live in the `SPECTRAL_STATS` collection:
pass `train=True` with `mutable=[SPECTRAL_STATS]` (plus "batch_stats" for G) to advance them; with
`train=False` they are read only, so evaluation is deterministic. G's batch norm uses batch
statistics when `train=True` and its running averages otherwise.

Widths: `ch` times per-resolution channel multipliers (BigGAN: ch=64, G (16,16,8,4,2,1) and D
(1,2,4,8,16,16) at 128 px); both are attributes so a CPU variant can be tiny.
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from xray_gen.nn.attention import multi_head_attention

SPECTRAL_STATS = "spectral_stats"
NUM_ROTATIONS = 4

#: Channel multipliers (input of the first block, then each block's output), BigGAN's arch tables.
G_MULTIPLIERS = {128: (16, 16, 8, 4, 2, 1), 64: (16, 16, 8, 4, 2), 32: (4, 4, 4, 4)}
#: D block output multipliers and which blocks average-pool (BigGAN: 128/64 end at 4x4, 32 at 8x8).
D_MULTIPLIERS = {128: (1, 2, 4, 8, 16, 16), 64: (1, 2, 4, 8, 16), 32: (4, 4, 4, 4)}
D_DOWNSAMPLE = {128: (True,) * 5 + (False,), 64: (True,) * 4 + (False,), 32: (True, True, False, False)}

_INIT = nn.initializers.orthogonal()  # BigGAN's default ('ortho') initialisation


def _l2_normalize(x, eps):
    return x * jax.lax.rsqrt(jnp.sum(jnp.square(x)) + eps)


def spectral_normalize(kernel, u, n_steps: int = 1, eps: float = 1e-12):
    """(kernel / sigma, u_new, sigma): sigma estimates the top singular value of the kernel.

    The kernel is viewed as a (fan_in, out) matrix W (conv kernels (k, k, in, out) flattened over
    their leading axes); `u` (out,) is the running right singular vector. Each power-iteration step
    is v = W u / |W u|, u = W^T v / |W^T v|; sigma = v^T W u with u, v held constant for the
    gradient (Miyato et al. 2018), so d sigma / d W = v u^T.
    """
    w = kernel.reshape(-1, kernel.shape[-1]).astype(jnp.float32)
    u = u.astype(jnp.float32)
    v = None
    for _ in range(max(n_steps, 1)):
        v = _l2_normalize(w @ u, eps)
        u = _l2_normalize(w.T @ v, eps)
    u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
    sigma = v @ w @ u
    return (kernel / jnp.maximum(sigma, eps)).astype(kernel.dtype), u, sigma


class _SpectralKernel(nn.Module):
    """Shared logic: the `u` vector in SPECTRAL_STATS, advanced only when `update` is true."""

    def normalized(self, kernel, update: bool, enabled: bool, n_steps: int):
        if not enabled:
            return kernel
        out = kernel.shape[-1]
        u_var = self.variable(
            SPECTRAL_STATS, "u",
            lambda: _l2_normalize(jax.random.normal(self.make_rng("params"), (out,)), 1e-12),
        )
        w, u, _ = spectral_normalize(kernel, u_var.value, n_steps)
        if update and not self.is_initializing():
            u_var.value = u
        return w


class SNDense(_SpectralKernel):
    """Dense layer with a spectrally normalised kernel (bias untouched); `x @ W/sigma + b`."""

    features: int
    use_bias: bool = True
    spectral_norm: bool = True
    n_steps: int = 1
    kernel_init: nn.initializers.Initializer = _INIT

    @nn.compact
    def __call__(self, x, update_stats: bool = False):
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
        kernel = self.normalized(kernel, update_stats, self.spectral_norm, self.n_steps)
        y = x @ kernel
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y


class SNConv(_SpectralKernel):
    """Stride-1 'SAME' NHWC convolution with a spectrally normalised kernel."""

    features: int
    kernel_size: int = 3
    use_bias: bool = True
    spectral_norm: bool = True
    n_steps: int = 1
    kernel_init: nn.initializers.Initializer = _INIT

    @nn.compact
    def __call__(self, x, update_stats: bool = False):
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features))
        kernel = self.normalized(kernel, update_stats, self.spectral_norm, self.n_steps)
        y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y


def upsample_nearest(x):
    """2x nearest-neighbour upsampling, NHWC (BigGAN's G blocks)."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def avg_pool2(x):
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class ConditionalBatchNorm(nn.Module):
    """BN without its own affine, then x_hat * (1 + Linear(cond)) + Linear(cond), both bias-free.

    With a zero condition the gain is exactly 1 and the bias 0 (plain normalisation), so a
    condition can only modulate. Running statistics follow flax's BatchNorm (`train` = batch
    statistics, updated in "batch_stats"; otherwise the running averages).
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    spectral_norm: bool = True

    @nn.compact
    def __call__(self, x, cond, train: bool = False):
        c = x.shape[-1]
        x = nn.BatchNorm(use_running_average=not train, momentum=self.momentum, epsilon=self.epsilon,
                         use_scale=False, use_bias=False, name="bn")(x)
        gain = 1.0 + SNDense(c, use_bias=False, spectral_norm=self.spectral_norm, name="gain")(cond, train)
        bias = SNDense(c, use_bias=False, spectral_norm=self.spectral_norm, name="bias")(cond, train)
        return x * gain[:, None, None, :] + bias[:, None, None, :]


class SelfAttention(nn.Module):
    """SAGAN/BigGAN non-local block: x + gamma * o, gamma initialised to 0 (identity at init).

    theta: 1x1 conv to C/8; phi: 1x1 conv to C/8 then 2x2 max-pool; g: 1x1 conv to C/2 then max-pool;
    attention softmax over the pooled positions; o: 1x1 conv back to C.
    """

    spectral_norm: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        b, h, w, c = x.shape
        conv = lambda f, name: SNConv(f, 1, use_bias=False, spectral_norm=self.spectral_norm, name=name)
        ck, cv = max(c // 8, 1), max(c // 2, 1)
        theta = conv(ck, "theta")(x, train).reshape(b, h * w, ck)
        pool = (lambda t: nn.max_pool(t, (2, 2), strides=(2, 2))) if h % 2 == 0 and w % 2 == 0 else (lambda t: t)
        phi = pool(conv(ck, "phi")(x, train))
        g = pool(conv(cv, "g")(x, train))
        phi, g = phi.reshape(b, -1, ck), g.reshape(b, -1, cv)
        one_head = lambda t: t[:, :, None, :]  # unscaled logits, as SAGAN
        y = multi_head_attention(one_head(theta), one_head(phi), one_head(g), scale=1.0)[:, :, 0]
        o = conv(c, "o")(y.reshape(b, h, w, cv), train)
        gamma = self.param("gamma", nn.initializers.zeros, ())
        return x + gamma * o


class GBlock(nn.Module):
    """Table 7: cBN-ReLU-up-conv3x3-cBN-ReLU-conv3x3, plus a 1x1-conv shortcut of the upsampled input."""

    features: int
    spectral_norm: bool = True
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x, cond, train: bool = False):
        cbn = lambda name: ConditionalBatchNorm(self.bn_momentum, self.bn_epsilon, self.spectral_norm, name=name)
        conv = lambda k, name: SNConv(self.features, k, spectral_norm=self.spectral_norm, name=name)
        h = upsample_nearest(nn.relu(cbn("bn1")(x, cond, train)))
        h = conv(3, "conv1")(h, train)
        h = conv(3, "conv2")(nn.relu(cbn("bn2")(h, cond, train)), train)
        return h + conv(1, "shortcut")(upsample_nearest(x), train)


class Generator(nn.Module):
    """G(z, y, train) -> images (B, R, R, out_channels) in [-1, 1].

    z (B, z_dim) is split into len(multipliers) equal chunks: the first feeds the input linear layer
    (to bottom_width^2 * ch * multipliers[0]), chunk i+1 conditions up-block i together with the
    shared label embedding. z_dim must be divisible by the number of chunks (120 / 6 = 20 at 128 px).
    y (B, num_labels) multi-hot float (uncertain labels may be fractional).
    """

    resolution: int = 128
    ch: int = 64
    channel_multipliers: Optional[Sequence[int]] = None  # default G_MULTIPLIERS[resolution]
    z_dim: int = 120
    num_labels: int = 14
    label_embed_dim: int = 128
    attention_resolution: Optional[int] = 64  # None: no self-attention
    out_channels: int = 1
    bottom_width: int = 4
    spectral_norm: bool = True
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    def multipliers(self) -> tuple[int, ...]:
        mult = self.channel_multipliers
        if mult is None:
            if self.resolution not in G_MULTIPLIERS:
                raise ValueError(f"Generator.resolution={self.resolution} has no default channel_multipliers "
                                 f"(known: {sorted(G_MULTIPLIERS)}); pass channel_multipliers")
            mult = G_MULTIPLIERS[self.resolution]
        mult = tuple(int(m) for m in mult)
        if len(mult) < 2 or self.bottom_width * 2 ** (len(mult) - 1) != self.resolution:
            raise ValueError(f"Generator: {len(mult) - 1} up-blocks from bottom_width={self.bottom_width} give "
                             f"{self.bottom_width * 2 ** (len(mult) - 1)} px, not resolution={self.resolution}")
        return mult

    @property
    def z_chunk(self) -> int:
        slots = len(self.multipliers())
        if self.z_dim % slots:
            raise ValueError(f"Generator.z_dim={self.z_dim} is not divisible into {slots} chunks "
                             f"(one per up-block + the input)")
        return self.z_dim // slots

    @nn.compact
    def __call__(self, z, y, train: bool = False):
        mult = self.multipliers()
        _ = self.z_chunk  # raises unless z_dim splits into one chunk per block + the input
        if z.shape[-1] != self.z_dim or y.shape[-1] != self.num_labels or z.shape[0] != y.shape[0]:
            raise ValueError(f"Generator expects z (B, z_dim={self.z_dim}) and y (B, num_labels={self.num_labels}), "
                             f"got {z.shape} and {y.shape}")
        res = [self.bottom_width * 2 ** (i + 1) for i in range(len(mult) - 1)]
        if self.attention_resolution is not None and self.attention_resolution not in res:
            raise ValueError(f"Generator.attention_resolution={self.attention_resolution} is not a block "
                             f"output resolution {res} (use None for no attention)")
        zs = jnp.split(z.astype(jnp.float32), len(mult), axis=-1)
        y_emb = nn.Dense(self.label_embed_dim, use_bias=False, name="shared")(y.astype(jnp.float32))
        bw, sn = self.bottom_width, self.spectral_norm
        h = SNDense(bw * bw * self.ch * mult[0], spectral_norm=sn, name="linear")(zs[0], train)
        h = h.reshape(z.shape[0], bw, bw, self.ch * mult[0])
        for i, m in enumerate(mult[1:]):
            cond = jnp.concatenate([y_emb, zs[i + 1]], axis=-1)
            h = GBlock(self.ch * m, sn, self.bn_momentum, self.bn_epsilon, name=f"block{i}")(h, cond, train)
            if res[i] == self.attention_resolution:
                h = SelfAttention(sn, name="attention")(h, train)
        h = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                         name="out_bn")(h)
        h = SNConv(self.out_channels, 3, spectral_norm=sn, name="out_conv")(nn.relu(h), train)
        return jnp.tanh(h)


class DBlock(nn.Module):
    """Table 8: [ReLU]-conv3x3-ReLU-conv3x3-[avg-pool], plus a 1x1-conv shortcut (BigGAN DBlock).

    The first block has no pre-activation (its input is the image) and pools before its shortcut conv.
    """

    features: int
    downsample: bool = True
    preactivation: bool = True
    spectral_norm: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = lambda k, name: SNConv(self.features, k, spectral_norm=self.spectral_norm, name=name)
        pool = avg_pool2 if self.downsample else (lambda t: t)
        h = nn.relu(x) if self.preactivation else x
        h = conv(3, "conv2")(nn.relu(conv(3, "conv1")(h, train)), train)
        h = pool(h)
        learnable = self.downsample or x.shape[-1] != self.features
        if not learnable:
            return h + x
        sc = pool(conv(1, "shortcut")(x, train)) if self.preactivation else conv(1, "shortcut")(pool(x), train)
        return h + sc


@flax.struct.dataclass
class DiscriminatorOutput:
    """score (B,) = unconditional + projection; projection (B,) alone; rotation_logits (B, 4); features h (B, C)."""

    score: jax.Array
    projection: jax.Array
    rotation_logits: jax.Array
    features: jax.Array


def down_stack(x, ch, multipliers, downsample, attention_resolution, spectral_norm, train, prefix="block"):
    """Residual down-blocks (+ optional self-attention after the block reaching that size) -> ReLU -> sum pool.

    Must be called inside a compact method (the blocks are created in the caller's scope).
    """
    res = x.shape[1]
    for i, (m, down) in enumerate(zip(multipliers, downsample)):
        x = DBlock(ch * m, down, preactivation=i > 0, spectral_norm=spectral_norm, name=f"{prefix}{i}")(x, train)
        res = res // 2 if down else res
        if res == attention_resolution:
            x = SelfAttention(spectral_norm, name=f"{prefix}_attention")(x, train)
            attention_resolution = None  # once
    return jnp.sum(nn.relu(x), axis=(1, 2))


def d_architecture(resolution, multipliers, downsample, owner):
    """(multipliers, downsample) for a D trunk: BigGAN's tables by input resolution unless given."""
    if multipliers is None:
        if resolution not in D_MULTIPLIERS:
            raise ValueError(f"{owner}: input resolution {resolution} has no default channel_multipliers "
                             f"(known: {sorted(D_MULTIPLIERS)}); pass channel_multipliers")
        multipliers, downsample = D_MULTIPLIERS[resolution], downsample or D_DOWNSAMPLE[resolution]
    multipliers = tuple(int(m) for m in multipliers)
    if downsample is None:
        downsample = (True,) * (len(multipliers) - 1) + (False,)
    downsample = tuple(bool(d) for d in downsample)
    if len(downsample) != len(multipliers):
        raise ValueError(f"{owner}: downsample {downsample} and channel_multipliers {multipliers} differ in length")
    if resolution % 2 ** sum(downsample):
        raise ValueError(f"{owner}: {sum(downsample)} downsamplings do not divide input resolution {resolution}")
    return multipliers, downsample


class Discriminator(nn.Module):
    """D(x, y, has_label, train) -> DiscriminatorOutput.

    score = linear(h) + has_label * <embed(y), h> with embed a bias-free linear layer (labels ->
    C): unlabeled rows (has_label 0, or y None) get only the unconditional term, so they still train
    D's realism and rotation heads in the few-label setting (pass has_label 0 for rotated copies
    too: SSGAN's GAN loss sees unrotated images only). Architecture defaults follow the input
    resolution (BigGAN tables); `attention_resolution` counts after pooling (64: after the first
    block of a 128-px D).
    """

    ch: int = 64
    channel_multipliers: Optional[Sequence[int]] = None
    downsample: Optional[Sequence[bool]] = None
    num_labels: int = 14
    attention_resolution: Optional[int] = 64
    spectral_norm: bool = True

    @nn.compact
    def __call__(self, x, y=None, has_label=None, train: bool = False) -> DiscriminatorOutput:
        mult, down = d_architecture(x.shape[1], self.channel_multipliers, self.downsample, "Discriminator")
        h = down_stack(x.astype(jnp.float32), self.ch, mult, down, self.attention_resolution, self.spectral_norm, train)
        sn = self.spectral_norm
        uncond = SNDense(1, spectral_norm=sn, name="linear")(h, train)[:, 0]
        embed = SNDense(h.shape[-1], use_bias=False, spectral_norm=sn, name="embed")
        if y is None:
            y = jnp.zeros((x.shape[0], self.num_labels), jnp.float32)
            has_label = jnp.zeros((x.shape[0],), jnp.float32)
        if y.shape != (x.shape[0], self.num_labels):
            raise ValueError(f"Discriminator expects y of shape ({x.shape[0]}, {self.num_labels}), got {y.shape}")
        projection = jnp.sum(embed(y.astype(jnp.float32), train) * h, axis=-1)
        if has_label is not None:
            projection = projection * jnp.asarray(has_label, jnp.float32).reshape(-1)
        rotation = SNDense(NUM_ROTATIONS, spectral_norm=sn, name="rotation")(h, train)
        return DiscriminatorOutput(score=uncond + projection, projection=projection, rotation_logits=rotation,
                                   features=h)
