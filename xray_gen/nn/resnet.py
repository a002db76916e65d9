"""ResNet (He et al. 2016) in Flax linen with a configurable input-channel stem.

XRayGAN's view-consistency network is a siamese ResNet-18 with a 1-channel stem; inputs of any
resolution work because the head pools globally.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

# The last stages of a ResNet-18 at 32-64 px convolve 2x2 and 1x1 maps with 3x3 kernels: this Conv
# runs those as matmuls on the CPU, where XLA's convolution was 10-50x slower (xray_gen/nn/conv.py).
from xray_gen.nn.conv import Conv

RESNET18_STAGES = (2, 2, 2, 2)


class BasicBlock(nn.Module):
    features: int
    strides: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x, train: bool):
        norm = lambda name, **kw: nn.BatchNorm(
            use_running_average=not train, momentum=0.9, dtype=self.dtype, name=name, **kw
        )
        y = Conv(self.features, (3, 3), self.strides, padding=1, use_bias=False, dtype=self.dtype, name="conv1")(x)
        y = nn.relu(norm("bn1")(y))
        y = Conv(self.features, (3, 3), padding=1, use_bias=False, dtype=self.dtype, name="conv2")(y)
        # Zero-initialised last BN scale: each block starts as the identity (Goyal et al. 2017).
        y = norm("bn2", scale_init=nn.initializers.zeros)(y)
        if x.shape[-1] != self.features or self.strides != 1:
            x = Conv(self.features, (1, 1), self.strides, use_bias=False, dtype=self.dtype, name="down_conv")(x)
            x = norm("down_bn")(x)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """Returns pooled features of width `widths[-1]` (512 for ResNet-18)."""

    stage_sizes: Sequence[int] = RESNET18_STAGES
    widths: Sequence[int] = (64, 128, 256, 512)
    small_input: bool = False  # 3x3 stride-1 stem without max-pool, for inputs of 64 px and below
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.astype(self.dtype)
        if self.small_input:
            x = Conv(self.widths[0], (3, 3), padding=1, use_bias=False, dtype=self.dtype, name="stem_conv")(x)
        else:
            x = Conv(self.widths[0], (7, 7), 2, padding=3, use_bias=False, dtype=self.dtype, name="stem_conv")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype, name="stem_bn")(x))
        if not self.small_input:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for s, (n_blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
            for b in range(n_blocks):
                strides = 2 if (s > 0 and b == 0) else 1
                x = BasicBlock(width, strides, self.dtype, name=f"stage{s}_block{b}")(x, train)
        return jnp.mean(x, axis=(1, 2)).astype(jnp.float32)
