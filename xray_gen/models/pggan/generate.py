"""PGGAN's `--mode=sample`: uncurated EMA samples and their grid, or (archive.num_images > 0) a
labelled synthetic archive made by latent class optimisation (export.py)."""

from __future__ import annotations

import math
import os

import jax
import numpy as np
from absl import logging

from xray_gen.images import write_grid, write_png


def sample_images(task, state, n: int, seed: int, batch_size: int = 64) -> np.ndarray:
    """n uncurated EMA samples at the full resolution, z ~ N(0, 1) (no truncation), in [-1, 1]."""
    generate = jax.jit(task.generate)
    z = jax.random.normal(jax.random.PRNGKey(seed), (n, task.config.pggan.latent_dim))
    return np.concatenate([np.asarray(jax.device_get(generate(state.g_ema, z[i:i + batch_size])))
                           for i in range(0, n, batch_size)]) if n else np.zeros((0,))


def sample(task, state, workdir: str) -> dict:
    c = task.config
    if c.archive.num_images > 0:
        from xray_gen.models.pggan.export import export

        return export(task, state, workdir)
    out_dir = os.path.join(workdir, "samples")
    os.makedirs(out_dir, exist_ok=True)
    images = sample_images(task, state, c.sample.num_samples, c.sample.seed)
    for i, image in enumerate(images):
        write_png(os.path.join(out_dir, f"sample_{i:04d}.png"), image)
    per_row = max(1, int(math.ceil(math.sqrt(len(images)))))
    write_grid(os.path.join(out_dir, "grid.png"), [list(images[i:i + per_row]) for i in range(0, len(images), per_row)])
    logging.info("wrote %d EMA samples and grid.png to %s", len(images), out_dir)
    return {"samples": len(images), "directory": out_dir}
