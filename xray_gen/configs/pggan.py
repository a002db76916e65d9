"""Progressive-growing GAN for chest X-rays with latent class optimisation (Segal et al. 2021).

  python -m xray_gen.main --config=configs/pggan.py:cpu --workdir=/tmp/pggan
  python -m xray_gen.main --config=configs/pggan.py:cpu --workdir=/tmp/pggan --mode=sample \
      --config.archive.num_images=2000        # a labelled synthetic archive with patient series
  python -m xray_gen.main --config=configs/pggan.py:cpu --workdir=/tmp/pggan --mode=evaluate

Grows 4x4 -> `data.resolution`, one training phase per resolution (fade-in then stable; a new
resolution recompiles once, alpha is traced; both are in the checkpoint). Variants: a size, ''
(paper: 1024 px, 800k + 800k images per scale), '256', '64', 'cpu' (64 px on the phantom in about
half an hour on 2 cores) or 'smoke' (seconds; tests), with the option 'official' (the official
code's whole-batch minibatch stddev, 3 channels and, at paper sizes, 2M images at the last scale):
e.g. '256,official'.
"""

import ml_collections

from xray_gen.configs.default import apply_variant, get_default, use_cpu_sizes, use_smoke_sizes


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = get_default()
    c.model = "pggan"
    c.data.resolution = 1024  # the last level's; level k trains at 4 * 2**k
    c.train.num_steps = -1  # derived from the images shown per level and the batch sizes
    c.train.eval_every = 0
    c.train.checkpoint_every = 2_000

    p = c.pggan = ml_collections.ConfigDict()
    # Width per level from 4x4 up: the official code's 512 at 4x4 followed by its depthScales.
    p.channels = (512, 512, 512, 512, 256, 128, 64, 32, 16)
    # Per level (4, 8, ..., 1024): the official 16 per GPU on 4 GPUs, less at the largest scales.
    p.batch_sizes = (64, 64, 64, 64, 64, 64, 56, 32, 12)
    p.latent_dim = 512
    p.out_channels = 1  # grey X-rays; 3 as in the official code (an option)
    p.fade_images = 800_000  # images over which alpha ramps 0 -> 1 after each growth
    p.stable_images = 800_000  # images at alpha 1 per level (level 0: stable only)
    p.final_stable_images = 800_000  # at the last level (official: 1.2M, 2M in all)
    p.learning_rate = 1e-3
    p.b1, p.b2, p.eps = 0.0, 0.99, 1e-8
    p.gp_weight = 10.0
    p.drift_weight = 1e-3  # 0.001 * E[D(real)^2] keeps the critic's output near 0
    p.mbstd_group = 4  # Karras; 0 = the whole batch (official)
    p.ema_decay = 0.999  # the EMA generator is used for evaluation and sampling
    p.ema_warmup = True  # decay min(0.999, (1+k)/(10+k)), k steps into each level (see PGGANTask.ema_decay)
    p.reset_optimizer_per_level = True  # as a new optimiser per scale (Karras; the official code)
    # The DenseNet-121 classifier (FID features, labelling, class optimisation), trained once on
    # the first start in `prepared_dir` (default: the workdir) at data.resolution.
    p.classifier_variant = "cpu"
    p.classifier_steps = 2_000
    p.prepared_dir = ""
    # The paper's alternative classifier: the trained critic with a 14-logit head, fine-tuned.
    p.d_classifier_steps = 2_000
    p.d_classifier_learning_rate = 1e-4

    a = c.archive = ml_collections.ConfigDict()  # --mode=sample with num_images > 0
    a.num_images = 0  # 0: just a grid of uncurated EMA samples
    a.out_dir = ""  # '' = WORKDIR/archive
    a.classifier = "densenet"  # densenet | discriminator (the classifier whose logit is ascended)
    a.class_proportions = ""  # '' = those of the training labels; else JSON {"Cardiomegaly": 0.2, ...}
    a.series_min, a.series_max = 3, 6  # images per synthetic patient
    a.neighbour_std = 0.2  # latent noise around a converged latent (patient series)
    a.truncation = 0.7  # initial latents: normal truncated at +-0.7
    a.max_steps = 200  # gradient-ascent steps before a latent counts as a failure
    a.learning_rate = 0.05  # Adam on the latent
    a.max_attempts = 4  # rounds of fresh latents per shard for classes that failed
    a.batch_size = 32  # latents optimised in parallel
    a.shard_patients = 64
    a.seed = 0

    c.sample = ml_collections.ConfigDict()
    c.sample.num_samples = 64  # uncurated EMA samples in samples/grid.png
    c.sample.seed = 0

    c.eval.split = "test"  # the paper's Tables 1-2 use the real test split
    c.eval.num_generated = 2_000  # generated images for FID / prevalence
    return apply_variant(c, variant, {"": _paper, "256": _res256, "64": _res64, "cpu": _cpu, "smoke": _smoke},
                         {"official": _official})


def _paper(c):
    pass


def _res256(c):
    c.data.resolution = 256


def _res64(c):
    c.data.resolution = 64


def _official(c, size):
    c.pggan.mbstd_group = 0
    c.pggan.out_channels = 3
    if size in ("", "256", "64"):  # the official schedule is a paper-size one
        c.pggan.final_stable_images = 1_200_000


def _cpu(c):
    use_cpu_sizes(c)
    c.train.num_steps = -1
    c.train.eval_every = 0
    c.train.checkpoint_every = 500
    c.data.resolution = 64
    # Studies rendered once and kept in memory (the classifier and the GAN read the same ones).
    c.data.phantom.train_size = 8_000
    c.data.phantom.memoize = True
    c.data.worker_count = 0
    p = c.pggan
    p.channels = (128, 64, 32, 32, 16)
    p.batch_sizes = (32, 32, 32, 16, 16)
    p.latent_dim = 128
    p.fade_images = 8_000
    p.stable_images = 8_000
    p.final_stable_images = 12_000
    p.classifier_steps = 600
    p.d_classifier_steps = 300
    c.archive.max_steps = 100
    c.eval.num_generated = 1_000


def _smoke(c):
    use_smoke_sizes(c)
    c.train.num_steps = -1
    c.train.eval_every = 0
    c.train.checkpoint_every = 4
    c.data.resolution = 16
    p = c.pggan
    p.channels = (16, 16, 8)
    p.batch_sizes = (8, 8, 8)
    p.latent_dim = 16
    p.fade_images = 16
    p.stable_images = 16
    p.final_stable_images = 16
    p.classifier_variant = "smoke"
    p.classifier_steps = 4
    p.d_classifier_steps = 4
    a = c.archive
    a.max_steps = 5
    a.batch_size = 8
    a.shard_patients = 4
    c.sample.num_samples = 8
    c.eval.num_generated = 24
