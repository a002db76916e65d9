"""Open-i / Indiana University chest X-ray collection (IU X-ray) from the user's own copy.

Expected in `manual_dir` (found recursively unless given by option):

* reports: the NLM XML files (`ecgen-radiology/1.xml`, ...) with
  `<AbstractText Label="FINDINGS">`, `<AbstractText Label="IMPRESSION">`, MeSH `<major>`/`<minor>`
  and one `<parentImage id="CXR1_1_IM-0001-3001">` per image. If there are no XML files, the
  Kaggle re-packaging `indiana_reports.csv` (uid, MeSH, findings, impression, ...) is used instead.
* images: PNGs with NLM names (`CXR1_1_IM-0001-3001.png`) or re-packaged names
  (`1_IM-0001-3001.dcm.png`); both are matched to the report's image ids.
* a projections CSV (`uid,filename,projection` with projection "Frontal"/"Lateral", as in
  `indiana_projections.csv`): REQUIRED — the DICOM view field of this collection is unreliable,
  so the frontal/lateral assignment comes only from this file.

Open-i has one report per (de-identified) patient, so `patient_id == study_id == "CXR<uid>"`.
Labels are derived from the report text (findings + impression) with
`xray_gen.data.labeler.label_report`. MeSH terms are kept in the extra Text features `mesh`
(major terms) and `mesh_minor` ("; "-separated). The split is patient-level: either a user CSV
`uid,split` (`split_file`; uids like `1` or `CXR1`; splits train/validation(validate/val)/test;
reports not listed are skipped and counted) or a deterministic hash of the patient id with
`split_seed` and `split_ratios` (default 0.7/0.1/0.2). View names stored are "FRONTAL" (Open-i does
not say PA or AP) and "LATERAL".
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from xray_gen.data import schema
from xray_gen.data.builders import build_summary, examples, image_reading, source_files, splits, tfds_builder

PROJECTIONS_NAMES = ("indiana_projections.csv", "*projections*.csv")
REPORTS_CSV_NAMES = ("indiana_reports.csv",)

_IM_RE = re.compile(r"^(\d+)_(?:.*_)?(IM-\d+-\d+)$")


def uid_number(uid: str) -> str:
    """'CXR12' / '12' / ' 12.xml' -> '12'."""
    uid = uid.strip()
    if uid.lower().endswith(".xml"):
        uid = uid[:-4]
    if uid.upper().startswith("CXR"):
        uid = uid[3:]
    return uid.strip()


def image_key(name: str) -> str:
    """Key shared by both image-name styles.

    `CXR1_1_IM-0001-3001(.png)` and `1_IM-0001-3001.dcm.png` -> `1_IM-0001-3001`;
    `CXR1000_IM-0003-1001` and `1000_IM-0003-1001.dcm.png` -> `1000_IM-0003-1001`.
    """
    stem = Path(name.strip()).name
    while True:
        low = stem.lower()
        for ext in (".png", ".jpg", ".jpeg", ".dcm"):
            if low.endswith(ext):
                stem = stem[: -len(ext)]
                break
        else:
            break
    if stem.upper().startswith("CXR"):
        stem = stem[3:]
    m = _IM_RE.match(stem)
    return f"{m.group(1)}_{m.group(2)}" if m else stem


def _label_report(text: str) -> np.ndarray:
    from xray_gen.data import labeler  # written alongside; imported lazily.

    return np.asarray(labeler.label_report(text), np.float32)


def _clean(text: str | None) -> str:
    return " ".join((text or "").split())


class OpenI:
    NAME = "openi"
    VERSION_STR = "1.0.0"
    DESCRIPTION = "Open-i / IU X-ray chest radiographs with reports (user-provided copy)."
    MANUAL_INSTRUCTIONS = (
        "Put your copy of the Open-i / IU X-ray collection in manual_dir: the NLM XML reports "
        "(ecgen-radiology/*.xml) or indiana_reports.csv, the PNG images (NLM names "
        "CXR1_1_IM-0001-3001.png or re-packaged names 1_IM-0001-3001.dcm.png), and the "
        "projections CSV indiana_projections.csv (uid,filename,projection)."
    )
    DEFAULT_OPTIONS: dict[str, Any] = {
        "projections_file": None,
        "reports_dir": None,
        "images_dir": None,
        "split_file": None,
        "split_ratios": (0.7, 0.1, 0.2),
        "require_frontal": True,
        "require_lateral": False,
        "require_report": True,
    }

    def extra_features(self):
        import tensorflow_datasets as tfds

        return {"mesh": tfds.features.Text(), "mesh_minor": tfds.features.Text()}

    # -- planning -----------------------------------------------------------------------------

    def _projections(self, manual_dir: Path, opts, summary) -> dict[str, str]:
        path = source_files.resolve_option_path(manual_dir, opts["projections_file"])
        if path is None:
            path = source_files.find_file(manual_dir, PROJECTIONS_NAMES)
        if path is None or not path.is_file():
            raise FileNotFoundError(
                f"openi: the projections CSV is required but was not found "
                f"({'looked for ' + str(path) if path else 'no indiana_projections.csv or *projections*.csv under ' + str(manual_dir)}). "
                "It is needed to tell frontal from lateral images (columns uid,filename,projection "
                "with projection Frontal/Lateral, e.g. the Kaggle indiana_projections.csv), "
                "because the view field of the Open-i DICOMs is unreliable. Put it in manual_dir "
                "or pass projections_file=..."
            )
        out = {}
        for line_no, row in source_files.csv_rows(path, ("filename", "projection"), summary, manual_dir):
            proj = row["projection"].strip().lower()
            if proj not in ("frontal", "lateral"):
                summary.skip("malformed CSV row", f"{source_files.rel(path, manual_dir)}:{line_no}")
                continue
            out[image_key(row["filename"])] = proj
        self._projections_rows = path
        return out

    def _reports(self, manual_dir: Path, opts, summary, projections_path: Path) -> list[dict]:
        root = source_files.resolve_option_path(manual_dir, opts["reports_dir"]) or manual_dir
        xmls = sorted(root.rglob("*.xml")) + sorted(root.rglob("*.XML"))
        reports = []
        if xmls:
            for path in xmls:
                rep = self._parse_xml(path, manual_dir, summary)
                if rep is not None:
                    reports.append(rep)
            return reports
        csv_path = source_files.find_file(root, REPORTS_CSV_NAMES)
        if csv_path is None:
            raise FileNotFoundError(
                f"openi: no report XML files (*.xml) or indiana_reports.csv under {root}"
            )
        # Kaggle layout: reports in a CSV, images listed per uid in the projections CSV.
        images_by_uid: dict[str, list[str]] = {}
        uncounted = build_summary.BuildSummary("", "")  # _projections counted these rows
        for _, row in source_files.csv_rows(projections_path, ("uid", "filename"), uncounted, manual_dir):
            images_by_uid.setdefault(uid_number(row["uid"]), []).append(row["filename"])
        for line_no, row in source_files.csv_rows(csv_path, ("uid",), summary, manual_dir):
            uid = uid_number(row["uid"])
            mesh = [m.strip() for m in row.get("MeSH", "").split(";") if m.strip()]
            reports.append({
                "uid": uid,
                "file": f"{source_files.rel(csv_path, manual_dir)}:{line_no}",
                "findings": _clean(row.get("findings")),
                "impression": _clean(row.get("impression")),
                "images": images_by_uid.get(uid, []),
                "mesh": mesh,
                "mesh_minor": [],
            })
        return reports

    def _parse_xml(self, path: Path, manual_dir: Path, summary) -> dict | None:
        where = source_files.rel(path, manual_dir)
        try:
            root = ET.parse(path).getroot()
        except (ET.ParseError, OSError, UnicodeDecodeError):
            summary.skip("malformed XML", where)
            return None
        uid_el = root.find(".//uId")
        uid = uid_number(uid_el.get("id", "")) if uid_el is not None else ""
        if not uid:
            uid = uid_number(path.stem)
        sections = {}
        for el in root.iter("AbstractText"):
            label = (el.get("Label") or "").strip().upper()
            sections[label] = _clean("".join(el.itertext()))
        return {
            "uid": uid,
            "file": where,
            "findings": sections.get("FINDINGS", ""),
            "impression": sections.get("IMPRESSION", ""),
            "images": [p.get("id", "") for p in root.iter("parentImage") if p.get("id")],
            "mesh": [_clean(m.text) for m in root.iter("major") if _clean(m.text)],
            "mesh_minor": [_clean(m.text) for m in root.iter("minor") if _clean(m.text)],
        }

    def plan(self, manual_dir: Path, opts, summary) -> dict[str, list]:
        projections = self._projections(manual_dir, opts, summary)
        reports = self._reports(manual_dir, opts, summary, self._projections_rows)

        images_root = source_files.resolve_option_path(manual_dir, opts["images_dir"]) or manual_dir
        files: dict[str, Path] = {}
        for p in sorted(images_root.rglob("*")):
            if p.suffix.lower() in (".png", ".jpg", ".jpeg") and p.is_file():
                files.setdefault(image_key(p.name), p)

        split_map = None
        split_path = source_files.resolve_option_path(manual_dir, opts["split_file"])
        if split_path is not None:
            if not split_path.is_file():
                raise FileNotFoundError(f"openi: split_file {split_path} not found")
            split_map = source_files.read_split_file(split_path, "uid", summary, manual_dir, uid_number)

        plan: dict[str, list] = {s: [] for s in splits.SPLITS}
        seen = set()
        for rep in reports:
            uid = rep["uid"]
            if uid in seen:
                summary.skip("duplicate report uid", rep["file"])
                continue
            seen.add(uid)
            if opts["require_report"] and not (rep["findings"] or rep["impression"]):
                summary.skip("empty report (no findings or impression)", rep["file"])
                continue
            frontal = lateral = None
            for image_id in rep["images"]:
                key = image_key(image_id)
                proj = projections.get(key)
                if proj is None:
                    summary.skip("image without projections entry", image_id)
                    continue
                path = files.get(key)
                if path is None:
                    summary.skip("missing image", image_id)
                    continue
                if proj == "frontal" and frontal is None:
                    frontal = path
                elif proj == "lateral" and lateral is None:
                    lateral = path
                else:
                    summary.skip("extra image of an already-filled view (not used)",
                                 source_files.rel(path, manual_dir))
            if opts["require_frontal"] and frontal is None:
                summary.skip("no frontal view", rep["file"])
                continue
            if opts["require_lateral"] and lateral is None:
                summary.skip("no lateral view", rep["file"])
                continue
            if frontal is None and lateral is None:
                summary.skip("no usable image", rep["file"])
                continue
            patient = f"CXR{uid}"
            if split_map is not None:
                split = split_map.get(uid)
                if split is None:
                    summary.skip("uid not in split_file", rep["file"])
                    continue
            else:
                split = splits.hash_split(patient, opts["split_ratios"], opts["split_seed"])
            plan[split].append({**rep, "patient": patient, "frontal": frontal, "lateral": lateral})
        return plan

    # -- loading ------------------------------------------------------------------------------

    def load(self, job, manual_dir: Path, opts, resolution: int, summary):
        views = image_reading.load_views(
            job["frontal"], job["lateral"], opts, resolution, summary, manual_dir, job["file"]
        )
        if views is None:
            return None
        frontal, lateral = views
        text = "\n".join(t for t in (job["findings"], job["impression"]) if t)
        labels = _label_report(text) if text else schema.empty_labels()
        return examples.make_example(
            patient_id=job["patient"],
            study_id=job["patient"],
            frontal=frontal,
            lateral=lateral,
            findings=job["findings"],
            impression=job["impression"],
            labels=labels,
            frontal_view="FRONTAL" if frontal is not None else "",
            lateral_view="LATERAL" if lateral is not None else "",
            source="openi",
            mesh="; ".join(job["mesh"]),
            mesh_minor="; ".join(job["mesh_minor"]),
        )


Builder = tfds_builder.make_builder_class(OpenI)
