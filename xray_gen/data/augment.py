"""On-device image augmentation (jitted inside train steps, so the input pipeline stays light).

Horizontal flips are off by default for chest X-rays: they swap left- and right-sided findings and
put the heart on the wrong side.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def to_float(images_uint8: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return images_uint8.astype(jnp.float32) / 127.5 - 1.0


def _rotate(image: jax.Array, angle: jax.Array, fill: float) -> jax.Array:
    """Rotates an (H, W, C) image about its centre by `angle` radians (bilinear)."""
    h, w = image.shape[:2]
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    src_y = cos * (yy - cy) - sin * (xx - cx) + cy
    src_x = sin * (yy - cy) + cos * (xx - cx) + cx
    sample = lambda ch: jax.scipy.ndimage.map_coordinates(ch, [src_y, src_x], order=1, mode="constant", cval=fill)
    return jax.vmap(sample, in_axes=-1, out_axes=-1)(image)


def augment(
    rng: jax.Array,
    images: jax.Array,
    *,
    max_rotation_deg: float = 10.0,
    brightness: float = 0.1,
    contrast: float = 0.1,
    flip: bool = False,
) -> jax.Array:
    """Random rotation, brightness/contrast jitter (and optional flip) of float images in [-1, 1]."""
    n = images.shape[0]
    k_rot, k_b, k_c, k_f = jax.random.split(rng, 4)
    if max_rotation_deg > 0:
        angles = jax.random.uniform(k_rot, (n,), minval=-1.0, maxval=1.0) * jnp.deg2rad(max_rotation_deg)
        images = jax.vmap(_rotate, in_axes=(0, 0, None))(images, angles, -1.0)
    mean = images.mean(axis=(1, 2, 3), keepdims=True)
    scale = 1.0 + jax.random.uniform(k_c, (n, 1, 1, 1), minval=-contrast, maxval=contrast)
    shift = jax.random.uniform(k_b, (n, 1, 1, 1), minval=-brightness, maxval=brightness) * 2.0
    images = (images - mean) * scale + mean + shift
    if flip:
        do_flip = jax.random.bernoulli(k_f, 0.5, (n, 1, 1, 1))
        images = jnp.where(do_flip, images[:, :, ::-1], images)
    return jnp.clip(images, -1.0, 1.0)
