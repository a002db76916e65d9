"""Multi-label CXR classifier: DenseNet-121 with weighted BCE (PGGAN paper, section 3.3).

  python -m xray_gen.main --config=configs/classifier.py:cpu --workdir=/tmp/classifier
  python -m xray_gen.main --config=configs/classifier.py:cpu --workdir=/tmp/classifier --mode=evaluate

Variants: '' (paper: DenseNet-121 at 256 px), 'cpu' (a smaller DenseNet at 64 px that reaches
phantom macro AUROC >= 0.85 in minutes on a laptop), 'smoke' (seconds; used by the tests).
"""

import ml_collections

from xray_gen.configs.default import get_default, apply_variant, use_cpu_sizes, use_smoke_sizes


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = get_default()
    c.model = "classifier"
    c.data.resolution = 256
    c.train.batch_size = 32
    c.train.num_steps = 30_000
    c.train.eval_every = 1_000

    c.optim = ml_collections.ConfigDict(dict(learning_rate=1e-3, b1=0.9, b2=0.999))  # Adam defaults

    c.classifier = ml_collections.ConfigDict()
    c.classifier.block_sizes = (6, 12, 24, 16)  # DenseNet-121
    c.classifier.growth_rate = 32
    c.classifier.init_features = 64
    c.classifier.small_input = False
    c.classifier.weight_estimate_size = 5_000  # training labels used for wP / wN
    # The paper also flips horizontally (p=0.5); off here because it swaps left/right findings.
    c.classifier.augment = ml_collections.ConfigDict(dict(max_rotation_deg=10.0, brightness=0.1, contrast=0.1, flip=False))
    # Paper: reduce the learning rate x0.1 when validation macro AUROC stops improving.
    c.classifier.plateau = ml_collections.ConfigDict(dict(patience=3, factor=0.1, min_delta=1e-4))
    c.eval.bootstrap = 1_000

    return apply_variant(c, variant, {"": _paper, "cpu": _cpu, "smoke": _smoke})


def _paper(c):
    pass


def _cpu(c):
    use_cpu_sizes(c)
    c.classifier.block_sizes = (4, 8, 12, 8)
    c.classifier.growth_rate = 16
    c.classifier.init_features = 32
    c.classifier.small_input = False
    c.classifier.weight_estimate_size = 1_000
    c.train.num_steps = 2_000  # phantom validation macro AUROC ~0.85 at 500 steps, ~0.89 at 1000


def _smoke(c):
    use_smoke_sizes(c)
    c.classifier.block_sizes = (1, 1)
    c.classifier.growth_rate = 4
    c.classifier.init_features = 8
    c.classifier.small_input = True
    c.classifier.weight_estimate_size = 32
    c.eval.bootstrap = 20
