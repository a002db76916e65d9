"""The classifier's network: a DenseNet (DenseNet-121 at paper size) with one logit per CheXpert label."""

from __future__ import annotations

from xray_gen.data.schema import NUM_LABELS
from xray_gen.nn.densenet import DenseNet


def build_network(mc) -> DenseNet:
    return DenseNet(
        num_classes=NUM_LABELS,
        block_sizes=tuple(mc.block_sizes),
        growth_rate=mc.growth_rate,
        init_features=mc.init_features,
        small_input=mc.small_input,
    )
