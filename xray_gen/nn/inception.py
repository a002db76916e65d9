"""Inception-v3 as used for FID (the 2015-12-05 TensorFlow graph, as ported by pytorch-fid).

This is the network whose 2048-d pool3 features define the standard FID. It differs from the
torchvision / Keras ImageNet Inception-v3 in ways that change the numbers, all reproduced here:

- 1008 output classes (the TF graph's label space) instead of 1000;
- ``Mixed_5b/5c/5d`` (block A) and ``Mixed_6b..6e`` (block C): the pooling branch averages with
  ``count_include_pad=False`` (padding is not counted in the mean);
- ``Mixed_7b`` (block E_1): average pooling, also without counting the padding;
- ``Mixed_7c`` (block E_2): the pooling branch is a 3x3 *max* pool (stride 1, pad 1);
- every conv has no bias and is followed by BatchNorm with eps=1e-3 (inference mode here) + ReLU;
- no auxiliary head, no input transform (the ImageNet ``transform_input`` is off).

Inputs: NHWC float images in **[-1, 1]**, 3 channels, 299x299 (pytorch-fid resizes uint8/[0,1]
images to 299 bilinearly and maps [0,1] -> [-1,1] with ``2x - 1``; that happens in
``xray_gen.evaluation.features``, not here). Other sizes >= 75 px run but give non-standard FID.

Outputs: ``{"pool": (N, 2048) pool3 features, "logits": (N, 1008)}``; the logits feed the
Inception Score (softmax over all 1008 entries).

Module and parameter names mirror the PyTorch state dict so that weight import is mechanical:
``Mixed_6b.branch7x7_2.conv.weight`` <-> ``params/Mixed_6b/branch7x7_2/conv/kernel`` and
``...bn.running_mean`` <-> ``batch_stats/.../bn/mean`` (see ``xray_gen.evaluation.weights_import``).
"""

from __future__ import annotations

from typing import Tuple, Union

import flax.linen as nn
import jax.numpy as jnp

Size = Union[int, Tuple[int, int]]

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008
BN_EPS = 1e-3


def _pair(v: Size) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (running statistics, eps 1e-3) -> ReLU."""

    features: int
    kernel_size: Size
    strides: Size = 1
    padding: Size = 0

    @nn.compact
    def __call__(self, x):
        ph, pw = _pair(self.padding)
        x = nn.Conv(self.features, _pair(self.kernel_size), strides=_pair(self.strides),
                    padding=((ph, ph), (pw, pw)), use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, momentum=0.9, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3_s1_no_pad_count(x):
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                       count_include_pad=False)


def _max_pool_3x3_s2(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
    """FIDInceptionA (Mixed_5b/c/d): 1x1 | 5x5 | double 3x3 | avg-pool (no pad count) + 1x1."""

    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(64, 1, name="branch1x1")(x)
        b5 = BasicConv2d(48, 1, name="branch5x5_1")(x)
        b5 = BasicConv2d(64, 5, padding=2, name="branch5x5_2")(b5)
        b3 = BasicConv2d(64, 1, name="branch3x3dbl_1")(x)
        b3 = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(b3)
        b3 = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_3")(b3)
        bp = _avg_pool_3x3_s1_no_pad_count(x)
        bp = BasicConv2d(self.pool_features, 1, name="branch_pool")(bp)
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a (grid reduction 35 -> 17): 3x3/2 | double 3x3 (last /2) | max-pool/2."""

    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(384, 3, strides=2, name="branch3x3")(x)
        bd = BasicConv2d(64, 1, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = BasicConv2d(96, 3, strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
    """FIDInceptionC (Mixed_6b..e): factorised 7x7 branches; avg-pool without pad count."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = BasicConv2d(192, 1, name="branch1x1")(x)
        b7 = BasicConv2d(c7, 1, name="branch7x7_1")(x)
        b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv2d(c7, 1, name="branch7x7dbl_1")(x)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv2d(192, 1, name="branch_pool")(_avg_pool_3x3_s1_no_pad_count(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a (grid reduction 17 -> 8)."""

    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(192, 1, name="branch3x3_1")(x)
        b3 = BasicConv2d(320, 3, strides=2, name="branch3x3_2")(b3)
        b7 = BasicConv2d(192, 1, name="branch7x7x3_1")(x)
        b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv2d(192, 3, strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
    """FIDInceptionE_1 (``pool="avg"``, Mixed_7b) and FIDInceptionE_2 (``pool="max"``, Mixed_7c)."""

    pool: str  # "avg" (no pad count) or "max"

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(320, 1, name="branch1x1")(x)
        b3 = BasicConv2d(384, 1, name="branch3x3_1")(x)
        b3 = jnp.concatenate([
            BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
            BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
        ], axis=-1)
        bd = BasicConv2d(448, 1, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(384, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([
            BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
            BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
        ], axis=-1)
        if self.pool == "avg":
            p = _avg_pool_3x3_s1_no_pad_count(x)
        elif self.pool == "max":
            p = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            raise ValueError(f"InceptionE.pool must be 'avg' or 'max', got {self.pool!r}")
        bp = BasicConv2d(192, 1, name="branch_pool")(p)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """Inception-v3, FID variant. ``__call__(x)`` with x NHWC in [-1, 1] -> dict(pool, logits).

    Inference only: BatchNorm uses ``batch_stats`` (running statistics); there is no dropout.
    Variables: ``{"params": ..., "batch_stats": ...}``.
    """

    num_classes: int = NUM_CLASSES

    @nn.compact
    def __call__(self, x):
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"FIDInceptionV3 expects NHWC RGB images, got shape {x.shape}")
        x = x.astype(jnp.float32)
        x = BasicConv2d(32, 3, strides=2, name="Conv2d_1a_3x3")(x)   # 149
        x = BasicConv2d(32, 3, name="Conv2d_2a_3x3")(x)              # 147
        x = BasicConv2d(64, 3, padding=1, name="Conv2d_2b_3x3")(x)   # 147
        x = _max_pool_3x3_s2(x)                                      # 73
        x = BasicConv2d(80, 1, name="Conv2d_3b_1x1")(x)              # 73
        x = BasicConv2d(192, 3, name="Conv2d_4a_3x3")(x)             # 71
        x = _max_pool_3x3_s2(x)                                      # 35
        x = InceptionA(32, name="Mixed_5b")(x)                       # 35x35x256
        x = InceptionA(64, name="Mixed_5c")(x)                       # 288
        x = InceptionA(64, name="Mixed_5d")(x)                       # 288
        x = InceptionB(name="Mixed_6a")(x)                           # 17x17x768
        x = InceptionC(128, name="Mixed_6b")(x)
        x = InceptionC(160, name="Mixed_6c")(x)
        x = InceptionC(160, name="Mixed_6d")(x)
        x = InceptionC(192, name="Mixed_6e")(x)
        x = InceptionD(name="Mixed_7a")(x)                           # 8x8x1280
        x = InceptionE("avg", name="Mixed_7b")(x)                    # 2048
        x = InceptionE("max", name="Mixed_7c")(x)                    # 2048
        pool = jnp.mean(x, axis=(1, 2))                              # pool3, (N, 2048)
        logits = nn.Dense(self.num_classes, name="fc")(pool)
        return {"pool": pool, "logits": logits}
