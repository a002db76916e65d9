"""A labelled archive of synthetic chest X-rays by latent class optimisation (the paper's
"Synthetic Model Training": an archive with label proportions like the source data, 3-6 related
images per optimised latent, each group one synthetic patient).

Layout of ``out_dir``::

  archive.json            the settings; a rerun with other settings is refused (no mixed archives)
  images/<patient>/<n>.png
  parts/shard_<i>.json    one per finished shard: its rows and statistics
  labels.csv              every image: patient, path, optimised class, severity, convergence step,
                          label_fn's probabilities and 0/1 labels (Youden thresholds)
  metadata.csv            the same labels in the format ``python -m xray_gen.evaluate --generated``
                          reads (file, id, view + the 14 label columns)
  summary.json            per-class attempts / successes / steps / images, speed, settings

Work is split into shards of ``shard_patients`` patients whose randomness derives only from
``(seed, shard index)``; a shard is done when its part file exists (written atomically after its
PNGs), so an interrupted export resumes without redoing finished shards, and the same seed gives
the same archive. The CSVs and the summary are rebuilt from the parts at the end of every call.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from xray_gen.data.schema import CHEXPERT_LABELS, NUM_LABELS
from xray_gen.files import atomic_open
from xray_gen.images import write_png
from xray_gen.models.pggan import class_optimisation as co

__all__ = ["export_archive", "plan_patients", "ArchiveSettingsError", "LABELS_FILE", "METADATA_FILE"]

SETTINGS_FILE = "archive.json"
LABELS_FILE = "labels.csv"
METADATA_FILE = "metadata.csv"  # the name xray_gen.evaluation.generated_folder looks for
SUMMARY_FILE = "summary.json"
PARTS_DIR = "parts"
IMAGES_DIR = "images"
LABEL_COLUMNS = ["patient_id", "image_path", "optimised_class", "severity", "converged_step"] + [
    f"prob_{name}" for name in CHEXPERT_LABELS] + list(CHEXPERT_LABELS)
METADATA_COLUMNS = ["file", "id", "view"] + list(CHEXPERT_LABELS)


class ArchiveSettingsError(ValueError):
    """out_dir holds an archive made with other settings (or something that is not an archive)."""


# ------------------------------------------------------------------------------------------------
# Plan
# ------------------------------------------------------------------------------------------------


def _normalised_proportions(class_proportions) -> np.ndarray:
    p = np.asarray(class_proportions, np.float64)
    if p.shape != (NUM_LABELS,):
        raise ValueError(f"class_proportions must have {NUM_LABELS} values (one per CHEXPERT_LABELS), "
                         f"got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError(f"class_proportions must be finite and >= 0, got {p.tolist()}")
    if p.sum() <= 0:
        raise ValueError("class_proportions are all 0: no class to optimise for")
    return p / p.sum()


def _image_quotas(num_images: int, p: np.ndarray) -> np.ndarray:
    """Images per class summing to num_images (largest remainder; ties to the lower class index)."""
    raw = num_images * p
    quota = np.floor(raw).astype(np.int64)
    order = sorted(range(len(p)), key=lambda c: (-(raw[c] - quota[c]), c))
    for c in order[: num_images - int(quota.sum())]:
        quota[c] += 1
    return quota


def plan_patients(num_images: int, class_proportions, seed: int, series_min: int = 3,
                  series_max: int = 6) -> List[tuple]:
    """The archive's patients as ``(class index, series length)`` in export order.

    Each class with a positive quota (``num_images`` split by the proportions) gets patients of
    series lengths drawn uniformly in ``[series_min, series_max]`` until their images reach the
    quota, so the total reaches ``num_images`` when every class converges. The order is shuffled
    so that every shard mixes classes. Depends only on the arguments (numpy RNG from ``seed``).
    """
    if not 1 <= series_min <= series_max:
        raise ValueError(f"need 1 <= series_min <= series_max, got {series_min}, {series_max}")
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    quotas = _image_quotas(int(num_images), _normalised_proportions(class_proportions))
    rng = np.random.default_rng(seed)
    patients = []
    for c, quota in enumerate(quotas):
        images = 0
        while images < quota:
            length = int(rng.integers(series_min, series_max + 1))
            patients.append((c, length))
            images += length
    return [patients[i] for i in rng.permutation(len(patients))]


# ------------------------------------------------------------------------------------------------
# Settings (archive.json)
# ------------------------------------------------------------------------------------------------


def _check_settings(out_dir: str, settings: Dict[str, Any]) -> None:
    """Writes archive.json for a new archive; raises naming every differing setting otherwise."""
    path = os.path.join(out_dir, SETTINGS_FILE)
    settings = json.loads(json.dumps(settings))  # compare as stored (tuples -> lists)
    if not os.path.exists(path):
        leftovers = [n for n in (PARTS_DIR, LABELS_FILE, IMAGES_DIR) if os.path.exists(os.path.join(out_dir, n))]
        if leftovers:
            raise ArchiveSettingsError(
                f"{out_dir} has {', '.join(leftovers)} but no {SETTINGS_FILE}: not an archive made by "
                f"export_archive (or its settings file was deleted); use an empty or new out_dir")
        with atomic_open(path) as f:
            json.dump(settings, f, indent=1, sort_keys=True)
        return
    with open(path) as f:
        try:
            stored = json.load(f)
        except json.JSONDecodeError as e:
            raise ArchiveSettingsError(f"{path}: not valid JSON ({e})") from None
    keys = sorted(set(stored) | set(settings))
    diff = [f"{k}: archive has {stored.get(k, '<missing>')!r}, this call {settings.get(k, '<missing>')!r}"
            for k in keys if stored.get(k) != settings.get(k)]
    if diff:
        raise ArchiveSettingsError(
            f"{out_dir} holds an archive made with different settings; refusing to mix them. Use a "
            f"new out_dir or the archive's settings. Differences:\n  " + "\n  ".join(diff))


# ------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------


def _write_png(path: str, image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"generate_fn must return (N, H, W, 1 or 3) images, got an image of shape "
                         f"{image.shape}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_png(path, image)  # (H, W, 1) -> grey "L", (H, W, 3) -> "RGB"


def _pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
    """a with its first axis zero-padded to `rows` (one compiled shape for every chunk)."""
    return np.concatenate([a, np.zeros((rows - len(a),) + a.shape[1:], a.dtype)]) if len(a) < rows else a


def _fmt(x: float) -> str:
    return f"{x:.6f}"


# ------------------------------------------------------------------------------------------------
# One shard
# ------------------------------------------------------------------------------------------------


class _Shard:
    """Optimises, renders, labels and writes one shard; returns its part (rows + statistics)."""

    def __init__(self, index, patients, *, seed, optimiser, render, target_base, latent_dim,
                 batch_size, truncation, neighbour_std, series_max, max_attempts, out_dir, patient_ids):
        self.index, self.patients = index, patients  # [(global index, class, length)]
        self.key = jax.random.fold_in(jax.random.PRNGKey(seed), index)
        self.optimiser, self.render, self.target_base = optimiser, render, target_base
        self.latent_dim, self.batch_size, self.truncation = latent_dim, batch_size, truncation
        self.neighbour_std, self.series_max, self.max_attempts = neighbour_std, series_max, max_attempts
        self.out_dir, self.patient_ids = out_dir, patient_ids

    def _optimise(self):
        """{global index: (z, margin, step)} of the converged patients, and per-class stats."""
        stats = {c: {"attempts": 0, "successes": 0, "steps": []} for _, c, _ in self.patients}
        pending = [(g, c) for g, c, _ in self.patients]
        accepted, latents, seconds = {}, 0, 0.0
        k_opt = jax.random.fold_in(self.key, 0)
        bs = self.batch_size
        for attempt in range(self.max_attempts):
            if not pending:
                break
            k_round = jax.random.fold_in(k_opt, attempt)
            start = time.perf_counter()
            results, chunks = [], [pending[i:i + bs] for i in range(0, len(pending), bs)]
            for j, chunk in enumerate(chunks):
                k_z, k_m = jax.random.split(jax.random.fold_in(k_round, j))
                z0 = co.truncated_normal_latents(k_z, bs, self.latent_dim, self.truncation)
                margin = co.severity_margins(k_m, bs)
                classes = np.zeros(bs, np.int32)
                classes[: len(chunk)] = [c for _, c in chunk]
                target = np.full(bs, -np.inf, np.float32)  # padding rows converge at step 0
                target[: len(chunk)] = self.target_base[classes[: len(chunk)]]
                target = jnp.asarray(target) + jnp.where(jnp.arange(bs) < len(chunk), margin, 0.0)
                results.append((margin, self.optimiser(z0, classes, target)))  # dispatched, async
            failed = []
            for chunk, (margin, out) in zip(chunks, results):
                margin, (z, converged, steps, _) = jax.device_get((margin, out))
                latents += len(chunk)
                for row, (g, c) in enumerate(chunk):
                    stats[c]["attempts"] += 1
                    if converged[row]:
                        stats[c]["successes"] += 1
                        stats[c]["steps"].append(int(steps[row]))
                        accepted[g] = (z[row], float(margin[row]), int(steps[row]))
                    else:
                        failed.append((g, c))
            seconds += time.perf_counter() - start
            pending = failed
        return accepted, stats, latents, seconds

    def _series_latents(self, accepted):
        """(M, D) latents of every image, and [(global index, image number)] per row."""
        done = [(g, c, n) for g, c, n in self.patients if g in accepted]
        k_series = jax.random.fold_in(self.key, 1)
        series_fn = jax.vmap(co.patient_series, in_axes=(0, 0, None, None))
        zs, rows = [], []
        bs = self.batch_size
        for i in range(0, len(done), bs):
            chunk = done[i:i + bs]
            keys = jax.vmap(lambda g: jax.random.fold_in(k_series, g))(
                jnp.asarray(_pad_rows(np.asarray([g for g, _, _ in chunk], np.int32), bs)))
            centres = _pad_rows(np.stack([accepted[g][0] for g, _, _ in chunk]), bs)
            series = np.asarray(series_fn(keys, centres, self.series_max, self.neighbour_std))
            for p, (g, _, length) in enumerate(chunk):
                zs.append(series[p, :length])
                rows.extend((g, n) for n in range(length))
        return (np.concatenate(zs) if zs else np.zeros((0, self.latent_dim), np.float32)), rows

    def run(self) -> Dict[str, Any]:
        accepted, stats, latents, seconds = self._optimise()
        z_all, rows = self._series_latents(accepted)
        classes = {g: c for g, c, _ in self.patients}
        bs, out_rows = self.batch_size, []
        chunks = [range(i, min(i + bs, len(rows))) for i in range(0, len(rows), bs)]
        pending = self.render(_pad_rows(z_all[chunks[0].start:chunks[0].stop], bs)) if chunks else None
        for j, chunk in enumerate(chunks):
            images, probs, labels = jax.device_get(pending)
            if j + 1 < len(chunks):  # keep the device busy while this chunk's PNGs are written
                nxt = chunks[j + 1]
                pending = self.render(_pad_rows(z_all[nxt.start:nxt.stop], bs))
            for k, r in enumerate(chunk):
                g, n = rows[r]
                pid = self.patient_ids[g]
                rel = f"{IMAGES_DIR}/{pid}/{n}.png"
                _write_png(os.path.join(self.out_dir, rel), images[k])
                _, margin, step = accepted[g]
                out_rows.append({
                    "patient_id": pid, "image_path": rel, "optimised_class": CHEXPERT_LABELS[classes[g]],
                    "severity": _fmt(margin), "converged_step": str(step),
                    **{f"prob_{name}": _fmt(probs[k, i]) for i, name in enumerate(CHEXPERT_LABELS)},
                    **{name: "" if np.isnan(labels[k, i]) else str(int(labels[k, i]))
                       for i, name in enumerate(CHEXPERT_LABELS)}})
        planned: Dict[int, int] = {}
        for _, c, _ in self.patients:
            planned[c] = planned.get(c, 0) + 1
        return {"shard": self.index, "rows": out_rows, "latents": latents, "optimise_seconds": seconds,
                "classes": {CHEXPERT_LABELS[c]: {**s, "planned_patients": planned[c],
                                                 "patients": sum(1 for g in accepted if classes[g] == c)}
                            for c, s in stats.items()}}


# ------------------------------------------------------------------------------------------------
# Assembly
# ------------------------------------------------------------------------------------------------


def _write_csv(path: str, columns: Sequence[str], rows: List[Dict[str, str]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_open(path) as f:
        f.write(buf.getvalue())


def _summarise(parts: List[Dict[str, Any]], settings: Dict[str, Any], num_shards: int) -> Dict[str, Any]:
    per_class: Dict[str, Dict[str, Any]] = {}
    for part in parts:
        for name, s in part["classes"].items():
            acc = per_class.setdefault(name, {"planned_patients": 0, "patients": 0, "attempts": 0,
                                              "successes": 0, "steps": []})
            for k in ("planned_patients", "patients", "attempts", "successes"):
                acc[k] += s[k]
            acc["steps"] += s["steps"]
    images_by_class: Dict[str, int] = {}
    for part in parts:
        for row in part["rows"]:
            images_by_class[row["optimised_class"]] = images_by_class.get(row["optimised_class"], 0) + 1
    classes = {}
    for name in CHEXPERT_LABELS:
        if name not in per_class:
            continue
        s = per_class[name]
        steps = np.asarray(s["steps"], np.float64)
        classes[name] = {
            "planned_patients": s["planned_patients"], "patients": s["patients"],
            "missing_patients": s["planned_patients"] - s["patients"], "images": images_by_class.get(name, 0),
            "attempts": s["attempts"], "successes": s["successes"],
            "success_rate": s["successes"] / s["attempts"] if s["attempts"] else None,
            "mean_steps": float(steps.mean()) if steps.size else None,
            "median_steps": float(np.median(steps)) if steps.size else None}
    latents = sum(p["latents"] for p in parts)
    seconds = sum(p["optimise_seconds"] for p in parts)
    short = {n: c["missing_patients"] for n, c in classes.items() if c["missing_patients"]}
    return {
        "shards": num_shards, "images": sum(len(p["rows"]) for p in parts),
        "patients": sum(c["patients"] for c in classes.values()),
        "latents_optimised": latents, "optimise_seconds": seconds,
        "latents_per_s": latents / seconds if seconds > 0 else None,
        "classes": classes, "classes_short_of_patients": short,
        "complete": not short, "settings": settings}


# ------------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------------


def export_archive(out_dir: str, *, generate_fn: Callable, optimise_logits_fn: Callable,
                   label_fn: Callable, thresholds, latent_dim: int, num_images: int, class_proportions,
                   seed: int, shard_patients: int, series_min: int = 3, series_max: int = 6,
                   neighbour_std: float = 0.2, truncation: float = 0.7, max_steps: int, learning_rate: float,
                   max_attempts: int, batch_size: int, progress: Optional[Callable[[int, int], Any]] = None,
                   extra_settings: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Writes (or finishes) a labelled archive in ``out_dir`` (layout: module docstring).

    ``generate_fn(z (N, latent_dim)) -> (N, H, W, 1|3)`` float images in [-1, 1];
    ``optimise_logits_fn(images) -> (N, 14)`` the logits that latents are optimised against;
    ``label_fn(images) -> (N, 14)`` the logits that label every exported image (may be the same);
    ``thresholds`` (14,) probability cut-offs (Youden's; NaN only for classes never targeted:
    their label columns stay blank). A targeted class's goal is
    ``logit(threshold) + |N(1, 1)|``. Networks given as ``jax.tree_util.Partial(apply, params)``
    are passed to the compiled functions as arguments. ``batch_size`` latents are optimised (and
    images rendered) per device call; latents still short of their goal after ``max_steps`` are
    retried with fresh ones for up to ``max_attempts`` rounds, then the patient is dropped and the
    summary's ``classes_short_of_patients`` says so. ``extra_settings`` (e.g. the checkpoint step)
    are stored and checked with the others, since the callables themselves cannot be compared.
    Returns the summary (also written to summary.json) plus ``this_call`` (shards run / skipped).
    """
    p = _normalised_proportions(class_proportions)
    thr = np.asarray(thresholds, np.float64)
    if thr.shape != (NUM_LABELS,):
        raise ValueError(f"thresholds must have {NUM_LABELS} values, got shape {thr.shape}")
    base = co.threshold_logits(thr)
    missing = [CHEXPERT_LABELS[c] for c in np.flatnonzero((p > 0) & ~np.isfinite(base))]
    if missing:
        raise ValueError(f"thresholds are NaN for classes with a positive proportion: {', '.join(missing)}")
    for name, value in (("latent_dim", latent_dim), ("shard_patients", shard_patients),
                        ("max_attempts", max_attempts), ("batch_size", batch_size)):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    settings = {
        "seed": int(seed), "num_images": int(num_images), "class_proportions": [float(x) for x in class_proportions],
        "thresholds": [None if np.isnan(x) else float(x) for x in thr], "latent_dim": int(latent_dim),
        "shard_patients": int(shard_patients), "series_min": int(series_min), "series_max": int(series_max),
        "neighbour_std": float(neighbour_std), "truncation": float(truncation), "max_steps": int(max_steps),
        "learning_rate": float(learning_rate), "max_attempts": int(max_attempts),
        "batch_size": int(batch_size), "extra": dict(extra_settings or {})}
    plan = plan_patients(num_images, class_proportions, seed, series_min, series_max)
    os.makedirs(out_dir, exist_ok=True)
    _check_settings(out_dir, settings)

    width = max(6, len(str(len(plan) - 1)))
    patient_ids = [f"p{g:0{width}d}" for g in range(len(plan))]
    shards = [[(g, c, n) for g, (c, n) in enumerate(plan)][i:i + shard_patients]
              for i in range(0, len(plan), shard_patients)]
    optimiser = co.make_optimiser(generate_fn, optimise_logits_fn, max_steps=max_steps,
                                  learning_rate=learning_rate)
    fns = (co._as_pytree_fn(generate_fn), co._as_pytree_fn(label_fn))
    thr_j = jnp.asarray(thr, jnp.float32)
    render = lambda z: _render_jit(fns, z, thr_j)  # noqa: E731
    parts_dir = os.path.join(out_dir, PARTS_DIR)
    os.makedirs(parts_dir, exist_ok=True)
    part_path = lambda i: os.path.join(parts_dir, f"shard_{i:05d}.json")  # noqa: E731

    ran, skipped, images_written, start = 0, 0, 0, time.perf_counter()
    done = sum(os.path.exists(part_path(i)) for i in range(len(shards)))
    if progress is not None:
        progress(done, len(shards))
    logging.info("archive %s: %d patients in %d shards, %d already done", out_dir, len(plan), len(shards), done)
    if done < len(shards):  # compile before the clock starts, so latents/s measures optimisation
        jax.block_until_ready(optimiser(jnp.zeros((batch_size, latent_dim)), jnp.zeros(batch_size, jnp.int32),
                                        jnp.full(batch_size, -jnp.inf)))
    for i, patients in enumerate(shards):
        if os.path.exists(part_path(i)):
            skipped += 1
            continue
        part = _Shard(i, patients, seed=seed, optimiser=optimiser, render=render, target_base=base,
                      latent_dim=latent_dim, batch_size=batch_size, truncation=truncation,
                      neighbour_std=neighbour_std, series_max=series_max, max_attempts=max_attempts,
                      out_dir=out_dir, patient_ids=patient_ids).run()
        with atomic_open(part_path(i)) as f:
            json.dump(part, f)
        ran, done, images_written = ran + 1, done + 1, images_written + len(part["rows"])
        rate = part["latents"] / part["optimise_seconds"] if part["optimise_seconds"] > 0 else float("nan")
        logging.info("archive shard %d/%d done: %d images written this call, %.1f latents/s, %.0f s",
                     done, len(shards), images_written, rate, time.perf_counter() - start)
        if progress is not None:
            progress(done, len(shards))

    parts = []
    for i in range(len(shards)):
        with open(part_path(i)) as f:
            parts.append(json.load(f))
    rows = [row for part in parts for row in part["rows"]]
    _write_csv(os.path.join(out_dir, LABELS_FILE), LABEL_COLUMNS, rows)
    _write_csv(os.path.join(out_dir, METADATA_FILE), METADATA_COLUMNS,
               [{"file": r["image_path"], "id": r["patient_id"], "view": "frontal",
                 **{n: r[n] for n in CHEXPERT_LABELS}} for r in rows])
    summary = _summarise(parts, settings, len(shards))
    with atomic_open(os.path.join(out_dir, SUMMARY_FILE)) as f:
        json.dump(summary, f, indent=1)
    if summary["classes_short_of_patients"]:
        logging.warning("archive %s: classes short of patients after %d attempt rounds: %s", out_dir,
                        max_attempts, summary["classes_short_of_patients"])
    return {**summary, "this_call": {"shards_run": ran, "shards_skipped": skipped,
                                     "images_written": images_written}}


def _render_pytree(fns, z, thresholds):
    generate_fn, label_fn = fns
    images = generate_fn(z)
    probs, labels = co.label_images(label_fn, images, thresholds)
    return images, probs, labels


_render_jit = jax.jit(_render_pytree)
