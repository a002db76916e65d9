"""CheXpert (v1.0 or v1.0-small) from the user's own copy.

Expected in `manual_dir` (possibly inside `CheXpert-v1.0[-small]/`): `train.csv` and `valid.csv`
(Path like `CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg`, Sex, Age,
Frontal/Lateral, AP/PA, and the 14 label columns with 1.0 / 0.0 / -1.0 / blank -> NaN), plus the
JPEGs. Paths are resolved against manual_dir, the CSV's folder and its parent.

Rows are grouped into studies (patient + study folder): one frontal (the first listed; its AP/PA
value is the `frontal_view`) and one lateral (`lateral_view` "LATERAL"); labels are per study in
CheXpert (taken from the study's first row; rows of one study that disagree are counted in notes).
Splits: `valid.csv` (radiologist-labelled, 200 studies) is used as TEST; validation is carved out
of `train.csv` at patient level (`validation_fraction` of patients, default 0.1, hashed with
`split_seed`); the rest is train. No reports (findings/impression empty). `age` (int32, -1
unknown) and `sex` (Text) are kept as extras.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from xray_gen.data import schema
from xray_gen.data.builders import examples, image_reading, source_files, splits, tfds_builder


class Chexpert:
    NAME = "chexpert"
    VERSION_STR = "1.0.0"
    DESCRIPTION = "CheXpert chest radiographs with 14 report-derived labels (user copy)."
    MANUAL_INSTRUCTIONS = (
        "Put your copy of CheXpert (v1.0 or v1.0-small) in manual_dir: train.csv, valid.csv and the "
        "train/ and valid/ image folders (the CSV Path column is resolved against manual_dir)."
    )
    DEFAULT_OPTIONS: dict[str, Any] = {
        "validation_fraction": 0.1,
        "require_frontal": True,
        "require_lateral": False,
    }

    def extra_features(self):
        import tensorflow_datasets as tfds

        return {"age": np.int32, "sex": tfds.features.Text()}

    @staticmethod
    def _resolve(rel_path: str, roots: list[Path]) -> Path | None:
        parts = PurePosixPath(rel_path.replace("\\", "/")).parts
        for root in roots:
            for start in range(min(2, len(parts))):
                cand = root.joinpath(*parts[start:])
                if cand.is_file():
                    return cand
        return None

    def plan(self, manual_dir: Path, opts, summary) -> dict[str, list]:
        train_csv = source_files.find_file(manual_dir, ("train.csv",))
        valid_csv = source_files.find_file(manual_dir, ("valid.csv",))
        if train_csv is None and valid_csv is None:
            raise FileNotFoundError(f"chexpert: train.csv / valid.csv not found under {manual_dir}")
        frac = float(opts["validation_fraction"])
        plan: dict[str, list] = {s: [] for s in splits.SPLITS}
        disagreements = 0
        for csv_path, is_test in ((train_csv, False), (valid_csv, True)):
            if csv_path is None:
                summary.note(f"{'valid' if is_test else 'train'}.csv not found: that split is empty")
                continue
            roots = [manual_dir, csv_path.parent, csv_path.parent.parent]
            studies: dict[tuple[str, str], dict] = {}
            cols = ("Path", "Frontal/Lateral")
            for line_no, row in source_files.csv_rows(csv_path, cols, summary, manual_dir):
                where = f"{source_files.rel(csv_path, manual_dir)}:{line_no}"
                missing = [c for c in schema.CHEXPERT_LABELS if c not in row]
                if missing:
                    raise ValueError(f"{csv_path}: missing label column(s) {missing}")
                parts = PurePosixPath(row["Path"].replace("\\", "/")).parts
                patient = next((p for p in parts if p.startswith("patient")), None)
                study = next((p for p in parts if p.startswith("study")), None)
                view = row["Frontal/Lateral"].strip().lower()
                if patient is None or study is None or view not in ("frontal", "lateral"):
                    summary.skip("malformed CSV row", where)
                    continue
                try:
                    labels = np.array(
                        [source_files.parse_label_value(row[c]) for c in schema.CHEXPERT_LABELS], np.float32)
                except ValueError:
                    summary.skip("malformed CSV row", where)
                    continue
                st = studies.setdefault((patient, study), {
                    "patient": patient, "study": f"{patient}/{study}", "labels": labels,
                    "frontal": None, "lateral": None, "frontal_view": "", "where": where,
                    "sex": row.get("Sex", ""), "age": row.get("Age", ""),
                })
                if not np.array_equal(st["labels"], labels, equal_nan=True):
                    disagreements += 1
                path = self._resolve(row["Path"], roots)
                if path is None:
                    summary.skip("missing image", row["Path"])
                    continue
                if st[view] is None:
                    st[view] = path
                    if view == "frontal":
                        st["frontal_view"] = row.get("AP/PA", "").strip().upper()
                else:
                    summary.skip("extra image of an already-filled view (not used)", row["Path"])
            for st in studies.values():
                if opts["require_frontal"] and st["frontal"] is None:
                    summary.skip("no frontal view", st["study"])
                    continue
                if opts["require_lateral"] and st["lateral"] is None:
                    summary.skip("no lateral view", st["study"])
                    continue
                if st["frontal"] is None and st["lateral"] is None:
                    summary.skip("no usable image", st["study"])
                    continue
                if is_test:
                    split = "test"
                else:
                    split = splits.hash_split(st["patient"], (1.0 - frac, frac, 0.0), opts["split_seed"])
                plan[split].append(st)
        if disagreements:
            summary.note(f"{disagreements} rows had labels differing from their study's first row")
        return plan

    def load(self, job, manual_dir: Path, opts, resolution: int, summary):
        views = image_reading.load_views(
            job["frontal"], job["lateral"], opts, resolution, summary, manual_dir, job["study"]
        )
        if views is None:
            return None
        frontal, lateral = views
        try:
            age = int(float(job["age"] or -1))
        except ValueError:
            age = -1
        return examples.make_example(
            patient_id=job["patient"],
            study_id=job["study"],
            frontal=frontal,
            lateral=lateral,
            labels=job["labels"],
            frontal_view=job["frontal_view"] if frontal is not None else "",
            lateral_view="LATERAL" if lateral is not None else "",
            source="chexpert",
            age=np.int32(age),
            sex=job["sex"],
        )


Builder = tfds_builder.make_builder_class(Chexpert)
