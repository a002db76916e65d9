"""`--mode=sample` for EMIXER: label vectors -> image PNG + report text per sample.

Label vectors come from `--labels="Cardiomegaly,Pleural Effusion"` (`sample.num_samples` draws,
seeds `sample.seed + k`), `--labels_file` (one draw per row, its ids) or, by default, the first
`sample.num_samples` studies of the test split (their real image shown beside in the grid).
Unrequested findings (NaN) condition as negative, uncertain ones as `data.uncertain_as`: the
same binarisation the training targets get.

Every sample has its own noise key, and a batch is one jitted call that vmaps `task.generate`
over the keys, so sample k is the same image whatever the batch size or how many samples are
drawn with it. Writes WORKDIR/samples/<id>/{image.png, report.txt}, grid.png and summary.json
(entries of earlier calls kept; each with the requested labels by name, the report, the report
labeler's labels of it and the evaluation classifier's probabilities for the image).
"""

from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from xray_gen.data.schema import CHEXPERT_LABELS, binarize
from xray_gen.files import atomic_open, merge_json_summary
from xray_gen.images import write_grid, write_png

EMPTY_NOTE = "F stopped before its first sentence: the report is empty"


def conditioning(labels: np.ndarray, uncertain_as: float) -> np.ndarray:
    """Raw (N, 14) labels (1/0/-1/NaN) -> the generator's multi-hot input, as in training."""
    targets, mask = binarize(labels, uncertain_as)
    return (targets * mask).astype(np.float32)


def report_text(sentences: list[str]) -> str:
    """Decoded sentences (lower-case, no final stop) -> one report, each sentence ending in '.',
    so the labeler's sentence splitting (and negation scope) sees the sentence boundaries."""
    return " ".join(s.strip().rstrip(".").strip() + "." for s in sentences if s.strip())


def load_classifier(task):
    """(net, variables, thresholds) of the run's evaluation classifier, or None when it has no
    checkpoint (sampling then omits the probabilities and says why)."""
    try:
        cls_task, cls_state = task.classifier().load()
    except (FileNotFoundError, ValueError) as e:
        logging.warning("no evaluation classifier (%s): image probabilities are left out", e)
        return None
    return cls_task.net, {"params": cls_state.params, "batch_stats": cls_state.batch_stats}, cls_task.thresholds()


def generate_batches(task, state, y: np.ndarray, keys: jax.Array, batch_size: int, classifier=None) -> dict:
    """Images, report ids/mask (and the classifier's probs/features) for label vectors `y` (N, 14)
    with one noise key per row; one jitted call per batch of `batch_size` (the last one padded)."""
    beam = int(task.config.sample.get("beam_size", 0))
    net = classifier[0] if classifier else None

    @jax.jit
    def run(state, cls_vars, y, keys):
        one = lambda yi, k: jax.tree.map(lambda a: a[0], task.generate(state, yi[None], k, beam))
        images, report = jax.vmap(one)(y, keys)
        out = {"images": images, "ids": report["ids"], "mask": report["mask"]}
        if net is not None:
            grey = images.mean(axis=-1, keepdims=True) if images.shape[-1] != 1 else images
            logits, features = net.apply(cls_vars, grey, train=False)
            out.update(probs=jax.nn.sigmoid(logits), features=features)
        return out

    cls_vars = classifier[1] if classifier else {}
    n = len(y)
    chunks: dict[str, list] = {}
    for start in range(0, n, batch_size):
        yb, kb = y[start:start + batch_size], keys[start:start + batch_size]
        pad = batch_size - len(yb)
        if pad:  # one compiled shape for every batch
            yb = np.concatenate([yb, np.repeat(yb[-1:], pad, 0)])
            kb = jnp.concatenate([kb, jnp.repeat(kb[-1:], pad, 0)])
        out = jax.device_get(run(state, cls_vars, jnp.asarray(yb), kb))
        for k, v in out.items():
            chunks.setdefault(k, []).append(np.asarray(v)[:batch_size - pad])
    return {k: np.concatenate(v) for k, v in chunks.items()}


def decode_reports(tokenizer, ids: np.ndarray, mask: np.ndarray) -> list[str]:
    return [report_text(tokenizer.decode_hierarchical(i, m)) for i, m in zip(ids, mask)]


def _slug(labels: np.ndarray) -> str:
    names = [CHEXPERT_LABELS[i] for i in np.flatnonzero(labels == 1.0)]
    slug = "+".join(re.sub(r"[^a-z0-9]+", "-", n.lower()).strip("-") for n in names) or "no-positive"
    return slug[:80]


def _named(values: np.ndarray, keep_nan: bool = False) -> dict:
    return {name: (None if np.isnan(v) else float(v)) for name, v in zip(CHEXPERT_LABELS, values)
            if keep_nan or not np.isnan(v)}


def _requests(task, labels: str | None, labels_file: str | None):
    """(ids, raw labels (N, 14), seeds, real images or None) of this call."""
    from xray_gen.data.label_requests import parse_labels, read_label_file

    c = task.config
    if labels is not None and labels_file is not None:
        raise ValueError("give --labels or --labels_file, not both")
    if labels is not None:
        vec = parse_labels(labels)
        n = int(c.sample.num_samples)
        return [f"{_slug(vec)}_seed{c.sample.seed + k}" for k in range(n)], np.repeat(vec[None], n, 0), \
            [c.sample.seed + k for k in range(n)], None
    if labels_file is not None:
        ids, raw = read_label_file(labels_file)
        if len(set(ids)) != len(ids):
            raise ValueError(f"{labels_file}: the id column repeats ids; each row needs its own (its output folder)")
        return ids, raw, [c.sample.seed + k for k in range(len(ids))], None
    from xray_gen.data import augment as aug
    from xray_gen.data.pipeline import ToModelInputs, open_split
    from xray_gen.data.schema import Study

    source = open_split(c.data, "test", views=("frontal",))
    n = min(len(source), int(c.sample.num_samples))
    to_inputs = ToModelInputs.from_data_config(c.data, views=("frontal",))
    studies = [source[i] for i in range(n)]
    raw = np.stack([np.asarray(ex["labels"], np.float32) for ex in studies])
    real = [np.asarray(aug.to_float(to_inputs.map(ex)["frontal"])) for ex in studies]
    reports = [" ".join(f"{s.findings} {s.impression}".split()) for s in map(Study.from_example, studies)]
    return [f"test_{i}" for i in range(n)], raw, [c.sample.seed + k for k in range(n)], (real, reports)


def sample(task, state, workdir: str, labels: str | None = None, labels_file: str | None = None) -> dict:
    """Writes this call's samples (see the module doc); returns {id: summary entry}."""
    from xray_gen.data.labeler import label_reports

    c = task.config
    ids, raw, seeds, real = _requests(task, labels, labels_file)  # bad names fail here, before any compile
    y = conditioning(raw, c.data.uncertain_as)
    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    classifier = load_classifier(task)
    out = generate_batches(task, state, y, keys, min(len(y), int(c.eval.batch_size)), classifier)
    texts = decode_reports(task.tokenizer, out["ids"], out["mask"])
    report_labels = label_reports(texts)
    out_dir = os.path.join(workdir, "samples")
    summary, rows = {}, []
    for i, sid in enumerate(ids):
        sample_dir = os.path.join(out_dir, sid)
        os.makedirs(sample_dir, exist_ok=True)
        write_png(os.path.join(sample_dir, "image.png"), out["images"][i])
        with atomic_open(os.path.join(sample_dir, "report.txt"), "w") as f:
            f.write(texts[i] + "\n")
        entry = summary[sid] = {
            "seed": seeds[i],
            "requested": _named(raw[i]),
            "conditioning_positive": [CHEXPERT_LABELS[j] for j in np.flatnonzero(y[i] > 0)],
            "report": texts[i],
            "report_labels": _named(report_labels[i]),
            "files": ["image.png", "report.txt"],
        }
        if not texts[i]:
            entry["note"] = EMPTY_NOTE
        if classifier is not None:
            entry["classifier_probs"] = _named(out["probs"][i].astype(np.float64), keep_nan=True)
            positive = np.flatnonzero(out["probs"][i] >= classifier[2])  # Youden thresholds
            entry["classifier_positive"] = [CHEXPERT_LABELS[j] for j in positive]
        else:
            entry["classifier_note"] = "no evaluation classifier checkpoint in this workdir"
        if real is not None:
            entry["real_report"] = real[1][i]
    if real is not None:
        rows = [[out["images"][i], real[0][i]] for i in range(len(ids))]
    else:
        rows = [list(out["images"][i:i + 8]) for i in range(0, len(ids), 8)]
    os.makedirs(out_dir, exist_ok=True)
    write_grid(os.path.join(out_dir, "grid.png"), rows)
    merge_json_summary(os.path.join(out_dir, "summary.json"), summary)
    logging.info("wrote %d EMIXER samples to %s", len(ids), out_dir)
    return summary
