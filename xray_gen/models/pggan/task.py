"""PGGAN for the training loop: progressive growing from 4x4 to `data.resolution` (one phase per
level, steps.Schedule), WGAN-GP + drift and an EMA generator.

The level is a pure function of the step and lives in the checkpoint, so a run killed during a
fade-in resumes at the same level and alpha. Prerequisite: the classifier that labels generated
images, drives class optimisation and gives the in-domain FID features. Networks in networks.py,
steps in steps.py, sampling and the labelled archive in generate.py / export.py, evaluation in
evaluation.py.
"""

from __future__ import annotations

import os

import numpy as np
import optax

from xray_gen.data.pipeline import ToModelInputs, make_loader, open_split
from xray_gen.models.pggan import steps
from xray_gen.models.pggan.networks import build_networks, level_of, resolution_of
from xray_gen.models.pggan.steps import PGGANState
from xray_gen.training import loop


class PGGANTask(loop.Task):
    name = "pggan"

    def __init__(self, config, workdir: str | None = None):
        super().__init__(config, workdir)
        p = config.pggan
        self.max_level = level_of(config.data.resolution)
        self.nets = build_networks(config)
        self.channels = self.nets.generator.channels
        self.tx = optax.adam(p.learning_rate, b1=p.b1, b2=p.b2, eps=p.eps)
        self.schedule = steps.Schedule.from_config(p, self.max_level)

    @property
    def phases(self):
        return self.schedule.phases

    @property
    def boundaries(self):
        return self.schedule.boundaries

    # ---- schedule ----------------------------------------------------------------------------
    def num_steps(self) -> int:
        """`train.num_steps`, or (-1) the sum of every level's fade-in and stable steps."""
        n = int(self.config.train.num_steps)
        return int(self.schedule.boundaries[-1]) if n < 0 else n

    def phase(self, step: int) -> int:
        return self.schedule.phase_at(step)

    def alpha(self, step, phase: int):
        return self.schedule.alpha(step, phase)

    def ema_decay(self, step, phase: int):
        return self.schedule.ema_decay_at(step, phase)

    def phase_loader(self, phase: int):
        level = self.phases[phase][0]
        c = self.config
        transform = ToModelInputs.from_data_config(c.data, views=("frontal",), resolution=resolution_of(level))
        return make_loader(open_split(c.data, "train", views=("frontal",)), [transform], c.pggan.batch_sizes[level],
                           seed=c.seed + phase, worker_count=c.data.worker_count)

    def train_loader(self):
        return self.phase_loader(0)

    def enter_phase(self, state: PGGANState, phase: int) -> PGGANState:
        """Fresh Adam moments at each new resolution (as the reference code's new optimisers)."""
        if not self.config.pggan.reset_optimizer_per_level:
            return state
        return state.replace(g_opt=self.tx.init(state.g_params), d_opt=self.tx.init(state.d_params))

    # ---- prepared classifier -----------------------------------------------------------------
    def classifier(self):
        from xray_gen.models.classifier.prepared import PreparedClassifier

        p = self.config.pggan
        root = p.get("prepared_dir") or self.workdir
        return PreparedClassifier(self.config.data, p.classifier_variant, p.classifier_steps,
                                  os.path.join(root, f"classifier_{self.config.data.resolution}"))

    def prerequisites(self) -> list[loop.Prerequisite]:
        """The DenseNet classifier that labels generated images, drives class optimisation and
        gives the in-domain FID features."""
        return [self.classifier().prerequisite()]

    # ---- pure functions ----------------------------------------------------------------------
    def init(self, rng) -> PGGANState:
        return steps.init_state(self.nets, self.config.pggan, self.max_level, rng, self.tx)

    def phase_step(self, phase: int):
        return steps.make_train_step(self.nets, self.config.pggan, self.schedule, phase, self.tx)

    def train_step(self, state, frozen, batch):
        return self.phase_step(0)(state, frozen, batch)

    def generate(self, g_params, z, level: int | None = None, alpha=1.0):
        return self.nets.generator.apply(g_params, z, self.max_level if level is None else level, alpha)

    # ---- sampling and evaluation -------------------------------------------------------------
    def write_summaries(self, writer, state, step: int) -> None:
        images = self.sample_images(state, self.config.sample.num_samples, self.config.sample.seed)
        writer.write_images(step, {"ema_samples": (np.asarray(images[:16]) + 1.0) / 2.0})

    def sample_images(self, state, n: int, seed: int, batch_size: int = 64) -> np.ndarray:
        from xray_gen.models.pggan.generate import sample_images

        return sample_images(self, state, n, seed, batch_size)

    def sample(self, state, workdir: str) -> dict:
        from xray_gen.models.pggan.generate import sample

        return sample(self, state, workdir)

    def final_report(self, state, workdir: str, checkpoint_step: int | None = None) -> dict:
        from xray_gen.models.pggan.evaluation import final_report

        return final_report(self, state, workdir, checkpoint_step)
