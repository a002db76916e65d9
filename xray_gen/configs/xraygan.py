"""XRayGAN: radiology report -> view-consistent frontal and lateral X-rays (Yang et al. 2021).

  python -m xray_gen.main --config=configs/xraygan.py:cpu --workdir=/tmp/xraygan

Stages 32 -> 64 -> 128 -> 256 px, one training phase each (a stage switch recompiles once; the
stage is in the checkpoint). Variants: a size, '' (paper), 'cpu' (32 -> 64 px in minutes) or
'smoke' (seconds; tests), with options 'official' (the official code's VC weight 0.1 with its BCE
form, MultiStep decay and, at paper size, batch 48 at stage 2) and the paper's ablations 'wo_vcn',
'wo_mscgan', 'wo_hae', composed with commas: e.g. 'cpu,wo_vcn'.
"""

import ml_collections

from xray_gen.configs.default import apply_variant, get_default, use_cpu_sizes, use_smoke_sizes


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = get_default()
    c.model = "xraygan"
    c.data.resolution = 256  # the last stage's; stage s trains at 32 * 2**s
    c.train.num_steps = -1  # derived: sum of stage_steps (+ warm-up)
    c.train.eval_every = 0

    x = c.xraygan = ml_collections.ConfigDict()
    x.num_stages = 4  # 32, 64, 128, 256
    x.stage_steps = (20_000, 20_000, 20_000, 20_000)
    x.batch_sizes = (96, 56, 24, 12)
    x.learning_rates = (3e-4, 3e-4, 2e-4, 1e-4)
    x.lr_decay_every = 4_000  # steps; paper: x0.2 every 20 epochs
    x.lr_decay = 0.2
    x.lr_milestones = ()  # fractions of each stage; when set, replaces lr_decay_every (official)
    x.b1, x.b2 = 0.9, 0.999
    x.warmup_steps = 0  # MSE-only pre-training of stage 0 (official: 20 epochs)
    x.pixel_weight = 100.0
    x.adv_weight = 1.0
    x.vc_weight = 1.0  # paper; official 0.1
    x.vc_form = "paper"  # paper: -p; official: BCE(p, 1)
    x.gp_weight = 10.0
    x.noise_dim = 0  # paper and official: no noise
    x.encoder = "hae"  # hae | flat (ablation w/o HAE)
    x.generator = "cascade"  # cascade | oneshot (ablation w/o MSCGAN)
    x.use_vcn = True
    x.vcn_variant = "cpu"  # config variant of the VCNs trained (once) for each stage resolution
    x.vcn_steps = 1_500
    x.classifier_variant = "cpu"  # the evaluation classifier, trained once at the final resolution
    x.classifier_steps = 2_000
    # Directory holding vcn_<res>/ and classifier_<res>/ ('' = the workdir). Point the ablation
    # runs at one (trained by the first run) so all use the same VCN reward and FID extractor.
    x.prepared_dir = ""
    x.vocab_size = 1_000
    x.max_sentences = 8
    x.max_words = 24
    x.embed_dim = 128
    x.hidden = 128
    x.cond_dim = 512
    x.base_width = 512
    x.stage_width = 128
    x.num_res = 4
    x.d_width = 64
    x.d_max_width = 512

    c.sample = ml_collections.ConfigDict()
    c.sample.num_reports = 8  # test-split reports sampled when no --report/--report_file is given
    c.sample.num_samples = 4  # draws per report when noise_dim > 0
    c.sample.all_stages = False  # also write the 32/64/128 px intermediate images
    c.sample.seed = 0
    return apply_variant(c, variant, {"": _paper, "cpu": _cpu, "smoke": _smoke},
                         {"official": _official, "wo_vcn": _wo_vcn, "wo_mscgan": _wo_mscgan, "wo_hae": _wo_hae})


def _paper(c):
    pass


def _official(c, size):
    c.xraygan.vc_weight, c.xraygan.vc_form = 0.1, "official"
    if size == "":  # the official batch sizes are paper-size ones; a cpu/smoke run keeps its own
        c.xraygan.batch_sizes = (96, 48, 24, 12)
    # MultiStepLR x0.2 at epochs 45/70/90 of each stage, read as fractions of a 100-epoch stage.
    c.xraygan.lr_milestones = (0.45, 0.70, 0.90)
    c.xraygan.lr_decay_every = 0
    c.data.equalize = True  # the official loader histogram-equalises every image


def _wo_vcn(c, size):
    c.xraygan.use_vcn = False


def _wo_mscgan(c, size):
    c.xraygan.generator = "oneshot"


def _wo_hae(c, size):
    c.xraygan.encoder = "flat"


def _cpu(c):
    use_cpu_sizes(c)
    c.train.num_steps = -1  # derived from the stages
    x = c.xraygan
    c.data.resolution = 64
    # 8000 studies rendered once and kept in memory: the two VCNs, the classifier and the GAN
    # then read them instead of rendering ~90k studies (most of this run's CPU time otherwise).
    c.data.phantom.train_size = 8_000
    c.data.phantom.memoize = True
    c.data.worker_count = 0
    x.num_stages = 2
    x.stage_steps = (600, 600)
    x.batch_sizes = (32, 16)
    x.lr_decay_every = 0
    x.vocab_size = 400
    x.base_width, x.stage_width, x.d_width, x.d_max_width = 128, 32, 16, 128
    x.embed_dim = x.hidden = 64
    x.cond_dim = 128
    x.vcn_steps = 600
    x.classifier_steps = 600


def _smoke(c):
    use_smoke_sizes(c)
    c.train.num_steps = -1  # derived from the stages
    c.train.eval_every = 0
    x = c.xraygan
    c.data.resolution = 64
    x.num_stages = 2
    x.stage_steps = (3, 3)
    x.batch_sizes = (4, 4)
    x.warmup_steps = 2
    x.vocab_size = 120
    x.max_sentences, x.max_words = 4, 12
    x.base_width, x.stage_width, x.d_width, x.d_max_width = 16, 8, 4, 16
    x.embed_dim = x.hidden = 8
    x.cond_dim = 16
    x.num_res = 1
    x.vcn_variant = "smoke"
    x.vcn_steps = 4
    x.classifier_variant = "smoke"
    x.classifier_steps = 4
    c.train.checkpoint_every = 2
