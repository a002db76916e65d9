"""XRayGAN's `--mode=sample`: reports in, frontal/lateral PNGs out.

Reports come from `--report="FINDINGS: ... IMPRESSION: ..."` or `--report_file` (plain text = one
report; `.jsonl` with "report" or "findings"/"impression" per line; `.csv` with the same columns;
an optional "id"). Every report is accepted, fixed or skipped with a note that says which: empty
reports are skipped, odd characters are dropped by the tokenizer's cleaning, overlong reports are
truncated, reports whose words are all unknown still generate (from the unknown token) but say so.
"""

from __future__ import annotations

import csv
import json
import os
import re

import jax
import numpy as np
from absl import logging

from xray_gen.data import augment as aug
from xray_gen.data.pipeline import open_split
from xray_gen.data.reports import extract_sections, split_sentences
from xray_gen.data.schema import Study
from xray_gen.files import merge_json_summary
from xray_gen.images import write_grid, write_png
from xray_gen.models.xraygan import steps
from xray_gen.models.xraygan.steps import VIEWS


def _item(raw: dict, default_id: str) -> dict:
    if raw.get("findings") or raw.get("impression"):
        findings, impression = str(raw.get("findings") or ""), str(raw.get("impression") or "")
    else:
        findings, impression = extract_sections(str(raw.get("report") or ""))
        if not (findings or impression) and str(raw.get("report") or "").strip():
            findings = str(raw["report"]).strip()  # no section headers: the whole text as findings
    safe_id = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(raw.get("id") or default_id))[:64]
    return {"id": safe_id, "findings": findings, "impression": impression}


def load_reports(report: str | None = None, report_file: str | None = None) -> list[dict]:
    """Reports as [{"id", "findings", "impression"}]; errors name the file and line."""
    if report is not None:
        return [_item({"report": report}, "report")]
    if not os.path.exists(report_file):
        raise FileNotFoundError(f"--report_file {report_file!r} does not exist")
    name = os.path.basename(report_file)
    if report_file.endswith(".jsonl"):
        items = []
        with open(report_file, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{name}:{n}: not a JSON object ({e.msg})") from None
                if not isinstance(raw, dict):
                    raise ValueError(f"{name}:{n}: expected an object with 'report' or 'findings'/'impression'")
                items.append(_item(raw, f"line{n}"))
        return items
    if report_file.endswith(".csv"):
        with open(report_file, encoding="utf-8", errors="replace", newline="") as f:
            reader = csv.DictReader(f)
            columns = set(reader.fieldnames or ())
            if not columns & {"report", "findings", "impression"}:
                raise ValueError(f"{name}: needs a 'report' column or 'findings'/'impression' columns; has {sorted(columns)}")
            return [_item(row, f"row{n}") for n, row in enumerate(reader, 2)]
    with open(report_file, encoding="utf-8", errors="replace") as f:
        return [_item({"report": f.read()}, os.path.splitext(name)[0])]


def encode_report(tokenizer, item: dict, max_sentences: int, max_words: int) -> tuple[dict | None, list[str]]:
    """(model inputs with a leading batch axis, or None to skip) and notes on what was done."""
    notes = []
    sections = {}
    total_words = 0
    for section in ("findings", "impression"):
        text = item[section]
        sentences = split_sentences(text)
        if len(sentences) > max_sentences:
            notes.append(f"{section}: {len(sentences)} sentences, kept the first {max_sentences}")
        ids, mask = tokenizer.encode_hierarchical(text, max_sentences, max_words)
        full = [tokenizer.encode(s) for s in sentences[:max_sentences]]
        if any(len(t) + 1 > max_words for t in full):
            notes.append(f"{section}: sentences longer than {max_words} tokens were truncated")
        real = ids[mask > 0]
        total_words += int((real > tokenizer.EOS).sum())
        if real.size and np.all((real == tokenizer.UNK) | (real == tokenizer.EOS)):
            notes.append(f"{section}: every word is unknown to the model's vocabulary")
        sections[f"{section}_ids"], sections[f"{section}_mask"] = ids[None], mask[None]
    if total_words == 0:
        return None, notes + ["empty report (no words after cleaning): skipped"]
    return sections, notes


def write_pair(directory: str, frontal: np.ndarray, lateral: np.ndarray, suffix: str = "") -> None:
    """Writes frontal/lateral PNGs (float [-1, 1] (H, W[, 1]) arrays)."""
    os.makedirs(directory, exist_ok=True)
    for name, image in (("frontal", frontal), ("lateral", lateral)):
        write_png(os.path.join(directory, f"{name}{suffix}.png"), image)


def sample(task, state, workdir: str, report: str | None = None, report_file: str | None = None) -> dict:
    """Frontal + lateral PNGs per report into workdir/samples, a grid of this call's reports, and
    summary.json (entries of earlier calls kept, this call's replacing those with the same id).

    Without --report/--report_file, the first `sample.num_reports` test-split reports are used
    and their real images are shown beside the generated ones.
    """
    c, x = task.config, task.config.xraygan
    real_pairs = {}
    if report is None and report_file is None:
        source = open_split(c.data, "test")
        items = []
        for i in range(min(len(source), c.sample.num_reports)):
            study = Study.from_example(source[i])
            items.append({"id": f"test_{i}", "findings": study.findings, "impression": study.impression})
            real_pairs[items[-1]["id"]] = [aug.to_float(np.asarray(getattr(study, v))) for v in VIEWS]
    else:
        items = load_reports(report, report_file)
    last = x.num_stages - 1
    generate = jax.jit(lambda g_params, batch, rng: steps.generate_stages(task.nets, x, g_params, batch, rng, last))
    out_dir = os.path.join(workdir, "samples")
    summary, rows = {}, []
    n_draws = c.sample.num_samples if x.noise_dim > 0 else 1
    for item in items:
        inputs, notes = encode_report(task.tokenizer, item, x.max_sentences, x.max_words)
        entry = summary[item["id"]] = {"findings": item["findings"], "impression": item["impression"], "notes": notes}
        if inputs is None:
            logging.warning("report %s skipped: %s", item["id"], "; ".join(notes))
            continue
        for n in range(n_draws):
            images = jax.device_get(generate(state.g_params, inputs, jax.random.PRNGKey(c.sample.seed + n)))
            suffix = f"_seed{n}" if n_draws > 1 else ""
            write_pair(os.path.join(out_dir, item["id"]), images["frontal"][-1][0], images["lateral"][-1][0], suffix)
            if c.sample.all_stages:
                for s in range(len(images["frontal"]) - 1):
                    write_pair(os.path.join(out_dir, item["id"]), images["frontal"][s][0],
                                        images["lateral"][s][0], f"{suffix}_stage{s}")
            rows.append([images["frontal"][-1][0], images["lateral"][-1][0]] + real_pairs.get(item["id"], []))
        entry["files"] = sorted(os.listdir(os.path.join(out_dir, item["id"])))
        for note in notes:
            logging.info("report %s: %s", item["id"], note)
    os.makedirs(out_dir, exist_ok=True)
    if rows:
        write_grid(os.path.join(out_dir, "grid.png"), rows)
    merge_json_summary(os.path.join(out_dir, "summary.json"), summary)  # earlier calls' entries kept
    logging.info("wrote samples of %d of %d reports to %s", len(rows) // n_draws, len(items), out_dir)
    return summary
