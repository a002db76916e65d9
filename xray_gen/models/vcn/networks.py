"""The view-consistency network: a siamese ResNet over both views and a same-body logit."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from xray_gen.nn.resnet import ResNet


class ViewConsistencyNet(nn.Module):
    stage_sizes: tuple = (2, 2, 2, 2)
    widths: tuple = (64, 128, 256, 512)
    small_input: bool = False
    embed_dim: int = 128
    embed_scale: float = 10.0

    def setup(self):
        self.backbone = ResNet(stage_sizes=self.stage_sizes, widths=self.widths, small_input=self.small_input)
        self.embed = nn.Dense(self.embed_dim)
        self.head = nn.Dense(1)

    def embed_view(self, x, train: bool):
        e = self.embed(self.backbone(x, train))
        return self.embed_scale * e / (jnp.linalg.norm(e, axis=-1, keepdims=True) + 1e-6)

    def __call__(self, frontal, lateral, train: bool = False):
        """Logit that (frontal, lateral) come from the same patient; images float in [-1, 1]."""
        return self.pair_logit(self.embed_view(frontal, train), self.embed_view(lateral, train))

    def pair_logit(self, e_frontal, e_lateral):
        return self.head(jnp.abs(e_frontal - e_lateral))[..., 0]


def pair_logits(net, variables, frontal, lateral, train: bool):
    """Positive logits (matched pairs), negative logits (lateral rolled by one) and BN updates.

    Both views go through the backbone in one call, so batch statistics see the two views together.
    """
    n = frontal.shape[0]
    both = jnp.concatenate([frontal, lateral])
    if train:
        embeds, updates = net.apply(variables, both, True, method=ViewConsistencyNet.embed_view, mutable=["batch_stats"])
    else:
        embeds, updates = net.apply(variables, both, False, method=ViewConsistencyNet.embed_view), None
    e_f, e_l = embeds[:n], embeds[n:]
    pos = net.apply(variables, e_f, e_l, method=ViewConsistencyNet.pair_logit)
    neg = net.apply(variables, e_f, jnp.roll(e_l, 1, axis=0), method=ViewConsistencyNet.pair_logit)
    return pos, neg, updates
