"""MIMIC-CXR-JPG (v2.0.0 / v2.1.0) from the user's own credentialed copy.

Expected in `manual_dir` (CSV files may be gzipped and may sit up to 3 folders deep):

* `mimic-cxr-2.0.0-metadata.csv(.gz)`: dicom_id, subject_id, study_id, ViewPosition, ...
* `mimic-cxr-2.0.0-chexpert.csv(.gz)`: subject_id, study_id and the 14 CheXpert label columns
  (1.0 / 0.0 / -1.0 / blank -> NaN). A study without a row gets all-NaN labels (counted in notes).
* `mimic-cxr-2.0.0-split.csv(.gz)`: dicom_id, study_id, subject_id, split (train / validate / test;
  "validate" becomes "validation"). The official split is patient-level. Without this file a
  deterministic patient hash (`split_ratios`, `split_seed`) is used and a note says so.
* images `files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg` (under `images_dir`, default manual_dir);
* reports `files/pXX/pNNNNNNNN/sNNNNNNNN.txt` (under `reports_dir`, default manual_dir; the
  `mimic-cxr-reports` folder of the report zip is also tried). Sections come from
  `xray_gen.data.reports.extract_sections`.

One example per study: one frontal image (PA preferred, then AP, then AP_SUPINE...) and, when
present, one lateral (LATERAL preferred, then LL). Options: `subsets` restricts to patient folder
prefixes (e.g. ("p10",) as XRayGAN used); `require_lateral` keeps only studies with both views
(XRayGAN); `require_frontal` (default True); `require_report` (default True) skips studies whose
report file is missing or has neither findings nor impression. Images of other views (or extra
images of a filled view) are counted as "image not used".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from xray_gen.data import schema
from xray_gen.data.builders import examples, image_reading, source_files, splits, tfds_builder

METADATA = ("mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv", "*metadata.csv*")
CHEXPERT = ("mimic-cxr-2.0.0-chexpert.csv.gz", "mimic-cxr-2.0.0-chexpert.csv", "*chexpert.csv*")
SPLIT = ("mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv", "*split.csv*")

FRONTAL_ORDER = ("PA", "AP", "AP_SUPINE", "AP AXIAL", "PA RLD", "PA LLD", "AP RLD", "AP LLD")
LATERAL_ORDER = ("LATERAL", "LL", "RL", "LAO", "RAO")
# Only these count as frontal / lateral (the others above are oblique/decubitus, not used).
FRONTAL_SET = ("PA", "AP", "AP_SUPINE")
LATERAL_SET = ("LATERAL", "LL")


def _extract_sections(text: str) -> tuple[str, str]:
    from xray_gen.data import reports  # written alongside; imported lazily.

    return reports.extract_sections(text)


def _pid(subject_id: str) -> str:
    s = subject_id.strip()
    return s if s.startswith("p") else f"p{s}"


def _sid(study_id: str) -> str:
    s = study_id.strip()
    return s if s.startswith("s") else f"s{s}"


class MimicCxr:
    NAME = "mimic_cxr"
    VERSION_STR = "1.0.0"
    DESCRIPTION = "MIMIC-CXR-JPG chest radiographs with reports and CheXpert labels (user copy)."
    MANUAL_INSTRUCTIONS = (
        "Put your credentialed copy of MIMIC-CXR-JPG in manual_dir: mimic-cxr-2.0.0-metadata.csv.gz, "
        "mimic-cxr-2.0.0-chexpert.csv.gz, mimic-cxr-2.0.0-split.csv.gz and files/pXX/pNNNNNNNN/"
        "sNNNNNNNN/*.jpg; the reports (files/pXX/pNNNNNNNN/sNNNNNNNN.txt from MIMIC-CXR) in "
        "manual_dir or reports_dir."
    )
    DEFAULT_OPTIONS: dict[str, Any] = {
        "subsets": None,
        "require_frontal": True,
        "require_lateral": False,
        "require_report": True,
        "reports_dir": None,
        "images_dir": None,
        "split_ratios": (0.7, 0.1, 0.2),
    }

    def extra_features(self):
        return {}

    def _required(self, manual_dir: Path, names, what: str) -> Path:
        path = source_files.find_file(manual_dir, names)
        if path is None:
            raise FileNotFoundError(f"mimic_cxr: {what} ({names[1]}[.gz]) not found under {manual_dir}")
        return path

    def plan(self, manual_dir: Path, opts, summary) -> dict[str, list]:
        meta_path = self._required(manual_dir, METADATA, "metadata CSV")
        chex_path = self._required(manual_dir, CHEXPERT, "CheXpert labels CSV")
        split_path = source_files.find_file(manual_dir, SPLIT)
        subsets = tuple(opts["subsets"] or ())
        images_root = source_files.resolve_option_path(manual_dir, opts["images_dir"]) or manual_dir
        reports_roots = [source_files.resolve_option_path(manual_dir, opts["reports_dir"]) or manual_dir]
        if opts["reports_dir"] is None:
            reports_roots.append(manual_dir / "mimic-cxr-reports")

        # Studies from the metadata.
        studies: dict[tuple[str, str], list[tuple[str, str]]] = {}
        outside_subsets = 0
        meta_columns = ("dicom_id", "subject_id", "study_id")
        for _, row in source_files.csv_rows(meta_path, meta_columns, summary, manual_dir):
            pid, sid = _pid(row["subject_id"]), _sid(row["study_id"])
            if subsets and not any(pid.startswith(p) for p in subsets):
                outside_subsets += 1
                continue
            view = row.get("ViewPosition", "").strip().upper()
            studies.setdefault((pid, sid), []).append((row["dicom_id"], view))

        if subsets:
            summary.note(f"subsets={list(subsets)}: {outside_subsets} images of other patient folders left out")

        # Labels.
        labels: dict[tuple[str, str], np.ndarray] = {}
        label_cols = list(schema.CHEXPERT_LABELS)
        for line_no, row in source_files.csv_rows(chex_path, ["subject_id", "study_id"], summary, manual_dir):
            missing = [c for c in label_cols if c not in row]
            if missing:
                raise ValueError(f"{chex_path}: missing label column(s) {missing}")
            try:
                vec = np.array([source_files.parse_label_value(row[c]) for c in label_cols], np.float32)
            except ValueError:
                summary.skip("malformed CSV row", f"{source_files.rel(chex_path, manual_dir)}:{line_no}")
                continue
            labels[(_pid(row["subject_id"]), _sid(row["study_id"]))] = vec

        # Split.
        split_of: dict[str, str] = {}
        if split_path is not None:
            for line_no, row in source_files.csv_rows(split_path, ("study_id", "split"), summary, manual_dir):
                split = splits.canonical_split(row["split"])
                if split is None:
                    summary.skip("malformed CSV row", f"{source_files.rel(split_path, manual_dir)}:{line_no}")
                    continue
                split_of[_sid(row["study_id"])] = split
        else:
            summary.note("no mimic-cxr-2.0.0-split.csv: using a patient-hash split")

        plan: dict[str, list] = {s: [] for s in splits.SPLITS}
        no_labels = 0
        for (pid, sid), images in sorted(studies.items()):
            folder = Path("files") / pid[:3] / pid
            study_dir = images_root / folder / sid
            where = str(folder / sid)
            frontals = sorted(
                [(FRONTAL_ORDER.index(v), d, v) for d, v in images if v in FRONTAL_SET])
            laterals = sorted(
                [(LATERAL_ORDER.index(v), d, v) for d, v in images if v in LATERAL_SET])
            accounted: set[str] = set()  # chosen or already counted as missing
            frontal = self._first_existing(frontals, study_dir, manual_dir, summary, accounted)
            lateral = self._first_existing(laterals, study_dir, manual_dir, summary, accounted)
            if opts["require_frontal"] and frontal is None:
                summary.skip("no frontal view", where)
                continue
            if opts["require_lateral"] and lateral is None:
                summary.skip("no lateral view", where)
                continue
            if frontal is None and lateral is None:
                summary.skip("no usable image", where)
                continue
            report = None
            for root in reports_roots:
                cand = root / folder / f"{sid}.txt"
                if cand.is_file():
                    report = cand
                    break
            if report is None and opts["require_report"]:
                summary.skip("missing report", f"{folder / sid}.txt")
                continue
            if split_path is not None:
                split = split_of.get(sid)
                if split is None:
                    summary.skip("study not in split CSV", where)
                    continue
            else:
                split = splits.hash_split(pid, opts["split_ratios"], opts["split_seed"])
            for d, v in images:
                if d not in accounted:
                    summary.skip("image not used (other view or extra image)",
                                 f"{where}/{d}.jpg ({v or 'no view'})")
            lab = labels.get((pid, sid))
            if lab is None:
                no_labels += 1
                lab = schema.empty_labels()
            plan[split].append({
                "patient": pid, "study": sid, "where": where, "report": report,
                "frontal": frontal, "lateral": lateral, "labels": lab,
            })
        if no_labels:
            summary.note(f"{no_labels} studies have no row in the CheXpert CSV (labels all NaN)")
        return plan

    @staticmethod
    def _first_existing(candidates, study_dir: Path, manual_dir: Path, summary, accounted: set):
        for _, dicom_id, view in candidates:
            path = study_dir / f"{dicom_id}.jpg"
            accounted.add(dicom_id)
            if path.is_file():
                return dicom_id, view, path
            summary.skip("missing image", source_files.rel(path, manual_dir))
        return None

    def load(self, job, manual_dir: Path, opts, resolution: int, summary):
        findings = impression = ""
        if job["report"] is not None:
            try:
                text = Path(job["report"]).read_text(encoding="utf-8", errors="replace")
            except OSError:
                text = None
            if text is None:
                summary.skip("unreadable report", source_files.rel(job["report"], manual_dir))
                return None
            findings, impression = _extract_sections(text)
            if opts["require_report"] and not (findings or impression):
                summary.skip("empty report (no findings or impression)",
                             source_files.rel(job["report"], manual_dir))
                return None
        views = image_reading.load_views(
            job["frontal"][2] if job["frontal"] else None, job["lateral"][2] if job["lateral"] else None, opts, resolution, summary, manual_dir, job["where"]
        )
        if views is None:
            return None
        frontal, lateral = views
        return examples.make_example(
            patient_id=job["patient"],
            study_id=job["study"],
            frontal=frontal,
            lateral=lateral,
            findings=findings,
            impression=impression,
            labels=job["labels"],
            frontal_view=job["frontal"][1] if frontal is not None else "",
            lateral_view=job["lateral"][1] if lateral is not None else "",
            source="mimic_cxr",
        )


Builder = tfds_builder.make_builder_class(MimicCxr)
