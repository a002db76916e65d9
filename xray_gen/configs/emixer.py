"""EMIXER: diagnosis labels -> paired chest X-ray and report (Biswal et al. 2020).

  python -m xray_gen.main --config=configs/emixer.py:cpu --workdir=/tmp/emixer
  python -m xray_gen.main --config=configs/emixer.py:cpu --workdir=/tmp/emixer --mode=sample \
      --labels="Cardiomegaly,Pleural Effusion"
  python -m xray_gen.main --config=configs/emixer.py:cpu --workdir=/tmp/emixer --mode=evaluate

Variants: a size, '' (paper: 128 px, batch 512, BigGAN ch 64), 'cpu' (64 px on the phantom, 28
minutes on 2 cores as measured) or 'smoke', with the option 'labels=F' (the few-label settings,
e.g. 'labels=0.3' or 'cpu,labels=0.3').
"""

import ml_collections

from xray_gen.configs.default import apply_variant, get_default, use_cpu_sizes, use_smoke_sizes


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = get_default()
    c.model = "emixer"
    c.data.resolution = 128
    c.train.batch_size = 512  # paper; split into emixer.d_steps slices, one per discriminator step
    c.train.num_steps = 100_000
    c.train.eval_every = 0
    c.train.checkpoint_every = 2_000
    c.eval.split = "test"

    e = c.emixer = ml_collections.ConfigDict()
    e.z_dim = 120
    e.label_embed_dim = 128
    e.g_ch = 64
    e.d_ch = 64
    e.g_multipliers = ()  # () = BigGAN's table for the resolution
    e.d_multipliers = ()
    e.g_attention = 64  # self-attention at 64x64 (0: none)
    e.d_attention = 64
    e.out_channels = 1  # 3 as in the paper (an option)
    e.vocab_size = 1_000
    e.max_sentences = 8
    e.max_words = 24
    e.f_hidden = 512
    e.word_layers = 3
    e.encoder_trainable = True  # F's DenseNet fine-tuned (False: frozen)
    e.encoder_from_classifier = True  # F's DenseNet starts as the trained evaluation classifier
    # Options beyond the paper's F (xray_gen/models/emixer/report_networks.py): the encoder's finding
    # probabilities as semantic tags beside its features, and the previous sentence fed back to the
    # sentence LSTM (the paper's F cannot know what it has written and repeats its likeliest sentence).
    e.label_tags = False
    e.sentence_feedback = False
    e.report_embed_dim = 256
    # The report and joint critics' LSTM: 'flat' over all words (the paper's description) or
    # 'hierarchical' (words per sentence, then sentences: far fewer sequential steps).
    e.report_encoder = "flat"
    e.report_hidden = 512
    e.joint_ch = 32
    e.temperature = 1.0  # F's soft decoding for the report/joint discriminators
    e.gumbel = False
    e.straight_through = False
    e.loss = "hinge"  # hinge | nonsaturating
    e.g_lr = 5e-5  # G and F
    e.f_lr = 0.0  # F's own Adam rate (0: g_lr)
    e.f_b1 = -1.0  # F's own Adam beta1 (negative: b1)
    e.d_lr = 2e-4
    e.b1, e.b2 = 0.0, 0.999
    e.d_steps = 2
    e.report_weight = 1.0  # weight of the report and joint adversarial terms
    e.teacher_weight = 1.0  # F's teacher-forced loss on real pairs
    e.f_pretrain_steps = 0  # first steps of train.num_steps: F alone, teacher-forced (phase 0)
    e.f_adversarial_weight = 1.0  # scale of the adversarial gradient reaching F's own parameters
    e.stop_weight = 1.0
    e.orthogonal_reg = 0.0  # BigGAN's 1e-4 as an option
    e.rotation_loss = True  # SSGAN rotation self-supervision of D_image (False: BigGAN's critic step, 4x fewer D images)
    e.ema_decay = 0.9999
    e.label_fraction = 1.0  # 0.3 / 0.5: the few-label settings
    e.classifier_variant = "cpu"
    e.classifier_steps = 2_000
    e.prepared_dir = ""

    c.sample = ml_collections.ConfigDict()
    c.sample.num_samples = 8  # test-split label vectors sampled when no --labels/--labels_file is given
    c.sample.beam_size = 0  # 0/1: greedy
    c.sample.seed = 0
    c.eval.num_generated = 1_000
    # Augmentation experiment (paper Table 1: 100k real + up to 600k generated): the evaluation
    # classifier retrained on real + N generated images for each N; () skips it.
    c.eval.augmentation_images = (100_000,)
    return apply_variant(c, variant, {"": _paper, "cpu": _cpu, "smoke": _smoke}, {"labels": _labels},
                         renamed={"labels30": "labels=0.3", "labels50": "labels=0.5", "cpu_labels30": "cpu,labels=0.3"})


def _paper(c):
    pass


def _labels(c, size, fraction):
    """The few-label settings (paper: labels=0.3, labels=0.5): each study keeps its labels with
    this probability."""
    c.emixer.label_fraction = float(fraction)


def _cpu(c):
    use_cpu_sizes(c)
    c.data.resolution = 64
    c.data.phantom.train_size = 8_000
    c.data.phantom.memoize = True
    c.data.worker_count = 0
    c.train.batch_size = 32
    # Measured here (2 cores): one step is 166 GFLOP / ~3.0 s at g_ch = d_ch = 16 and 57 GFLOP / ~1.5 s
    # at 8 (the 3x3 convolutions of G's 256-wide first blocks dominate); with the encoder frozen
    # the classifier (~4 min), F alone and 700 joint steps fit half an hour.
    c.train.num_steps = 2_200  # 1500 F-only steps (~0.17 s each) + 700 joint steps (~1.6 s each)
    c.train.eval_every = 0
    c.train.checkpoint_every = 300
    e = c.emixer
    e.g_ch = e.d_ch = 8
    # In a joint-only run F's word CE stalled at 2.5 and its reports ignored the image (labeler F1 at
    # chance): the report critics' gradient outweighed teacher forcing. F now learns alone first
    # (cheap: the encoder is frozen) and then keeps learning by teacher forcing (below); its reports
    # reach the critics as straight-through one-hots, so D_report cannot tell them from real ones
    # by their softness alone (with soft distributions it won at once: d_report ~ 0.001).
    e.f_pretrain_steps = 1_500
    e.straight_through = True
    e.encoder_trainable = False  # F's DenseNet stays at the trained classifier's weights
    # F alone for 2000 steps, greedy reports of real test images vs their reports, labeler F1
    # micro/macro (chance 0.37/0.07): the paper's F 0.55/0.17, + tags and sentence feedback
    # 0.59/0.20 (no repeated sentences). 700 joint steps with a tenth of the adversarial gradient
    # then took the paper's F down to 0.45/0.08 with broken words: F here learns by teacher forcing
    # only (G still gets the report and joint critics' gradients through F's input).
    e.label_tags = e.sentence_feedback = True
    e.f_adversarial_weight = 0.0
    e.g_attention = e.d_attention = 32
    e.vocab_size = 400
    # The phantom's reports: median 7 sentences (the impression, which names the findings, last),
    # median 11 pieces per sentence, 90th percentiles 9 and 18; 6 x 16 cut 60% of impressions.
    e.max_sentences, e.max_words = 9, 20
    # Joint step here (batch 32): 0.9 s without reports, 2.0 s at 9 x 20 with flat critics (their
    # LSTMs read 180 steps, several times a step), 1.6 s hierarchical (29 steps).
    e.report_encoder = "hierarchical"
    e.f_hidden = 128
    e.word_layers = 2
    e.report_embed_dim = 64
    e.report_hidden = 128
    e.joint_ch = 8
    e.g_lr, e.d_lr = 2e-4, 4e-4  # faster than the paper's rates for a short run
    # F alone, teacher-forced from the 800-step run's F: word CE 2.9 -> 2.2 in 200 steps at (2e-4, b1 0)
    # and -> 1.0 at (1e-3, b1 0.9); with the GAN's settings it ended at CE 3.0 writing broken words.
    e.f_lr, e.f_b1 = 1e-3, 0.9
    e.ema_decay = 0.99
    e.classifier_steps = 600
    c.eval.num_generated = 500
    c.eval.augmentation_images = (8_000,)  # as many as the real train split


def _smoke(c):
    use_smoke_sizes(c)
    c.data.resolution = 32
    c.train.batch_size = 8
    c.train.num_steps = 4
    c.train.eval_every = 0
    c.train.checkpoint_every = 2
    e = c.emixer
    e.f_pretrain_steps = 1  # exercises the phase switch
    e.d_steps = 1  # one discriminator update per step: the joint step's program (compile time) halves
    e.f_adversarial_weight = 0.5
    e.g_ch = e.d_ch = 4
    e.g_attention = e.d_attention = 0
    e.vocab_size = 120
    e.max_sentences, e.max_words = 3, 8
    e.f_hidden = 16
    e.word_layers = 1
    e.report_embed_dim = 8
    e.report_hidden = 16
    e.joint_ch = 4
    e.ema_decay = 0.9
    e.classifier_variant = "smoke"
    e.classifier_steps = 4
    c.sample.num_samples = 4
    c.eval.num_generated = 24
    c.eval.augmentation_images = (16,)
