"""DenseNet (Huang et al. 2017) in Flax linen, greyscale-ready.

DenseNet-121 is the PGGAN paper's multi-label CXR classifier; its penultimate (global-pooled)
features are the project's in-domain feature extractor for FID.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

# Its last dense block at 64 px convolves 2x2 maps with 3x3 kernels: matmuls on the CPU (xray_gen/nn/conv.py).
from xray_gen.nn.conv import Conv

DENSENET121_BLOCKS = (6, 12, 24, 16)


class _DenseLayer(nn.Module):
    growth_rate: int
    bn_size: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x, train: bool):
        norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype, name=name)
        y = nn.relu(norm("norm1")(x))
        y = Conv(self.bn_size * self.growth_rate, (1, 1), use_bias=False, dtype=self.dtype, name="conv1")(y)
        y = nn.relu(norm("norm2")(y))
        y = Conv(self.growth_rate, (3, 3), padding=1, use_bias=False, dtype=self.dtype, name="conv2")(y)
        return jnp.concatenate([x, y], axis=-1)


class DenseNet(nn.Module):
    """Returns (logits, features). `features` is the pooled penultimate representation."""

    num_classes: int
    block_sizes: Sequence[int] = DENSENET121_BLOCKS
    growth_rate: int = 32
    init_features: int = 64
    bn_size: int = 4
    compression: float = 0.5
    small_input: bool = False  # 3x3 stem without max-pool, for inputs of 64 px and below
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype, name=name)
        x = x.astype(self.dtype)
        if self.small_input:
            x = Conv(self.init_features, (3, 3), padding=1, use_bias=False, dtype=self.dtype, name="conv0")(x)
        else:
            x = Conv(self.init_features, (7, 7), strides=2, padding=3, use_bias=False, dtype=self.dtype, name="conv0")(x)
        x = nn.relu(norm("norm0")(x))
        if not self.small_input:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        channels = self.init_features
        for b, n_layers in enumerate(self.block_sizes):
            for i in range(n_layers):
                x = _DenseLayer(self.growth_rate, self.bn_size, self.dtype, name=f"block{b}_layer{i}")(x, train)
            channels += n_layers * self.growth_rate
            if b != len(self.block_sizes) - 1:
                channels = int(channels * self.compression)
                x = nn.relu(norm(f"transition{b}_norm")(x))
                x = Conv(channels, (1, 1), use_bias=False, dtype=self.dtype, name=f"transition{b}_conv")(x)
                x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(norm("norm_final")(x))
        features = jnp.mean(x, axis=(1, 2)).astype(jnp.float32)
        logits = nn.Dense(self.num_classes, dtype=jnp.float32, name="classifier")(features)
        return logits, features
