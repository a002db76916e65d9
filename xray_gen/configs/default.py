"""Settings shared by every model; each model file starts from `get_default()` and overrides.

Run any model as
  python -m xray_gen.main --config=configs/<model>.py[:variant] --workdir=DIR [--mode=train|evaluate|sample]
with `--config.a.b=value` overrides (e.g. --config.train.num_steps=100).
"""

import ml_collections


def get_default() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ""
    c.variant = ""
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.source = "phantom"  # phantom | openi | mimic_cxr | chestxray14 | chexpert
    c.data.resolution = 256
    c.data.manual_dir = ""  # your own downloaded copy of a real dataset (never fetched by xray_gen)
    c.data.synthetic_dir = ""  # a labelled synthetic archive added to the train split (augmentation)
    c.data.data_dir = ""  # where prepared TFDS array_record files go (default: TFDS's)
    # Builder options as a JSON object, e.g. '{"subsets": ["p10"]}' for MIMIC-CXR or
    # '{"split_file": "splits.csv"}' for Open-i (see xray_gen/data/builders/__init__.py).
    c.data.options = ""
    c.data.worker_count = 0  # grain worker processes; >0 moves decoding/phantom generation off the loop
    c.data.prefetch = 2  # batches placed on device ahead of the step
    c.data.uncertain_as = 1.0  # uncertain (-1) labels as positives ('U-Ones')
    # Global histogram equalisation of every input view (uint8, after resizing to the model's
    # resolution), as the official XRayGAN code loads images; see pipeline.equalize_histogram.
    c.data.equalize = False
    c.data.phantom = ml_collections.ConfigDict()
    c.data.phantom.seed = 0
    c.data.phantom.deid_rate = 0.0
    c.data.phantom.train_size = 100_000
    c.data.phantom.validation_size = 2_000
    c.data.phantom.test_size = 2_000
    c.data.phantom.memoize = False  # keep rendered studies in memory (small sizes, worker_count=0)

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 32  # global batch, over all devices and processes
    c.train.num_steps = 10_000
    c.train.log_every = 50
    c.train.eval_every = 1_000
    c.train.checkpoint_every = 1_000
    c.train.max_to_keep = 3
    # Microbatches per optimiser step (EMIXER, CXR-IRGen): the paper batch with one microbatch's memory.
    c.train.grad_accum_steps = 1
    c.train.stop_at_step = -1  # simulate a preemption at this step (checkpoint, then exit)

    c.eval = ml_collections.ConfigDict()
    c.eval.split = "validation"
    c.eval.batch_size = 64
    c.eval.num_examples = 2_000  # capped at the split's size
    c.eval.bootstrap = 200  # resamples behind confidence intervals (0: none)
    # Run the model's whole --mode=evaluate at every checkpoint step that is a multiple of this
    # (0: never), into WORKDIR/eval/step_N, logging its numbers as checkpoint_eval/* scalars.
    c.eval.at_checkpoints_every = 0
    c.eval.inception_weights = ""  # converted Inception-v3 (weights_import): adds Inception FID and IS
    # The one evaluator's shared sections to run (comma-separated; '' = all: fidelity, matched,
    # clinical, reports, pairs, privacy); each model adds its paper's own sections.
    c.eval.sections = ""
    c.eval.train_examples = -1  # training studies the privacy section compares with (-1: all)
    c.eval.report_bootstrap = 200  # resamples of the NLG metrics' intervals (CIDEr is slow)
    c.eval.diversity_pairs = 1_000  # random image pairs of the MS-SSIM diversity

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # model replicas (-1: every device left after mesh.model)
    # FSDP: devices that share one copy of the parameters and optimiser state, each holding a slice
    # of every array of at least shard_min_size elements (largest dimension the axis divides);
    # the batch is split over all devices either way. 1 = plain data parallelism.
    c.mesh.model = 1
    c.mesh.shard_min_size = 2 ** 14
    c.mesh.shard_rules = ""  # JSON [[regex on 'params/…/kernel', dim or null], …], first match wins
    return c


def apply_variant(c: ml_collections.ConfigDict, variant: str, sizes: dict, options: dict | None = None,
                  renamed: dict | None = None) -> ml_collections.ConfigDict:
    """Applies a composable variant: comma-separated parts, at most one size (`sizes`: '' the
    paper's, 'cpu', 'smoke', ...) and any options (`options`: name -> f(c, size) or, for
    `name=value`, f(c, size, value)), e.g. 'cpu,labels=0.3' or 'official'. The size applies
    first, then the options in order; each option sees the size (a cpu budget may differ by option).
    An unknown part fails listing the valid ones; `renamed` maps old product names to their parts."""
    options = options or {}
    parts = [p.strip() for p in variant.split(",") if p.strip()]
    size_parts = [p for p in parts if p in sizes]
    if len(size_parts) > 1:
        raise ValueError(f"config variant {variant!r} names two sizes: {size_parts}")
    size = size_parts[0] if size_parts else ""
    sizes[size](c)
    for part in parts:
        if part in sizes:
            continue
        name, has_value, value = part.partition("=")
        if renamed and part in renamed:
            raise ValueError(f"config variant {part!r} is now written {renamed[part]!r}")
        if name not in options:
            valid = ", ".join([repr(s) for s in sizes] + [f"{o}" for o in options])
            raise ValueError(f"unknown config variant part {part!r} in {variant!r}; valid: sizes and options {valid}")
        option = options[name]
        takes_value = option.__code__.co_argcount == 3
        if takes_value != bool(has_value):
            form = f"{name}=VALUE" if takes_value else name
            raise ValueError(f"config variant option {part!r}: write it as {form!r}")
        option(c, size, value) if takes_value else option(c, size)
    c.variant = variant
    return c


def use_smoke_sizes(c: ml_collections.ConfigDict) -> None:
    """Shared part of every 'smoke' variant: a tiny phantom and a few steps (seconds, for tests)."""
    c.data.resolution = 32
    c.data.phantom.train_size = 64
    c.data.phantom.validation_size = 24
    c.data.phantom.test_size = 24
    c.train.batch_size = 8
    c.train.num_steps = 6
    c.train.log_every = 2
    c.train.eval_every = 3
    c.train.checkpoint_every = 3
    c.eval.num_examples = 24
    c.eval.bootstrap = 20
    c.eval.report_bootstrap = 10
    c.eval.diversity_pairs = 50
    c.eval.train_examples = 64
    c.eval.batch_size = 8


def use_cpu_sizes(c: ml_collections.ConfigDict, resolution: int = 64) -> None:
    """Shared part of every 'cpu' variant: minutes on a laptop, one grain worker."""
    c.data.resolution = resolution
    c.data.worker_count = 1
    c.train.batch_size = 32
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    c.eval.num_examples = 1_000
    c.eval.batch_size = 100
    c.eval.train_examples = 2_000  # the privacy section's training images: a sample, said so in the protocol
