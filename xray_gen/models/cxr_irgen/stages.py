"""CXR-IRGen's prerequisite networks, each a small `loop.Task` that `CxrIRGenTask.prerequisites()`
declares as a run of its own in a sub-directory of the prepared root (`cxr_irgen.prepared_dir`, or
the workdir); the runner trains them, resumably, in this order:

1. `AutoencoderTask`  KL autoencoder: L1 (or L2) reconstruction + kl_weight * KL per pixel; after
   training the latents' mean (the shift) and scale are measured from data (`measure_latent_stats`).
2. `ClipTask`         CLIP dual encoder on (frontal image, label prompt) pairs with clip_loss;
   identical prompts in a batch count as matches. `cxr_irgen.clip.pretrained` (a transformers
   CLIP folder) replaces it: loaded, never trained, its prompts tokenised by its own BPE.
3. `TextAutoencoderTask`  language stage 1: BART encoder -> pooled text vector -> BART decoder
   reconstructing the report (cross-entropy on real tokens only). `cxr_irgen.language.pretrained`
   (a transformers BART folder) gives its architecture and starting weights, then it is fine-tuned
   (the pooled bottleneck is new to BART); its reports then use that folder's BPE.
4. `PriorTask`        language stage 2: ViT over the frozen autoencoder's scaled latents predicting
   the frozen stage-1 text vector (MSE + 0.01 (1 - cos)).

Each stage reads `config.cxr_irgen.<stage>` (steps, batch_size, learning_rate, sizes) and trains
with AdamW and global-norm clipping; the frozen networks a stage leans on (the prior's autoencoder
and text encoder) reach its jitted step as the loop's `frozen` argument.
"""

from __future__ import annotations

import json
import os

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from xray_gen.data import augment as aug
from xray_gen.data.pipeline import ToModelInputs, make_loader, open_split, workdir_tokenizer
from xray_gen.files import atomic_open
from xray_gen.models.cxr_irgen import bart_weights, language, weights
from xray_gen.models.cxr_irgen.networks import (clip_images, clip_init_inputs, clip_model, from_pretrained,
                                                 latent_side, load_pretrained_clip, normalize_latents,
                                                 pretrained_bart, pretrained_clip, pretrained_vae, prior_model,
                                                 report_model, report_tokenizer, vae_config, vae_encode)
from xray_gen.models.cxr_irgen.inputs import CxrInputs, IndexedSource, ReportSource, label_groups
from xray_gen.nn import clip as clip_nn
from xray_gen.nn.autoencoder_kl import AutoencoderKL
from xray_gen.training import loop
from xray_gen.training.checkpoint import CheckpointMismatchError, Checkpointer

STAGES = ("autoencoder", "clip", "language", "prior")
LATENT_SCALE_FILE = "latent_scale.json"


@flax.struct.dataclass
class StageState:
    step: jax.Array
    rng: jax.Array
    params: dict
    opt_state: optax.OptState


def prepared_root(config, workdir: str | None) -> str:
    """Where the stages, the tokenizer and the evaluation classifier live: `cxr_irgen.prepared_dir`
    (shared between runs) or the run's workdir."""
    root = config.cxr_irgen.get("prepared_dir") or workdir
    if not root:
        raise ValueError("CXR-IRGen needs a workdir or cxr_irgen.prepared_dir (its stages and tokenizer live there)")
    return root


def with_root(config, root: str) -> ml_collections.ConfigDict:
    """A copy of `config` whose `cxr_irgen.prepared_dir` is `root` (what the stage helpers read)."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.cxr_irgen.prepared_dir = root
    return c


def stage_dir(config, stage: str) -> str:
    return os.path.join(config.cxr_irgen.prepared_dir, stage)


def stage_config(config, stage: str, root: str) -> ml_collections.ConfigDict:
    """The run config of a stage: the main config (an unlocked copy) with `model` naming the stage's
    task, `train` set from `cxr_irgen.<stage>` and `cxr_irgen.prepared_dir` the prepared root."""
    s = config.cxr_irgen[stage]
    c = ml_collections.ConfigDict(config.to_dict())
    c.model = f"cxr_irgen.{stage}"
    c.cxr_irgen.prepared_dir = root
    c.train.num_steps = int(s.steps)
    c.train.batch_size = int(s.batch_size)
    c.train.eval_every = 0
    c.train.checkpoint_every = max(1, min(int(s.steps), int(config.train.checkpoint_every)))
    c.train.stop_at_step = -1
    return c


def stage_mismatch(config, stage: str, directory: str, error: Exception) -> ValueError:
    """A clear error for a prepared stage whose checkpoint does not fit this config (e.g.
    `language.pretrained` set over a `prepared_dir` whose language stage was trained from scratch):
    names the `cxr_irgen.<stage>` settings that differ from those the checkpoint was trained with."""
    sections = (stage, "language") if stage == "prior" else (stage,)  # the prior's width is the language's
    try:
        saved = json.loads(Checkpointer(os.path.join(directory, "checkpoints")).restore_meta()["config"])["cxr_irgen"]
    except (OSError, KeyError, ValueError, TypeError):
        saved = {}
    diffs = []
    for section in sections:
        now, then = config.cxr_irgen[section].to_dict(), saved.get(section, {})
        for key in sorted(set(now) | set(then)):
            if key not in ("steps", "batch_size", "learning_rate") and now.get(key, "") != then.get(key, ""):
                diffs.append(f"cxr_irgen.{section}.{key} is {now.get(key, '')!r}, was {then.get(key, '')!r}")
    found = "; ".join(diffs) if diffs else str(error)
    return ValueError(f"CXR-IRGen stage {stage!r} in {directory} was trained with other settings ({found}): use "
                      "a new --workdir (or --config.cxr_irgen.prepared_dir), or the settings it was trained with")


# ---- the stage tasks ----------------------------------------------------------------------------
class StageTask(loop.Task):
    """One prerequisite network: `init_params`, `loss(params, frozen, batch, rng) -> (loss, metrics)`
    and a loader; the update (AdamW, clipping) is shared. Built from its `stage_config` alone: the
    report tokenizer is read from the prepared root."""

    stage = ""

    def __init__(self, config, workdir: str | None = None):
        if config.model != f"cxr_irgen.{self.stage}" or not config.cxr_irgen.get("prepared_dir"):
            raise ValueError(f"{type(self).__name__} takes stage_config(config, {self.stage!r}, root), not a "
                             f"config of model {config.model!r}")
        super().__init__(config, workdir)
        self.main = config
        self.tokenizer = workdir_tokenizer(config.cxr_irgen.prepared_dir, config.data, config.cxr_irgen.vocab_size)
        self.s = config.cxr_irgen[self.stage]
        self.tx = optax.chain(optax.clip_by_global_norm(1.0),
                              optax.adamw(self.s.learning_rate, weight_decay=self.s.get("weight_decay", 0.0)))
        self.name = f"cxr_irgen_{self.stage}"

    def init(self, rng):
        params = self.init_params(jax.random.fold_in(rng, 1))
        return StageState(step=jnp.zeros((), jnp.int32), rng=jax.random.fold_in(rng, 2), params=params,
                          opt_state=self.tx.init(params))

    def train_step(self, state, frozen, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        (loss, metrics), grads = jax.value_and_grad(self.loss, has_aux=True)(state.params, frozen, batch, rng)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state)
        return new, {"loss": loss, "grad_norm": optax.global_norm(grads), **metrics}

    def _loader(self, source, transforms):
        c = self.config
        return make_loader(source, transforms, c.train.batch_size, seed=c.seed + STAGES.index(self.stage),
                           worker_count=c.data.worker_count)


class AutoencoderTask(StageTask):
    stage = "autoencoder"

    def __init__(self, config, workdir: str | None = None):
        super().__init__(config, workdir)
        self.net = AutoencoderKL(vae_config(config))
        if self.s.loss not in ("l1", "l2"):
            raise ValueError(f"cxr_irgen.autoencoder.loss={self.s.loss!r} must be 'l1' or 'l2'")

    def init_params(self, rng):
        r = self.main.data.resolution
        return self.net.init(rng, jnp.zeros((1, r, r, 1)))["params"]

    def loss(self, params, frozen, batch, rng):
        x = aug.to_float(batch["frontal"])
        recon, posterior = self.net.apply({"params": params}, x, rng)
        err = recon - x
        rec = jnp.mean(jnp.abs(err)) if self.s.loss == "l1" else jnp.mean(jnp.square(err))
        kl = jnp.mean(posterior.kl()) / (x.shape[1] * x.shape[2])  # per pixel, as the reconstruction
        return rec + self.s.kl_weight * kl, {"reconstruction": rec, "kl": kl}

    def train_loader(self):
        d = self.main.data
        return self._loader(open_split(d, "train", views=("frontal",)),
                            [ToModelInputs.from_data_config(d, views=("frontal",))])


def read_latent_stats(directory: str):
    """{"latent_scale", "latent_shift"} from `directory/latent_scale.json`; None when absent or
    written before the shift was measured (its denoiser would not match: measure again)."""
    path = os.path.join(directory, LATENT_SCALE_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        stats = json.load(f)
    if "latent_shift" not in stats:
        return None
    return {"latent_scale": float(stats["latent_scale"]), "latent_shift": np.asarray(stats["latent_shift"], np.float32)}


def measure_latent_stats(config, ae_params, directory: str, num_images: int) -> dict:
    """The mean latent (H, W, C: the shift) and 1 / std about it (the scale) of posterior samples of
    up to `num_images` training images, so the denoiser sees zero-mean, unit-variance latents.

    Why the whole mean latent and not a scale alone (SD's 0.18215): SD's schedule keeps signal at its
    last step (alpha_bar 0.0047). Chest X-rays share their layout, so the mean latent is large, and
    through that leak a denoiser learns to find it in x_T; started from pure noise, which lacks it,
    the samples drift to textures (seen here with scale-only and with per-channel-centred latents).
    Centred latents make pure noise the right start. Written to `directory/latent_scale.json`."""
    stats = read_latent_stats(directory)
    if stats is not None:
        return stats
    net = AutoencoderKL(vae_config(config))
    d = config.data
    source = open_split(d, "train", views=("frontal",))
    n = max(2, min(len(source), int(num_images)))
    batch = min(n, 64)
    loader = make_loader(source, [ToModelInputs.from_data_config(d, views=("frontal",))], batch, seed=config.seed,
                         shuffle=True, num_epochs=1, drop_remainder=False)
    encode = jax.jit(lambda p, x, k: vae_encode(net, p, aug.to_float(x)).sample(k))
    total, total_sq, count = 0.0, 0.0, 0
    for i, b in enumerate(loader):
        z = np.asarray(encode(ae_params, b["frontal"], jax.random.PRNGKey(i)), np.float64)
        total, total_sq, count = total + z.sum(0), total_sq + np.square(z).sum(0), count + len(z)
        if count >= n:
            break
    shift = total / count
    variance = np.maximum(total_sq / count - np.square(shift), 0.0)  # per latent position, about its mean
    std = float(np.sqrt(max(float(variance.mean()), 1e-12)))
    stats = {"latent_scale": 1.0 / std, "latent_shift": shift.astype(np.float32)}
    os.makedirs(directory, exist_ok=True)
    with atomic_open(os.path.join(directory, LATENT_SCALE_FILE), "w") as f:
        json.dump({"latent_scale": stats["latent_scale"], "latent_std": std,
                   "channel_mean": shift.mean((0, 1)).tolist(),
                   "channel_std": np.sqrt(variance.mean((0, 1))).tolist(), "num_images": int(count),
                   "latent_shift": np.round(shift, 6).tolist()}, f)
    logging.info("CXR-IRGen: latents of %d images: channel means %s, std about the mean latent %.4f -> scale %.5f",
                 count, np.round(shift.mean((0, 1)), 4).tolist(), std, stats["latent_scale"])
    return stats


class ClipTask(StageTask):
    """Trained on the report tokenizer's prompt ids; a pretrained CLIP is loaded instead (task._stage)."""

    stage = "clip"

    def __init__(self, config, workdir: str | None = None):
        super().__init__(config, workdir)
        self.net = clip_model(config, self.tokenizer.vocab_size)

    def init_params(self, rng):
        return self.net.init(rng, **clip_init_inputs(self.net))["params"]

    def loss(self, params, frozen, batch, rng):
        out = self.net.apply({"params": params}, batch["prompt_ids"], batch["prompt_mask"],
                             clip_images(self.main, self.net, batch["frontal"]))
        loss = clip_nn.clip_loss(out["text"][1], out["image"][1], out["logit_scale"], groups=label_groups(batch["labels"]))
        return loss, {"logit_scale": jnp.exp(out["logit_scale"])}

    def train_loader(self):
        m = self.main
        t = CxrInputs(self.tokenizer, m.data.resolution, prompt_len=m.cxr_irgen.prompt_len,
                      uncertain_as=m.data.uncertain_as)
        return self._loader(open_split(m.data, "train", views=("frontal",)), [t])


class TextAutoencoderTask(StageTask):
    """Reports by `report_tokenizer`; with `language.pretrained` the parameters start from the
    folder's (`warm_start`: all of them; the pooling has none of its own), then train as usual."""

    stage = "language"

    def __init__(self, config, workdir: str | None = None):
        super().__init__(config, workdir)
        self.tokenizer = report_tokenizer(config, self.tokenizer)
        self.net = report_model(config, self.tokenizer.vocab_size)

    def init_params(self, rng):
        return self.init_with(self.main, self.net, rng)

    @staticmethod
    def init_with(config, net, rng):
        n = config.cxr_irgen.report_len
        return net.init(rng, jnp.zeros((1, n), jnp.int32), jnp.ones((1, n)))["params"]

    def warm_start(self, state):
        if not pretrained_bart(self.main):
            return state
        bart = from_pretrained(self.main, "language", bart_weights.load_bart, self.net.config)
        params = {**state.params, "bart": bart}
        if jax.tree.structure(params) != jax.tree.structure(state.params):
            raise ValueError(f"cxr_irgen.language.pretrained={pretrained_bart(self.main)}: its parameters do not "
                             "match the language module's")
        logging.info("CXR-IRGen: language stage starts from %s", pretrained_bart(self.main))
        params = jax.tree.map(lambda new, old: jnp.asarray(new, old.dtype), params, state.params)
        return state.replace(params=params, opt_state=self.tx.init(params))

    def loss(self, params, frozen, batch, rng):
        ids, mask = batch["report_ids"], batch["report_mask"]
        logits = self.net.apply({"params": params}, ids, mask, deterministic=False, rngs={"dropout": rng})
        return language.reconstruction_loss(logits, ids, mask), {"token_accuracy": language.token_accuracy(logits, ids, mask)}

    def train_loader(self):
        m = self.main
        t = CxrInputs(self.tokenizer, m.data.resolution, report_len=m.cxr_irgen.report_len,
                      sections=tuple(m.cxr_irgen.report_sections), images=False)
        return self._loader(ReportSource(open_split(m.data, "train", views=("frontal",))), [t])


class PriorTask(StageTask):
    """Reads the frozen autoencoder (params, latent scale and shift) and the stage-1 text
    autoencoder's params, its prerequisite runs: `frozen()` loads them, and the loop passes them to
    the jitted step as an argument."""

    stage = "prior"

    def __init__(self, config, workdir: str | None = None):
        super().__init__(config, workdir)
        self.tokenizer = report_tokenizer(config, self.tokenizer)
        self.net = prior_model(config, self.tokenizer.vocab_size)
        self.vae = AutoencoderKL(vae_config(config))
        self.text = report_model(config, self.tokenizer.vocab_size)
        self._frozen = None
        if self.s.loss not in language.PRIOR_LOSSES:
            raise ValueError(f"cxr_irgen.prior.loss={self.s.loss!r} is not one of {language.PRIOR_LOSSES}")

    def prerequisites(self) -> list[loop.Prerequisite]:
        return stage_prerequisites(self.main, ("autoencoder", "language"))

    def prerequisite_mismatch(self, prerequisite, error):
        return stage_mismatch(self.main, prerequisite.name, prerequisite.directory, error)

    def frozen(self, phase: int = 0) -> dict:
        if self._frozen is None:
            stats = latent_stats(self.main)
            self._frozen = {"autoencoder": load_stage(self.main, "autoencoder"),
                            "language": load_stage(self.main, "language"),
                            "latent_scale": np.float32(stats["latent_scale"]),
                            "latent_shift": np.asarray(stats["latent_shift"], np.float32)}
        return self._frozen

    def random_frozen(self, phase: int, rng) -> dict:
        m = self.main
        k_ae, k_text = jax.random.split(rng)
        return {"autoencoder": AutoencoderKL(vae_config(m)).init(k_ae, jnp.zeros((1, m.data.resolution,
                                                                                  m.data.resolution, 1)))["params"],
                "language": TextAutoencoderTask.init_with(m, self.text, k_text),
                "latent_scale": np.float32(1.0),
                "latent_shift": np.zeros((latent_side(m), latent_side(m), vae_config(m).latent_channels), np.float32)}

    def init_params(self, rng):
        side, ch = latent_side(self.main), vae_config(self.main).latent_channels
        return self.net.init(rng, jnp.zeros((1, side, side, ch)))["params"]

    def loss(self, params, frozen, batch, rng):
        k_z, k_drop = jax.random.split(rng)
        posterior = vae_encode(self.vae, frozen["autoencoder"], aug.to_float(batch["frontal"]))
        latents = normalize_latents(posterior.sample(k_z), frozen["latent_scale"], frozen["latent_shift"])
        target = self.text.apply({"params": frozen["language"]}, batch["report_ids"], batch["report_mask"],
                                 method=self.text.encode_report)
        pred = self.net.apply({"params": params}, latents, deterministic=False, rngs={"dropout": k_drop})
        loss = language.prior_loss(pred, target, self.s.loss, self.s.cosine_weight)
        return loss, {"cosine": jnp.mean(language.cosine_similarity(pred, target))}

    def train_loader(self):
        m = self.main
        t = CxrInputs(self.tokenizer, m.data.resolution, report_len=m.cxr_irgen.report_len,
                      sections=tuple(m.cxr_irgen.report_sections), uncertain_as=m.data.uncertain_as)
        return self._loader(IndexedSource(open_split(m.data, "train", views=("frontal",))), [t])


# stage name -> its task class
STAGE_TASKS = {"autoencoder": AutoencoderTask, "clip": ClipTask, "language": TextAutoencoderTask, "prior": PriorTask}


def is_pretrained(config, stage: str) -> bool:
    """A pretrained autoencoder or CLIP is loaded from its folder, never trained here."""
    return bool({"autoencoder": pretrained_vae, "clip": pretrained_clip}.get(stage, lambda c: "")(config))


def stage_task(config, stage: str) -> StageTask:
    """The task of `stage` of a (main or stage) config whose `cxr_irgen.prepared_dir` is set."""
    c = stage_config(config, stage, config.cxr_irgen.prepared_dir)
    return STAGE_TASKS[stage](c, stage_dir(config, stage))


def stage_prerequisites(config, names=STAGES) -> list[loop.Prerequisite]:
    """The stage runs among `names` that train here (pretrained ones are loaded instead)."""
    root = config.cxr_irgen.prepared_dir
    return [loop.Prerequisite(name, stage_config(config, name, root), stage_dir(config, name))
            for name in names if not is_pretrained(config, name)]


def load_stage(config, stage: str):
    """Params of a stage: its pretrained folder's, else its run's latest checkpoint (a checkpoint that
    does not fit the config is a clear error naming the differing settings)."""
    if stage == "autoencoder" and pretrained_vae(config):
        return weights.load_diffusers_vae(pretrained_vae(config))
    if stage == "clip" and pretrained_clip(config):
        return load_pretrained_clip(config, clip_model(config, vocab_size=0))  # the folder's own vocabulary
    task = stage_task(config, stage)
    try:
        state, _ = loop.restore_latest(task, task.config, stage_dir(config, stage))
    except CheckpointMismatchError as e:
        raise stage_mismatch(config, stage, stage_dir(config, stage), e) from e
    return state.params


def latent_stats(config) -> dict:
    """{"latent_scale", "latent_shift"} of the autoencoder (measured once, then read).

    With both the autoencoder and the U-Net pretrained, the U-Net was trained in its autoencoder's
    own latent space: scaling_factor and shift_factor from the VAE's config.json (SD-1.x: 0.18215,
    no shift). Otherwise the denoiser is trained here and gets measured, centred latents (see
    `measure_latent_stats`), also for a pretrained autoencoder."""
    side, ch = latent_side(config), vae_config(config).latent_channels
    if pretrained_vae(config) and config.cxr_irgen.unet.get("pretrained", ""):
        cfg = vae_config(config)
        return {"latent_scale": float(cfg.scaling_factor),
                "latent_shift": np.full((side, side, ch), cfg.shift_factor or 0.0, np.float32)}
    directory = stage_dir(config, "autoencoder")
    stats = read_latent_stats(directory)
    if stats is None:
        stats = measure_latent_stats(config, load_stage(config, "autoencoder"), directory,
                                     config.cxr_irgen.autoencoder.scale_images)
    if np.shape(stats["latent_shift"]) != (side, side, ch):
        raise ValueError(f"{directory}/{LATENT_SCALE_FILE}: latent_shift has shape {np.shape(stats['latent_shift'])}, "
                         f"the latents {(side, side, ch)}; delete the file to measure it again (and retrain the "
                         "prior and the denoiser on it)")
    return stats
