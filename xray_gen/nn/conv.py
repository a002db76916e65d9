"""Convolutions as patch extraction + one matmul (im2col) where XLA:CPU's own convolution is slow:
strided ones under a gradient penalty, and kernels larger than their output.

Why: a WGAN-GP critic differentiates its strided convolutions twice. XLA:CPU lowers the second
derivative with respect to the kernel to a convolution with a dilated kernel, which it runs on a
generic slow path: at XRayGAN's 32 px stage (batch 96) three such convolutions per view took
1.2-2.6 s each, half of the whole training step. Written as strided slices (whose derivatives are
pads) and a dot (whose derivatives are dots), every derivative of any order is a plain matmul:
the same gradient penalty runs 5-10x faster, first-order steps about as fast as before.

Second slow path: a kernel larger than its output (a 3x3 convolution of a 2x2 or 1x1 map, the last
stages of a ResNet-18 at 32 px; a 4x4 critic head). XLA:CPU ran those 10-80x slower than the same
matmul (batch 192, 2x2, 512 -> 512 channels: 1.6 s forward instead of 20 ms); here taps that only
ever read padding are dropped as well (a 3x3 kernel over a 1x1 map is one matmul).

`im2col_conv_general_dilated` has `lax.conv_general_dilated`'s signature, so it plugs into
`flax.linen.Conv(conv_general_dilated=...)`. It takes the matmul path for 2-D NHWC/HWIO
convolutions with a stride > 1 or an output smaller than the kernel, no dilation and no feature
groups, on the CPU backend (where the slow paths are; GPUs keep their convolution libraries);
everything else goes to `lax.conv_general_dilated` unchanged. Both paths compute the same function.
`small_output_conv_general_dilated` takes it for the second case only: networks without a gradient
penalty (ResNet, DenseNet, PGGAN), where XLA's strided convolutions are about as fast.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

NHWC_HWIO = ("NHWC", "HWIO", "NHWC")


def _is_nhwc_hwio(dimension_numbers, lhs_shape, rhs_shape) -> bool:
    if dimension_numbers is None:  # lax's default is NCHW/OIHW
        return False
    expected = lax.conv_dimension_numbers(lhs_shape, rhs_shape, NHWC_HWIO)
    given = dimension_numbers if isinstance(dimension_numbers, lax.ConvDimensionNumbers) else \
        lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
    return tuple(given) == tuple(expected)


def _pads(hw, kernel_hw, strides, padding):
    pads = lax.padtype_to_pads(hw, kernel_hw, strides, padding) if isinstance(padding, str) else padding
    return [(int(lo), int(hi)) for lo, hi in pads]


def _output_size(size: int, kernel: int, stride: int, pad: tuple[int, int]) -> int:
    return (size + pad[0] + pad[1] - kernel) // stride + 1


def uses_im2col(lhs_shape, rhs_shape, window_strides, lhs_dilation=None, rhs_dilation=None,
                dimension_numbers=None, feature_group_count: int = 1, batch_group_count: int = 1,
                backend: str | None = None, padding: Any = "VALID", strided: bool = True) -> bool:
    """Whether `im2col_conv_general_dilated` takes the matmul path for this convolution (with
    `strided=False`: only for an output smaller than the kernel)."""
    ones = lambda d: d is None or all(int(v) == 1 for v in d)
    if not (len(lhs_shape) == 4 and ones(lhs_dilation) and ones(rhs_dilation)
            and feature_group_count == 1 and batch_group_count == 1
            and (backend or jax.default_backend()) == "cpu"
            and _is_nhwc_hwio(dimension_numbers, lhs_shape, rhs_shape)):
        return False
    strides = tuple(int(s) for s in window_strides)
    if strided and any(s > 1 for s in strides):
        return True
    kernel_hw, hw = tuple(rhs_shape[:2]), tuple(lhs_shape[1:3])
    pads = _pads(hw, kernel_hw, strides, padding)
    return any(_output_size(n, k, s, p) < k for n, k, s, p in zip(hw, kernel_hw, strides, pads))


def _live_taps(size: int, kernel: int, stride: int, pad: tuple[int, int], out: int) -> range:
    """Kernel offsets along one axis that read at least one input element (not only padding);
    always a contiguous range."""
    live = [i for i in range(kernel) if any(pad[0] <= i + stride * t < pad[0] + size for t in range(out))]
    return range(live[0], live[-1] + 1) if live else range(0)


def im2col_conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding: Any,
                precision=None, preferred_element_type=None) -> jax.Array:
    """NHWC x HWIO convolution as strided slices (one per kernel tap) concatenated on channels,
    then one dot. Taps that read only padding contribute zeros and are left out, with their
    kernel rows.

    The patch layout (tap row, tap column, input channel) is the kernel's own row-major order, so
    the kernel is used as a (taps*C_in, C_out) matrix without a transpose.
    """
    b, h, w, c = x.shape
    kh, kw, kc, out = kernel.shape
    if kc != c:
        raise ValueError(f"kernel expects {kc} input channels, input has {c}")
    sh, sw = (int(s) for s in strides)
    pads = _pads((h, w), (kh, kw), (sh, sw), padding)
    (pt, pb), (pl, pr) = pads
    ho, wo = _output_size(h, kh, sh, pads[0]), _output_size(w, kw, sw, pads[1])
    if ho < 1 or wo < 1:
        raise ValueError(f"convolution of a {h}x{w} input with a {kh}x{kw} kernel and padding {pads} is empty")
    rows, cols = _live_taps(h, kh, sh, pads[0], ho), _live_taps(w, kw, sw, pads[1], wo)
    if not rows or not cols:  # every tap reads padding only
        return jnp.zeros((b, ho, wo, out), preferred_element_type or jnp.result_type(x, kernel))
    xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)))
    taps = [lax.slice(xp, (0, i, j, 0), (b, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c), (1, sh, sw, 1))
            for i in rows for j in cols]
    patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
    matrix = kernel[rows.start:rows.stop, cols.start:cols.stop].reshape(len(rows) * len(cols) * c, out)
    return lax.dot_general(patches, matrix, (((3,), (0,)), ((), ())),
                           precision=precision, preferred_element_type=preferred_element_type)


def im2col_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                                dimension_numbers=None, feature_group_count: int = 1,
                                batch_group_count: int = 1, precision=None, preferred_element_type=None,
                                strided: bool = True):
    """Drop-in for `lax.conv_general_dilated`: the matmul path where `uses_im2col`, else lax's."""
    if uses_im2col(lhs.shape, rhs.shape, window_strides, lhs_dilation, rhs_dilation, dimension_numbers,
                   feature_group_count, batch_group_count, padding=padding, strided=strided):
        return im2col_conv(lhs, rhs, window_strides, padding, precision, preferred_element_type)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                    rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                    feature_group_count=feature_group_count,
                                    batch_group_count=batch_group_count, precision=precision,
                                    preferred_element_type=preferred_element_type)


small_output_conv_general_dilated = partial(im2col_conv_general_dilated, strided=False)
# flax's Conv with the small-output matmul path: for ResNet/DenseNet stages that reach 2x2 and 1x1 maps.
Conv = partial(nn.Conv, conv_general_dilated=small_output_conv_general_dilated)
