"""The paper's alternative classifier for class optimisation: the trained critic re-purposed.

The critic's scoring layer is replaced by 14 per-class logits and the whole network is fine-tuned
end to end on the labelled real data with the DenseNet's recipe (weighted BCE, augmentation,
plateau rule, Youden thresholds from validation) by subclassing its task. The paper found class
optimisation converges more reliably through it than through the DenseNet, since it sees the
generator's own resolution and was trained on the generator's images.

Minibatch standard deviation is run with groups of one (a constant zero map where the critic saw
its batch statistic): a classifier must score each image on its own, or a latent's logit would
depend on the other latents optimised beside it.
"""

from __future__ import annotations

import os
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from xray_gen.data.schema import NUM_LABELS
from xray_gen.models.classifier.task import ClassifierTask
from xray_gen.models.pggan.networks import Discriminator


class CriticClassifier(nn.Module):
    """(N, R, R, 1) images in [-1, 1] -> (logits (N, 14), features) through the critic trunk."""

    channels: Sequence[int]
    image_channels: int = 1

    @nn.compact
    def __call__(self, images, train: bool = False):
        del train  # no batch norm or dropout in the critic
        if images.shape[-1] != self.image_channels:
            images = jnp.repeat(images, self.image_channels, axis=-1)
        critic = Discriminator(self.channels, num_outputs=NUM_LABELS, mbstd_group=1, name="critic")
        return critic(images, len(self.channels) - 1, 1.0)


class CriticClassifierTask(ClassifierTask):
    name = "critic_classifier"

    def __init__(self, config, channels: Sequence[int], image_channels: int, critic_params=None):
        super().__init__(config)
        self.net = CriticClassifier(tuple(channels), image_channels)
        self._critic_params = critic_params

    def init(self, rng):
        """A fresh 14-logit head on the trained critic's trunk (when given; else all random)."""
        state = super().init(rng)
        if self._critic_params is None:
            return state
        trunk = {k: v for k, v in self._critic_params["params"].items() if k != "head"}
        params = {**state.params, "critic": {**state.params["critic"], **trunk}}
        return state.replace(params=params, opt_state=self.tx.init(params))


def critic_classifier(pggan_task, d_params=None):
    """(task, config, directory) of a PGGAN run's critic classifier (fine-tuned in WORKDIR/critic_classifier)."""
    from xray_gen.configs import classifier as classifier_configs

    p = pggan_task.config.pggan
    cc = classifier_configs.get_config(p.classifier_variant)
    cc.data = pggan_task.config.data.copy_and_resolve_references()
    cc.train.num_steps = p.d_classifier_steps
    cc.train.eval_every = p.d_classifier_steps
    cc.optim.learning_rate = p.d_classifier_learning_rate
    task = CriticClassifierTask(cc, pggan_task.channels, p.out_channels, d_params)
    return task, cc, os.path.join(pggan_task.workdir, "critic_classifier")
