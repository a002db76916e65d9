"""The one evaluator: a generated set (a folder of PNGs + metadata.csv, written by a model's
`--mode=evaluate` or by anyone else) scored against a real split with one implementation of every
shared metric and one set of names, written as JSON (metrics + protocol) and one HTML page.

`xray_gen.evaluate` (the folder CLI) and every model's `--mode=evaluate` call `evaluate` here; the
models add their paper-specific sections (`extra_sections`) and facts (`extra_metrics`). The
networks come in as built callables (:mod:`.trained_networks`, restored by `xray_gen.models.restore`),
so this layer imports no model or training code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from absl import logging

from xray_gen.evaluation.generated_folder import INPUT_RESIZE, VIEWS, load_generated
from xray_gen.evaluation.real_splits import load_reference, parse_reference
from xray_gen.evaluation.sections import SECTIONS
from xray_gen.evaluation.sections.context import Context, collect_skips
from xray_gen.evaluation.sections.report_page import write_html
from xray_gen.evaluation.trained_networks import VCN, Classifier

Section = Tuple[str, Callable[[Context], Any]]


@dataclasses.dataclass(frozen=True)
class Scorers:
    """The networks the metrics read: the in-domain classifier (FID/KID/PRDC features, AUROC,
    prevalence, agreement), Inception-v3 (Inception FID and IS), the view-consistency net."""

    classifier: Optional[Classifier] = None
    inception: Optional[Any] = None
    vcn: Optional[VCN] = None


@dataclasses.dataclass(frozen=True)
class Settings:
    train_split: str = "train"
    num_examples: int = -1  # reference studies read (-1: the whole split)
    train_examples: int = -1  # training studies read for privacy (-1: all)
    bootstrap: int = 1000
    report_bootstrap: int = 200
    seed: int = 0
    num_pairs: int = 1000  # MS-SSIM diversity pairs
    percentile: float = 1.0  # privacy near-copy threshold
    sections: Sequence[str] = tuple(name for name, _ in SECTIONS)
    html: bool = True


def settings_from_config(config) -> Settings:
    """The settings of a model's `--mode=evaluate`: `eval.*` of its config."""
    e = config.eval
    names = [n.strip() for n in str(e.get("sections", "")).split(",") if n.strip()]
    return Settings(num_examples=int(e.num_examples), train_examples=int(e.get("train_examples", -1)),
                    bootstrap=int(e.get("bootstrap", 0)), report_bootstrap=int(e.get("report_bootstrap", 200)),
                    seed=int(config.seed), num_pairs=int(e.get("diversity_pairs", 1000)),
                    sections=tuple(names) or Settings.sections)


def evaluate(generated: str, reference: str, out: str, data_config, scorers: Scorers, settings: Settings = Settings(),
             *, name: str = "metrics", html_name: Optional[str] = None, metadata: Optional[str] = None, ignore_columns: Sequence[str] = (),
             extra_sections: Sequence[Section] = (), extra_metrics: Optional[Dict[str, Any]] = None,
             extra_protocol: Optional[Dict[str, Any]] = None, curves: Optional[Dict[str, Any]] = None,
             title: Optional[str] = None) -> Dict[str, Any]:
    """Scores the images (and reports) of the folder `generated` against `reference` ("source/split");
    writes `out/<name>.json` (and the page `out/<html_name>`, default `<name>.html`); returns the
    written record."""
    from xray_gen.data.pipeline import SPLITS
    from xray_gen.evaluation.protocol import Protocol, write_result_json

    t_start = time.time()
    source, split = parse_reference(reference)
    if settings.train_split not in SPLITS:
        raise ValueError(f"--train_split={settings.train_split!r}: valid splits {', '.join(SPLITS)}")
    unknown = [s for s in settings.sections if s not in dict(SECTIONS)]
    if unknown:
        raise ValueError(f"unknown evaluation section(s) {unknown}: valid ones {', '.join(n for n, _ in SECTIONS)}")
    dc = data_config.copy_and_resolve_references()
    dc.source = source
    resolution = int(dc.resolution)

    gen = load_generated(generated, resolution, metadata, ignore_columns)
    if len(gen.files) == 0:
        raise ValueError(f"no readable images in {generated} ({gen.summary['unreadable']} unreadable, "
                         f"{gen.summary['png_files_found']} PNG files found)")
    logging.info("evaluate: %d generated images (%s) vs %s", len(gen.files), gen.summary["per_view"], reference)
    ref = load_reference(dc, split, bool(len(gen.rows("lateral"))), settings.num_examples)
    if len(ref) == 0:
        raise ValueError(f"the reference {reference} is empty")

    s = settings
    ctx = Context(gen=gen, ref=ref, data_config=dc, train_split=s.train_split, classifier=scorers.classifier,
                  inception=scorers.inception, vcn=scorers.vcn, bootstrap=int(s.bootstrap),
                  report_bootstrap=int(s.report_bootstrap), seed=int(s.seed), num_pairs=int(s.num_pairs),
                  percentile=float(s.percentile), train_examples=int(s.train_examples))
    metrics: Dict[str, Any] = {"reference": reference, "inputs": gen.summary,
                               "reference_counts": {"studies": len(ref), **{v: int(len(ref.images[v])) for v in VIEWS}},
                               **(extra_metrics or {})}
    run = [(n, fn) for n, fn in SECTIONS if n in s.sections] + list(extra_sections)
    for section, fn in run:
        t0 = time.time()
        try:
            metrics[section] = fn(ctx)
        except Exception as e:  # noqa: BLE001 - one failing section must not lose the others
            logging.exception("evaluate: section %s failed", section)
            metrics[section] = f"error: {type(e).__name__}: {e}"
        logging.info("evaluate: %s done in %.1fs", section, time.time() - t0)
    metrics["skipped"] = collect_skips({section: metrics[section] for section, _ in run})
    metrics["seconds"] = time.time() - t_start

    extra = {
        "generated": gen.summary["directory"], "metadata": gen.summary["metadata"], "input_resize": INPUT_RESIZE,
        "data_resolution": resolution, "equalize_real": bool(dc.get("equalize", False)),
        "train_split": f"{source}/{s.train_split}",
        "train_examples": "all" if s.train_examples <= 0 else int(s.train_examples),
        "data": json.loads(dc.to_json_best_effort()), "sections": [n for n, _ in run],
        "privacy_percentile": float(s.percentile), "report_bootstrap_n": int(s.report_bootstrap),
        "ms_ssim_pairs": int(s.num_pairs), "kid": "100 subsets of min(1000, n/2) without replacement",
        **(extra_protocol or {}),
    }
    c, inception, vcn = scorers.classifier, scorers.inception, scorers.vcn
    if c is not None:
        extra["classifier"] = {"workdir": c.workdir, "step": c.step, "resolution": c.resolution}
    if inception is not None:
        extra["inception"] = {"extractor": inception.name, "weights_checksum": inception.weights_checksum,
                              "resize_policy": inception.resize_policy, "grey_to_rgb": inception.grey_rule}
    if vcn is not None:
        extra["vcn"] = {"workdir": vcn.workdir, "weights_checksum": vcn.weights_checksum, "resolution": vcn.resolution}
    seeds = (int(s.seed), int(dc.phantom.seed)) if source == "phantom" else (int(s.seed),)
    primary = c.extractor if c is not None else inception
    if primary is not None:
        protocol = Protocol.from_extractor(primary, image_count=len(gen.files), seeds=seeds,
                                           bootstrap_n=s.bootstrap, reference=reference,
                                           reference_count=len(ref), **extra)
    else:
        protocol = Protocol(extractor="none (no classifier / Inception weights)", weights_checksum="",
                            image_count=len(gen.files), resolution=resolution, resize_policy=INPUT_RESIZE,
                            grey_to_rgb="none (1-channel images)", seeds=seeds, bootstrap_n=int(s.bootstrap),
                            reference=reference, reference_count=len(ref), extra=extra)
    os.makedirs(out, exist_ok=True)
    record = write_result_json(os.path.join(out, f"{name}.json"), metrics, protocol)
    logging.info("evaluate: wrote %s", os.path.join(out, f"{name}.json"))
    if s.html:
        write_html(os.path.join(out, html_name or f"{name}.html"), record, ctx, curves=curves, title=title)
    return record
