"""Strided convolutions as patch extraction + one matmul (im2col), for critics trained with a
gradient penalty on XLA:CPU.

Why: a WGAN-GP critic differentiates its strided convolutions twice. XLA:CPU lowers the second
derivative with respect to the kernel to a convolution with a dilated kernel, which it runs on a
generic slow path: at XRayGAN's 32 px stage (batch 96) three such convolutions per view took
1.2-2.6 s each, half of the whole training step. Written as strided slices (whose derivatives are
pads) and a dot (whose derivatives are dots), every derivative of any order is a plain matmul:
the same gradient penalty runs 5-10x faster, first-order steps about as fast as before.

`im2col_conv_general_dilated` has `lax.conv_general_dilated`'s signature, so it plugs into
`flax.linen.Conv(conv_general_dilated=...)`. It takes the matmul path for 2-D NHWC/HWIO
convolutions with a stride > 1, no dilation and no feature groups, on the CPU backend (where the
slow path is; GPUs keep their convolution libraries); everything else goes to
`lax.conv_general_dilated` unchanged. Both paths compute the same function.
"""
from __future__ import annotations

from typing import Any, Sequence

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


def uses_im2col(lhs_shape, rhs_shape, window_strides, lhs_dilation=None, rhs_dilation=None,
                dimension_numbers=None, feature_group_count: int = 1, batch_group_count: int = 1,
                backend: str | None = None) -> bool:
    """Whether `im2col_conv_general_dilated` takes the matmul path for this convolution."""
    ones = lambda d: d is None or all(int(v) == 1 for v in d)
    return (len(lhs_shape) == 4 and any(int(s) > 1 for s in window_strides)
            and ones(lhs_dilation) and ones(rhs_dilation)
            and feature_group_count == 1 and batch_group_count == 1
            and (backend or jax.default_backend()) == "cpu"
            and _is_nhwc_hwio(dimension_numbers, lhs_shape, rhs_shape))


def im2col_conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding: Any,
                precision=None, preferred_element_type=None) -> jax.Array:
    """NHWC x HWIO convolution as kh*kw strided slices concatenated on channels, then one dot.

    The patch layout (tap row, tap column, input channel) is the kernel's own row-major order, so
    the kernel is used as a (kh*kw*C_in, C_out) matrix without a transpose.
    """
    b, h, w, c = x.shape
    kh, kw, kc, out = kernel.shape
    if kc != c:
        raise ValueError(f"kernel expects {kc} input channels, input has {c}")
    sh, sw = (int(s) for s in strides)
    pads = lax.padtype_to_pads((h, w), (kh, kw), (sh, sw), padding) if isinstance(padding, str) else padding
    (pt, pb), (pl, pr) = ((int(lo), int(hi)) for lo, hi in pads)
    ho, wo = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"convolution of a {h}x{w} input with a {kh}x{kw} kernel and padding {pads} is empty")
    xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)))
    taps = [lax.slice(xp, (0, i, j, 0), (b, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c), (1, sh, sw, 1))
            for i in range(kh) for j in range(kw)]
    patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
    return lax.dot_general(patches, kernel.reshape(kh * kw * c, out), (((3,), (0,)), ((), ())),
                           precision=precision, preferred_element_type=preferred_element_type)


def im2col_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                                dimension_numbers=None, feature_group_count: int = 1,
                                batch_group_count: int = 1, precision=None, preferred_element_type=None):
    """Drop-in for `lax.conv_general_dilated`: the matmul path where `uses_im2col`, else lax's."""
    if uses_im2col(lhs.shape, rhs.shape, window_strides, lhs_dilation, rhs_dilation, dimension_numbers,
                   feature_group_count, batch_group_count):
        return im2col_conv(lhs, rhs, window_strides, padding, precision, preferred_element_type)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                    rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                    feature_group_count=feature_group_count,
                                    batch_group_count=batch_group_count, precision=precision,
                                    preferred_element_type=preferred_element_type)
