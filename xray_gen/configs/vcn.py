"""View-consistency network: siamese ResNet-18 on frontal/lateral pairs (XRayGAN section 2.3).

  python -m xray_gen.main --config=configs/vcn.py:cpu --workdir=/tmp/vcn
  python -m xray_gen.main --config=configs/vcn.py --config.data.resolution=128 --workdir=/tmp/vcn128

XRayGAN trains one VCN per stage resolution (32/64/128/256); set data.resolution accordingly.
Variants: '' (ResNet-18, 256 px), 'cpu' (ResNet-18 widths/4 at 64 px, minutes on a laptop),
'smoke' (seconds; used by the tests).
"""

import ml_collections

from xray_gen.configs.default import get_default, apply_variant, use_cpu_sizes, use_smoke_sizes


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = get_default()
    c.model = "vcn"
    c.data.resolution = 256
    c.train.batch_size = 32
    c.train.num_steps = 20_000
    c.train.eval_every = 1_000

    c.optim = ml_collections.ConfigDict(dict(learning_rate=1e-4, b1=0.9, b2=0.999))

    c.vcn = ml_collections.ConfigDict()
    c.vcn.stage_sizes = (2, 2, 2, 2)  # ResNet-18
    c.vcn.widths = (64, 128, 256, 512)
    c.vcn.small_input = False
    c.vcn.embed_dim = 128
    c.vcn.augment = ml_collections.ConfigDict(dict(max_rotation_deg=5.0, brightness=0.1, contrast=0.1, flip=False))

    return apply_variant(c, variant, {"": _paper, "cpu": _cpu, "smoke": _smoke})


def _paper(c):
    pass


def _cpu(c):
    use_cpu_sizes(c)
    c.vcn.widths = (16, 32, 64, 128)
    c.optim.learning_rate = 1e-3
    c.train.num_steps = 1_500


def _smoke(c):
    use_smoke_sizes(c)
    c.vcn.stage_sizes = (1, 1)
    c.vcn.widths = (8, 16)
    c.vcn.small_input = True
    c.vcn.embed_dim = 16
