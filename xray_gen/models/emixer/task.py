"""EMIXER for the training loop: labels -> image (BigGAN-style G) -> report (hierarchical F), three
discriminators (image, report, joint).

Phases: an optional F pre-training by teacher forcing (`emixer.f_pretrain_steps`; G and the
discriminators wait, and the joint phase starts with fresh Adam moments), then the joint GAN
(steps.make_train_step). `emixer.f_adversarial_weight` scales the adversarial gradient that reaches
F's own parameters (G still gets the full gradient through F's image input); the paper is silent on
both, text GANs usually need them. Few labels: `emixer.label_fraction` keeps each study's labels
with that probability (a per-study hash, i.e. about that fraction of every class). Prerequisite:
the evaluation classifier, whose weights also start F's image encoder. Networks in networks.py,
steps in steps.py, sampling in generate.py, evaluation in evaluation.py, the paper's Table 3 in
tables.py.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from typing import Any

import grain
import numpy as np

from xray_gen.data.pipeline import ToModelInputs, make_loader, open_split, workdir_tokenizer
from xray_gen.data.reports import split_sentences
from xray_gen.models.emixer import steps
from xray_gen.models.emixer.networks import build_networks, optimizers
from xray_gen.models.emixer.steps import EmixerState
from xray_gen.training import loop


@dataclasses.dataclass(frozen=True)
class ReportAndLabelInputs(grain.transforms.Map):
    """Adds `report_ids`/`report_mask` (S, W): findings then impression sentences, tokenised
    hierarchically; and `labeled_mask` (1 with probability `label_fraction`, by a hash of the study id
    and seed, so the labelled subset is fixed for a run and the same in every epoch)."""

    tokenizer: Any
    max_sentences: int
    max_words: int
    label_fraction: float
    seed: int

    def map(self, ex: dict[str, Any]) -> dict[str, Any]:
        ex = dict(ex)
        text = lambda k: ex[k].decode("utf-8") if isinstance(ex[k], bytes) else str(ex[k])
        sentences = split_sentences(text("findings")) + split_sentences(text("impression"))
        ex["report_ids"], ex["report_mask"] = self.tokenizer.encode_hierarchical(
            sentences, self.max_sentences, self.max_words)
        draw = zlib.crc32(f"{self.seed}:{ex['study_id']}".encode()) / 2**32
        ex["labeled_mask"] = np.float32(draw < self.label_fraction)  # *_mask keys pass ToModelInputs
        return ex


class EmixerTask(loop.Task):
    name = "emixer"
    accumulates_gradients = True

    def __init__(self, config, workdir: str | None = None):
        super().__init__(config, workdir)
        e = config.emixer
        if not 0.0 < e.label_fraction <= 1.0:
            raise ValueError(f"emixer.label_fraction must be in (0, 1], got {e.label_fraction}")
        if config.train.batch_size % e.d_steps:
            raise ValueError(f"train.batch_size={config.train.batch_size} must divide into emixer.d_steps={e.d_steps} "
                             "slices (one per discriminator step)")
        accum = config.train.get("grad_accum_steps", 1)
        if accum < 1 or (config.train.batch_size // e.d_steps) % accum:
            raise ValueError(f"train.grad_accum_steps={accum} must divide each discriminator step's slice of "
                             f"{config.train.batch_size // e.d_steps} examples (train.batch_size / emixer.d_steps)")
        self.f_pretrain_steps = int(e.get("f_pretrain_steps", 0))
        if not 0 <= self.f_pretrain_steps < config.train.num_steps:
            raise ValueError(f"emixer.f_pretrain_steps={self.f_pretrain_steps} must be in [0, train.num_steps="
                             f"{config.train.num_steps}): the joint phase needs steps too")
        self.tokenizer = workdir_tokenizer(workdir, config.data, e.vocab_size) if workdir else None
        vocab = self.tokenizer.vocab_size if self.tokenizer else e.vocab_size
        self.nets = build_networks(config, vocab, self.classifier().config.classifier)
        self.gen_tx, self.disc_tx = optimizers(e)
        self._steps = (steps.make_f_pretrain_step(self.nets, config, self.gen_tx),
                       steps.make_train_step(self.nets, config, self.gen_tx, self.disc_tx))

    # ---- prepared classifier (FID features, clinical agreement, F's image encoder) ------------
    def classifier(self):
        from xray_gen.models.classifier.prepared import PreparedClassifier

        e = self.config.emixer
        root = e.get("prepared_dir") or self.workdir or ""
        return PreparedClassifier(self.config.data, e.classifier_variant, e.classifier_steps,
                                  os.path.join(root, f"classifier_{self.config.data.resolution}"))

    def prerequisites(self) -> list[loop.Prerequisite]:
        """The evaluation classifier (FID features, clinical agreement; F's image encoder starts from it)."""
        return [self.classifier().prerequisite()]

    def warm_start(self, state: EmixerState) -> EmixerState:
        """F's DenseNet encoder from the trained classifier (the paper's pretrained CNN), read on the
        host after init (never a constant of the jitted init)."""
        if not self.config.emixer.encoder_from_classifier:
            return state
        _, cls = self.classifier().load()
        f = state.gen["F"]
        f = {**f, "params": {**f["params"], "encoder": cls.params},
             "batch_stats": {**f.get("batch_stats", {}), "encoder": cls.batch_stats}}
        return state.replace(gen={**state.gen, "F": f})

    # ---- data ---------------------------------------------------------------------------------
    def transforms(self):
        c, e = self.config, self.config.emixer
        return [ReportAndLabelInputs(self.tokenizer, e.max_sentences, e.max_words, e.label_fraction, c.seed),
                ToModelInputs.from_data_config(c.data, views=("frontal",))]

    def train_loader(self):
        c = self.config
        return make_loader(open_split(c.data, "train", views=("frontal",)), self.transforms(), c.train.batch_size,
                           seed=c.seed, worker_count=c.data.worker_count)

    # ---- phases: optional F pre-training, then the joint GAN ------------------------------------
    def phase(self, step: int) -> int:
        return 0 if step < self.f_pretrain_steps else 1

    def phase_step(self, phase: int):
        return self._steps[0 if phase == 0 else 1]

    def enter_phase(self, state, phase: int):
        """The joint phase starts with fresh Adam moments for G and F (F's were shaped by teacher forcing alone)."""
        if phase == 1 and self.f_pretrain_steps:
            state = state.replace(gen_opt=self.gen_tx.init(steps.trainable(self.config.emixer, state.gen)))
        return state

    def init(self, rng) -> EmixerState:
        return steps.init_state(self.nets, self.config, rng, self.gen_tx, self.disc_tx)

    def train_step(self, state: EmixerState, frozen: dict, batch):
        """The joint phase's step (the loop asks `phase_step` for each phase)."""
        return self._steps[1](state, frozen, batch)

    # ---- sampling and evaluation ---------------------------------------------------------------
    def generate(self, state, y, rng, beam_size: int = 0):
        """(images, {"ids", "mask"}) for label vectors y with the EMA generator and F (greedy or beam)."""
        return steps.generate(self.nets, self.config.emixer, state, y, rng, beam_size)

    def sample(self, state, workdir: str, labels: str | None = None, labels_file: str | None = None) -> dict:
        from xray_gen.models.emixer.generate import sample

        return sample(self, state, workdir, labels, labels_file)

    def final_report(self, state, workdir: str, checkpoint_step: int | None = None) -> dict:
        from xray_gen.models.emixer.evaluation import final_report

        return final_report(self, state, workdir, checkpoint_step)
