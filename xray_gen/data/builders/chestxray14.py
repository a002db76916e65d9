"""NIH ChestX-ray14 from the user's own copy.

Expected in `manual_dir`: `Data_Entry_2017*.csv` (Image Index, Finding Labels "A|B" or
"No Finding", Follow-up #, Patient ID, Patient Age, Patient Gender, View Position),
`train_val_list.txt` and `test_list.txt`, and the PNGs under `images*/` folders (any depth, e.g.
`images_001/images/00000001_000.png`).

Each image is its own study (`study_id` = image name without extension, `patient_id` = the zero-
padded Patient ID); there are no reports (findings/impression empty) and no laterals (all NIH images
are PA or AP). Splits: `test_list.txt` -> test; `train_val_list.txt` is split at patient level into
train and validation (`validation_fraction` of patients, default 0.1, hashed with `split_seed`).
NIH's lists are patient-disjoint. Without the list files a patient hash with `split_ratios` is used.

Labels: NIH labels are exhaustive over its 14 findings, so a finding absent from the image's list is
NEGATIVE (0), not "not mentioned". Mapping onto the CheXpert 14:
Cardiomegaly, Edema, Consolidation, Pneumonia, Atelectasis, Pneumothorax as is;
Effusion -> Pleural Effusion; Pleural_Thickening -> Pleural Other; Mass or Nodule -> Lung Lesion;
Infiltration -> Lung Opacity (positive if Infiltration; NaN, not 0, when only another opacity such
as Consolidation/Pneumonia/Atelectasis/Edema/Mass/Nodule is present, since those are opacities too);
No Finding -> No Finding. Enlarged Cardiomediastinum, Fracture and Support Devices are NaN (NIH does
not label them). The full NIH vector is kept in the extra float feature `nih_labels` (order:
`NIH_LABELS`, 15 entries including "No Finding", values 1/0); `age` (int32, -1 unknown) and `sex`
(Text) are kept too. Rows with an unknown finding name are skipped and counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from xray_gen.data import schema
from xray_gen.data.builders import examples, image_reading, source_files, splits, tfds_builder

NIH_LABELS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis",
    "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax",
    "No Finding",
)
_DIRECT = {
    "Cardiomegaly": "Cardiomegaly", "Edema": "Edema", "Consolidation": "Consolidation",
    "Pneumonia": "Pneumonia", "Atelectasis": "Atelectasis", "Pneumothorax": "Pneumothorax",
    "Effusion": "Pleural Effusion", "Pleural_Thickening": "Pleural Other", "No Finding": "No Finding",
}
_OTHER_OPACITIES = ("Consolidation", "Pneumonia", "Atelectasis", "Edema", "Mass", "Nodule")


def map_nih_labels(findings: set[str]) -> np.ndarray:
    """CheXpert-14 vector from a set of NIH finding names (see module docstring)."""
    out = schema.empty_labels()
    for nih, chex in _DIRECT.items():
        out[schema.LABEL_INDEX[chex]] = 1.0 if nih in findings else 0.0
    out[schema.LABEL_INDEX["Lung Lesion"]] = 1.0 if findings & {"Mass", "Nodule"} else 0.0
    if "Infiltration" in findings:
        opacity = 1.0
    elif findings & set(_OTHER_OPACITIES):
        opacity = np.nan
    else:
        opacity = 0.0
    out[schema.LABEL_INDEX["Lung Opacity"]] = opacity
    return out


def _read_list(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


class ChestXray14:
    NAME = "chestxray14"
    VERSION_STR = "1.0.0"
    DESCRIPTION = "NIH ChestX-ray14 frontal radiographs with 14 image labels (user copy)."
    MANUAL_INSTRUCTIONS = (
        "Put your copy of NIH ChestX-ray14 in manual_dir: Data_Entry_2017*.csv, train_val_list.txt, "
        "test_list.txt and the images*/ folders of PNGs."
    )
    DEFAULT_OPTIONS: dict[str, Any] = {"validation_fraction": 0.1, "split_ratios": (0.7, 0.1, 0.2)}

    def extra_features(self):
        import tensorflow_datasets as tfds

        return {
            "nih_labels": tfds.features.Tensor(shape=(len(NIH_LABELS),), dtype=np.float32),
            "age": np.int32,
            "sex": tfds.features.Text(),
        }

    def plan(self, manual_dir: Path, opts, summary) -> dict[str, list]:
        entry = source_files.find_file(manual_dir, ("Data_Entry_2017*.csv", "Data_Entry*.csv"))
        if entry is None:
            raise FileNotFoundError(f"chestxray14: Data_Entry_2017*.csv not found under {manual_dir}")
        train_val = source_files.find_file(manual_dir, ("train_val_list.txt",))
        test = source_files.find_file(manual_dir, ("test_list.txt",))
        lists = None
        if train_val is not None and test is not None:
            lists = (_read_list(train_val), _read_list(test))
        else:
            summary.note("train_val_list.txt/test_list.txt not found: using a patient-hash split")

        files: dict[str, Path] = {}
        for folder in sorted(p for p in manual_dir.glob("images*") if p.is_dir()):
            for p in sorted(folder.rglob("*.png")):
                files.setdefault(p.name, p)

        frac = float(opts["validation_fraction"])
        val_ratios = (1.0 - frac, frac, 0.0)
        plan: dict[str, list] = {s: [] for s in splits.SPLITS}
        seen = set()
        cols = ("Image Index", "Finding Labels", "Patient ID")
        for line_no, row in source_files.csv_rows(entry, cols, summary, manual_dir):
            where = f"{source_files.rel(entry, manual_dir)}:{line_no}"
            name = row["Image Index"]
            findings = {f.strip() for f in row["Finding Labels"].split("|") if f.strip()}
            if not findings or findings - set(NIH_LABELS) or (
                    "No Finding" in findings and len(findings) > 1):
                summary.skip("malformed CSV row (unknown or inconsistent finding labels)", where)
                continue
            try:
                patient = f"{int(row['Patient ID']):08d}"
            except ValueError:
                summary.skip("malformed CSV row", where)
                continue
            if name in seen:
                summary.skip("duplicate image row", where)
                continue
            seen.add(name)
            path = files.get(name)
            if path is None:
                summary.skip("missing image", name)
                continue
            if lists is not None:
                if name in lists[1]:
                    split = "test"
                elif name in lists[0]:
                    split = splits.hash_split(patient, val_ratios, opts["split_seed"])
                else:
                    summary.skip("image in neither train_val_list.txt nor test_list.txt", name)
                    continue
            else:
                split = splits.hash_split(patient, opts["split_ratios"], opts["split_seed"])
            try:
                age = int(float(row.get("Patient Age", "") or -1))
            except ValueError:
                age = -1
            plan[split].append({
                "name": name, "path": path, "patient": patient, "findings": findings,
                "view": row.get("View Position", "").strip().upper(), "age": age,
                "sex": row.get("Patient Gender", "").strip(),
            })
        return plan

    def load(self, job, manual_dir: Path, opts, resolution: int, summary):
        frontal = image_reading.load_view(job["path"], resolution, summary, manual_dir)
        if frontal is None:
            return None
        nih = np.array([1.0 if n in job["findings"] else 0.0 for n in NIH_LABELS], np.float32)
        return examples.make_example(
            patient_id=job["patient"],
            study_id=Path(job["name"]).stem,
            frontal=frontal,
            lateral=None,
            labels=map_nih_labels(job["findings"]),
            frontal_view=job["view"],
            source="chestxray14",
            nih_labels=nih,
            age=np.int32(job["age"]),
            sex=job["sex"],
        )


Builder = tfds_builder.make_builder_class(ChestXray14)
