"""CXR-IRGen: labels -> prompt + reference image -> latent-diffusion X-ray; X-ray -> report (Shentu &
Al Moubayed 2024).

  python -m xray_gen.main --config=configs/cxr_irgen.py:cpu --workdir=/tmp/cxr_irgen
  python -m xray_gen.main --config=configs/cxr_irgen.py:cpu --workdir=/tmp/cxr_irgen --mode=sample \
      --labels="Cardiomegaly,Pleural Effusion"
  python -m xray_gen.main --config=configs/cxr_irgen.py:cpu --workdir=/tmp/cxr_irgen --mode=sample --image=x.png
  python -m xray_gen.main --config=configs/cxr_irgen.py:cpu --workdir=/tmp/cxr_irgen --mode=evaluate

Training runs the stages in order, each resumable in its own sub-directory (autoencoder/, clip/,
language/, prior/, classifier_<res>/), then the denoiser in the workdir itself.
Variants: a size, '' (paper-like: 256 px, SD-size autoencoder, U-ViT-mid), 'cpu' (64 px phantom,
tiny everything, all stages in < 45 min on 2 cores) or 'smoke' (seconds per stage, for tests), with
options 'uvit' (the default denoiser), 'unet' (SD-1.x U-Net, the image embedding as one extra
context token) and 'no_reference' (text prompt only: the paper's ablation), e.g. 'cpu,unet'.
Ablation runs can share the prerequisite stages: --config.cxr_irgen.prepared_dir=<first run's workdir>.
Official values: AdamW 5e-5 weight decay 0.01, sampling 50 steps with guidance 7.5 (DDIM here);
the official code trains without conditioning dropout, which guidance needs: 0.1 here
(`cxr_irgen.cond_drop_prob=0` reproduces it).
"""

import ml_collections

from xray_gen.configs.default import apply_variant, get_default, use_cpu_sizes, use_smoke_sizes

PAPER_PATHOLOGIES = ("Atelectasis", "Cardiomegaly", "Lung Opacity", "Pleural Effusion", "Pneumonia")


def _stage(steps, batch_size, learning_rate, **kw) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                                          weight_decay=0.0, **kw))


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = get_default()
    c.model = "cxr_irgen"
    c.data.resolution = 256
    c.train.batch_size = 32
    c.train.num_steps = 10_000  # the paper reports 5k and 10k fine-tuning steps
    c.train.eval_every = 0
    c.train.checkpoint_every = 1_000
    c.eval.split = "test"

    x = c.cxr_irgen = ml_collections.ConfigDict()
    x.backbone = "uvit"  # uvit | unet
    x.reference_image = True  # the paper's reference-image embedding (RIE); False: the ablation
    x.reference_fallback = True  # no identical label vector: a training image with the same positives
    x.cond_drop_prob = 0.1
    x.prediction = "epsilon"  # epsilon | v_prediction
    x.schedule = "scaled_linear"
    x.num_train_timesteps = 1000
    x.learning_rate = 5e-5  # official AdamW
    x.weight_decay = 0.01
    x.grad_clip = 1.0
    # The denoiser's compute dtype: "bfloat16" halves activation memory and uses the bf16 matrix
    # units of GPUs/TPUs; parameters, optimiser state and the loss stay float32 either way.
    x.compute_dtype = "float32"
    x.remat = False  # recompute block activations in the backward pass (memory for time)
    x.vocab_size = 1_000
    x.prompt_len = 48
    x.report_len = 128
    x.report_sections = ("findings", "impression")  # the paper's (F+I); ("findings",) is (F)
    x.prepared_dir = ""  # where the stages and the classifier live ('' : the workdir)
    x.classifier_variant = "cpu"
    x.classifier_steps = 2_000
    x.uvit = ml_collections.ConfigDict(dict(size="mid", patch_size=2, width=0))  # width 0: the size's
    x.unet = ml_collections.ConfigDict(dict(block_out_channels=(320, 640, 1280, 1280),
                                            cross_attn=(True, True, True, False), layers_per_block=2, num_heads=8,
                                            norm_num_groups=32, pretrained=""))
    # Pretrained weights: `unet.pretrained` / `autoencoder.pretrained` name diffusers folders (e.g.
    # an SD-1.x pipeline's unet/ and vae/, safetensors + config.json; their config replaces the sizes
    # here). A pretrained autoencoder is loaded instead of trained (grey images fill its 3 channels);
    # a pretrained U-Net is the denoiser's starting point (its cross_attention_dim must equal the
    # CLIP text width). With both, latents use the VAE's scaling_factor (SD: 0.18215, no shift); with
    # a denoiser trained here they are measured and centred. `clip.pretrained` names a transformers
    # CLIP folder (config.json + model.safetensors, with vocab.json + merges.txt in it or in
    # ../tokenizer): loaded instead of trained, its sizes replace clip.*, the label prompt is tokenised
    # by its BPE at its text length (77; prompt_len is then unused), reference images are resized to
    # its image_size and CLIP-normalised. `language.pretrained` names a transformers BART folder
    # (config.json + model.safetensors + vocab.json + merges.txt, e.g. facebook/bart-base): the
    # language stage takes its architecture (language.size unused; report_len <= its
    # max_position_embeddings) and starts from its weights, then is fine-tuned as usual; reports
    # (language stage, prior targets, decoded reports) use its BPE.
    # Stages (each trained in its own sub-directory; sizes are from scratch here).
    x.autoencoder = _stage(50_000, 16, 4.5e-6, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                           latent_channels=4, norm_num_groups=32, loss="l1", kl_weight=1e-6, scale_images=1_000,
                           pretrained="")
    x.clip = _stage(20_000, 64, 1e-4, width=512, layers=12, heads=8, patch_size=32, projection_dim=512, pretrained="")
    x.language = _stage(20_000, 32, 5e-5, size="bart-base", pooling="mean", dropout=0.1, pretrained="")
    x.prior = _stage(20_000, 32, 5e-5, size="base", patch_size=2, loss="mse+cosine", cosine_weight=0.01)

    c.sample = ml_collections.ConfigDict()
    c.sample.num_samples = 4  # images per --labels request (seeds sample.seed + k)
    c.sample.seed = 0
    c.sample.sampler = "ddim"  # ddim | dpm_solver_2m
    c.sample.num_steps = 50
    c.sample.guidance_scale = 7.5
    c.sample.eta = 0.0
    c.sample.report_method = "beam"  # greedy | beam | nucleus
    c.sample.beam_size = 4
    c.sample.top_p = 0.9
    c.sample.batch_size = 16

    c.eval.num_examples = 1_000  # conditioning studies of eval.split (paper: 1000 PA test images)
    c.eval.pathologies = PAPER_PATHOLOGIES
    c.eval.per_pathology = 500  # generated images per pathology and for No Finding (paper Table 2)
    return apply_variant(c, variant, {"": _paper, "cpu": _cpu, "smoke": _smoke},
                         {"uvit": _uvit, "unet": _unet, "no_reference": _no_reference},
                         renamed={"cpu_unet": "cpu,unet", "cpu_no_reference": "cpu,no_reference"})


def _paper(c):
    pass


def _uvit(c, size):
    c.cxr_irgen.backbone = "uvit"


def _unet(c, size):
    c.cxr_irgen.backbone = "unet"
    if size == "cpu":
        # Measured here: ~0.68 step/s (the U-ViT ~1.0), but its loss at 300 steps (0.115) is the
        # U-ViT's at ~1500: 1000 steps keep the variant well inside the 45 minutes.
        c.train.num_steps = 1_000


def _no_reference(c, size):
    c.cxr_irgen.reference_image = False


def _cpu(c):
    use_cpu_sizes(c, resolution=64)
    c.data.phantom.train_size = 4_000
    c.data.phantom.memoize = True  # reference images are re-read every epoch
    c.data.worker_count = 0
    c.train.batch_size = 32
    # Measured here (2 cores): the five stages take ~15 min (autoencoder 5.5, CLIP 1, language 2.5,
    # prior 3.5, classifier 2.5) and the U-ViT denoiser ~1.0 s per step: 1700 steps keep the run
    # under 45 minutes (44.5 measured; the 2000-step run with a 500-step prior took 47).
    c.train.num_steps = 1_700
    c.train.eval_every = 0
    c.train.checkpoint_every = 300
    x = c.cxr_irgen
    x.learning_rate = 3e-4  # a short run: faster than the official fine-tuning rate
    x.vocab_size = 400
    x.prompt_len = 40
    x.report_len = 96
    x.classifier_steps = 600
    x.uvit = ml_collections.ConfigDict(dict(size="cpu", patch_size=2, width=0))
    x.unet = ml_collections.ConfigDict(dict(block_out_channels=(64, 128), cross_attn=(True, True),
                                            layers_per_block=1, num_heads=4, norm_num_groups=32, pretrained=""))
    # 3 levels: factor 4, 16x16x4 latents (factor 8 would leave 8x8 at 64 px). Narrow: convolutions
    # at 64 px dominate a CPU step (widths 32/64/64 cost ~4x as much per step).
    x.autoencoder = _stage(800, 16, 1e-3, block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=4,
                           norm_num_groups=16, loss="l1", kl_weight=1e-6, scale_images=512, pretrained="")
    x.clip = _stage(400, 64, 5e-4, width=64, layers=2, heads=4, patch_size=8, projection_dim=64, pretrained="")
    x.language = _stage(1_000, 32, 1e-3, size="tiny", pooling="mean", dropout=0.1, pretrained="")
    # The prior decides whether reports follow the image: after 500 steps at 5e-4 it had learnt only
    # the mean text vector (test cosine 0.41, the mean's 0.40) and every report was the modal normal
    # one (labeler F1 from real images 0.42 / 0.09 micro / macro); 2000 steps at 2e-3: cosine 0.54,
    # F1 0.58 / 0.29 (the language module's own reconstruction from true vectors: 0.75 / 0.48).
    x.prior = _stage(2_000, 32, 2e-3, size="tiny", patch_size=2, loss="mse+cosine", cosine_weight=0.01)
    c.sample.num_steps = 50
    c.sample.guidance_scale = 3.0  # 7.5 over-saturates a small model trained for minutes
    c.sample.batch_size = 50
    c.eval.num_examples = 200
    c.eval.per_pathology = 50
    c.eval.batch_size = 50


def _smoke(c):
    use_smoke_sizes(c)
    c.data.resolution = 32
    c.data.phantom.memoize = True
    c.train.batch_size = 8
    c.train.num_steps = 4
    c.train.eval_every = 0
    c.train.checkpoint_every = 2
    x = c.cxr_irgen
    x.learning_rate = 1e-3
    x.vocab_size = 120
    x.prompt_len = 32
    x.report_len = 48
    x.classifier_variant = "smoke"
    x.classifier_steps = 2
    x.uvit = ml_collections.ConfigDict(dict(size="tiny", patch_size=2, width=0))
    x.unet = ml_collections.ConfigDict(dict(block_out_channels=(32, 32), cross_attn=(True, True), layers_per_block=1,
                                            num_heads=2, norm_num_groups=8, pretrained=""))
    x.autoencoder = _stage(3, 8, 1e-3, block_out_channels=(8, 8, 8), layers_per_block=1, latent_channels=4,
                           norm_num_groups=8, loss="l1", kl_weight=1e-6, scale_images=16, pretrained="")
    x.clip = _stage(2, 8, 1e-3, width=32, layers=1, heads=2, patch_size=8, projection_dim=32, pretrained="")
    x.language = _stage(2, 8, 1e-3, size="tiny", pooling="mean", dropout=0.1, pretrained="")
    x.prior = _stage(2, 8, 1e-3, size="tiny", patch_size=2, loss="mse+cosine", cosine_weight=0.01)
    c.sample.num_samples = 2
    c.sample.num_steps = 3
    c.sample.guidance_scale = 2.0
    c.sample.report_method = "greedy"
    c.sample.batch_size = 4
    c.eval.num_examples = 8
    c.eval.per_pathology = 2
    c.eval.batch_size = 8
