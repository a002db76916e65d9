"""`--mode=sample` for CXR-IRGen: labels -> image + report; an X-ray -> report.

- `--labels="Cardiomegaly,Pleural Effusion=0"`: `sample.num_samples` draws (seeds sample.seed + k);
  `--labels_file=F.csv`: one draw per row (its id); neither: the first `sample.num_samples` studies of
  the test split (their real image beside the generated one in the grid). Each request becomes the
  label prompt and a reference image (a training image with the same labels; none: zeros), the
  denoiser samples latents (`sample.sampler`, `sample.num_steps`, `sample.guidance_scale`), the
  autoencoder decodes them, and the prior maps the same latents to a text vector that the
  language decoder turns into the report (`sample.report_method`).
- `--image=X.png`: the report only (autoencoder latents of the image -> prior -> decoder).
Writes WORKDIR/samples/<id>/{image.png, report.txt}, grid.png and summary.json (entries of earlier
calls kept; this call's replace those with the same ids).
"""

from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image

from xray_gen.data.schema import CHEXPERT_LABELS
from xray_gen.files import atomic_open, merge_json_summary
from xray_gen.images import write_grid, write_png
from xray_gen.models.cxr_irgen import diffusion, language
from xray_gen.models.cxr_irgen.conditioning import label_prompt


def sampler_config(config) -> diffusion.SamplerConfig:
    s = config.sample
    return diffusion.SamplerConfig(sampler=s.sampler, num_steps=int(s.num_steps),
                                   guidance_scale=float(s.guidance_scale) if s.guidance_scale else None,
                                   prediction=config.cxr_irgen.prediction, eta=float(s.eta))


def _report_ids(task, frozen, latents, rng):
    s = task.config.sample
    vectors = task.prior.apply({"params": frozen["prior"]}, latents)
    return language.generate(task.text_model, frozen["language"], vectors, method=s.report_method,
                             max_len=task.config.cxr_irgen.report_len, rng=rng, beam_size=int(s.beam_size),
                             top_p=float(s.top_p))


def _batched(fn, arrays: dict, batch_size: int) -> dict:
    """Runs `fn(batch dict) -> dict` over rows in fixed-size batches (the last one padded)."""
    n = len(next(iter(arrays.values())))
    chunks: dict = {}
    for start in range(0, n, batch_size):
        part = {k: v[start:start + batch_size] for k, v in arrays.items()}
        pad = batch_size - len(next(iter(part.values())))
        if pad:
            part = {k: np.concatenate([v, np.repeat(v[-1:], pad, 0)]) for k, v in part.items()}
        out = jax.device_get(fn(part))
        for k, v in out.items():
            chunks.setdefault(k, []).append(np.asarray(v)[:batch_size - pad])
    return {k: np.concatenate(v) for k, v in chunks.items()}


def pair_fn(task):
    """The pure `(state, frozen, batch) -> {"images", "latents", "report_ids", "report_lengths"}` of
    `generate_pairs` (batch: prompt_ids/mask, reference, reference_flag, seed); jit it. The frozen
    stages are an argument, so they are not constants of the sampling program."""
    cfg = sampler_config(task.config)

    def run(state, frozen, batch):
        batch = dict(batch)
        null = jax.tree.map(jnp.asarray, task.null_inputs())
        keys = jax.vmap(jax.random.PRNGKey)(batch.pop("seed"))
        cond = task.condition_of(frozen["clip"], batch)
        x_T = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), task.latent_shape))(keys)
        z = diffusion.sample(task.denoise_fn(state.params), task.schedule, x_T, cond, task.condition_of(frozen["clip"], null),
                             cfg, rng=jax.random.fold_in(keys[0], 1))
        images = task.decode_latents(frozen["autoencoder"], z, state)
        ids, lengths = _report_ids(task, frozen, z, jax.random.fold_in(keys[0], 2))
        return {"images": images, "latents": z, "report_ids": ids, "report_lengths": lengths}

    return run


def generate_pairs(task, state, inputs: dict, seeds, batch_size: int) -> dict:
    """Image + report per row of `inputs` (prompt_ids/mask, reference, reference_flag), each from its
    own seed (so a sample is the same whatever it is batched with): {"images" [-1, 1], "latents",
    "report_ids", "report_lengths"}."""
    frozen, run = task.frozen(), jax.jit(pair_fn(task))
    arrays = {**{k: np.asarray(v) for k, v in inputs.items()}, "seed": np.asarray(seeds, np.uint32)}
    return _batched(lambda b: run(state, frozen, b), arrays, batch_size)


def reports_for_images(task, state, images_uint8: np.ndarray, batch_size: int, seed: int = 0) -> dict:
    """Reports of real images (N, R, R, 1) uint8: posterior-mean latents -> prior -> decoder."""
    frozen = task.frozen()

    @jax.jit
    def run(state, frozen, batch):
        z = task.encode_latents(frozen["autoencoder"], batch["images"], None, state)
        ids, lengths = _report_ids(task, frozen, z, jax.random.PRNGKey(seed))
        return {"report_ids": ids, "report_lengths": lengths}

    return _batched(lambda b: run(state, frozen, b), {"images": np.asarray(images_uint8)}, batch_size)


def decode_reports(tokenizer, ids: np.ndarray) -> list[str]:
    """Decoded sentences joined into one report, each ending in '.' (the labeler splits on it)."""
    texts = []
    for row in ids:
        sentences = tokenizer.decode_flat(row)
        texts.append(" ".join(s.strip().rstrip(".").strip() + "." for s in sentences if s.strip(" .")))
    return texts


def condition_inputs(task, raw_labels: np.ndarray, seeds) -> tuple[dict, list]:
    """Prompt ids/mask and a reference image per requested (14,) label vector -> (inputs, reference
    training indices or None)."""
    x, r = task.config.cxr_irgen, task.config.data.resolution
    ids, masks, refs, flags, chosen = [], [], [], [], []
    references = task.references() if x.reference_image else None
    for labels, seed in zip(raw_labels, seeds):
        i, m = task.prompt_tokenizer.encode_flat(label_prompt(labels), task.prompt_len)
        ids.append(i)
        masks.append(m)
        j = None
        if references is not None:
            j = references.index.reference_for(labels, np.random.default_rng(seed), fallback=x.reference_fallback)
        refs.append(references.image(j) if j is not None else np.zeros((r, r, 1), np.uint8))
        flags.append(np.float32(j is not None))
        chosen.append(j)
    inputs = {"prompt_ids": np.stack(ids), "prompt_mask": np.stack(masks), "reference": np.stack(refs),
              "reference_flag": np.asarray(flags, np.float32)}
    return inputs, chosen


def _slug(labels: np.ndarray) -> str:
    names = [CHEXPERT_LABELS[i] for i in np.flatnonzero(labels == 1.0)]
    return ("+".join(re.sub(r"[^a-z0-9]+", "-", n.lower()).strip("-") for n in names) or "no-positive")[:80]


def _named(values: np.ndarray) -> dict:
    return {n: float(v) for n, v in zip(CHEXPERT_LABELS, values) if not np.isnan(v)}


def load_image(path: str, resolution: int) -> np.ndarray:
    """A PNG/JPEG X-ray -> uint8 (R, R, 1) grey, bilinear to the model's resolution."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--image={path}: no such file")
    try:
        image = Image.open(path).convert("L").resize((resolution, resolution), Image.BILINEAR)
    except OSError as e:
        raise ValueError(f"--image={path}: not a readable image ({e})") from e
    return np.asarray(image, np.uint8)[..., None]


def _requests(task, labels, labels_file):
    from xray_gen.data.label_requests import parse_labels, read_label_file

    c = task.config
    if labels is not None:
        vec = parse_labels(labels)
        n = int(c.sample.num_samples)
        return ([f"{_slug(vec)}_seed{c.sample.seed + k}" for k in range(n)], np.repeat(vec[None], n, 0), None)
    if labels_file is not None:
        ids, raw = read_label_file(labels_file)
        if len(set(ids)) != len(ids):
            raise ValueError(f"{labels_file}: the id column repeats ids; each row needs its own (its output folder)")
        return ids, raw, None
    from xray_gen.data.pipeline import ToModelInputs, open_split

    source = open_split(c.data, "test", views=("frontal",))
    n = min(len(source), int(c.sample.num_samples))
    to_inputs = ToModelInputs.from_data_config(c.data, views=("frontal",))
    examples = [source[i] for i in range(n)]
    raw = np.stack([np.asarray(ex["labels"], np.float32) for ex in examples])
    return [f"test_{i}" for i in range(n)], raw, [to_inputs.map(ex)["frontal"] for ex in examples]


def sample(task, state, workdir: str, labels=None, labels_file=None, image=None) -> dict:
    """Writes this call's samples (see the module doc); returns {id: summary entry}."""
    from xray_gen.data.labeler import label_reports

    c = task.config
    given = [n for n, v in (("labels", labels), ("labels_file", labels_file), ("image", image)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"give one of --labels, --labels_file, --image (got --{', --'.join(given)})")
    out_dir = os.path.join(workdir, "samples")
    summary, rows = {}, []
    if image is not None:
        pixels = load_image(image, c.data.resolution)
        report_ids = reports_for_images(task, state, pixels[None], 1, c.sample.seed)["report_ids"]
        text = decode_reports(task.report_tokenizer, report_ids)[0]
        sid = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.splitext(os.path.basename(image))[0]) + "_report"
        os.makedirs(os.path.join(out_dir, sid), exist_ok=True)
        with atomic_open(os.path.join(out_dir, sid, "report.txt"), "w") as f:
            f.write(text + "\n")
        summary[sid] = {"image": os.path.abspath(image), "report": text,
                        "report_labels": _named(label_reports([text])[0]), "files": ["report.txt"]}
    else:
        ids, raw, real = _requests(task, labels, labels_file)
        seeds = [int(c.sample.seed) + k for k in range(len(ids))]
        inputs, chosen = condition_inputs(task, raw, seeds)
        out = generate_pairs(task, state, inputs, seeds, min(len(ids), int(c.sample.batch_size)))
        texts = decode_reports(task.report_tokenizer, out["report_ids"])
        report_labels = label_reports(texts)
        for i, sid in enumerate(ids):
            os.makedirs(os.path.join(out_dir, sid), exist_ok=True)
            write_png(os.path.join(out_dir, sid, "image.png"), out["images"][i])
            with atomic_open(os.path.join(out_dir, sid, "report.txt"), "w") as f:
                f.write(texts[i] + "\n")
            summary[sid] = {"seed": seeds[i], "requested": _named(raw[i]), "prompt": label_prompt(raw[i]),
                            "reference_train_index": chosen[i], "report": texts[i],
                            "report_labels": _named(report_labels[i]), "files": ["image.png", "report.txt"]}
        rows = ([[out["images"][i], real[i]] for i in range(len(ids))] if real is not None
                else [list(out["images"][i:i + 8]) for i in range(0, len(ids), 8)])
    os.makedirs(out_dir, exist_ok=True)
    if rows:
        write_grid(os.path.join(out_dir, "grid.png"), rows)
    merge_json_summary(os.path.join(out_dir, "summary.json"), summary)  # earlier calls' entries kept
    logging.info("wrote %d CXR-IRGen samples to %s", len(summary), out_dir)
    return summary
