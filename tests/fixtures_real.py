"""Tiny fixture trees reproducing the on-disk formats of the real datasets (for builder tests).

Each `write_<dataset>(root)` writes a handful of small images, CSVs and reports into `root`
(including deliberately bad rows/files) and returns a dict describing what a correct builder
should produce. Frontal images are filled with FRONTAL_VALUE and laterals with LATERAL_VALUE, so
a test can tell which view ended up where after resizing.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

FRONTAL_VALUE = 200
LATERAL_VALUE = 50
CORRUPT_BYTES = b"\x89PNG\r\n\x1a\n this is not really a PNG"


def _image(path: Path, value: int, size: tuple[int, int] = (24, 20), fmt: str | None = None,
           mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        arr = np.full(size[::-1], value, np.uint16)
        Image.fromarray(arr).save(path, format="PNG")
    elif mode == "RGB":
        Image.new("RGB", size, (value, value, value)).save(path, format=fmt)
    else:
        Image.new("L", size, value).save(path, format=fmt)


def _write(path: Path, text: str, gz: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Open-i


def _openi_xml(uid: int, findings: str, impression: str, image_ids: list[str], major=(), minor=()):
    mesh = "".join(f"<major>{m}</major>" for m in major) + "".join(f"<minor>{m}</minor>" for m in minor)
    images = "".join(
        f'<parentImage id="{i}"><figureId>F{k}</figureId><url>/x/{i}.jpg</url></parentImage>'
        for k, i in enumerate(image_ids, 1))
    return (
        f'<?xml version="1.0" encoding="utf-8"?>\n<eCitation><meta type="rr"/><uId id="CXR{uid}"/>'
        f"<MedlineCitation><Article><Abstract>"
        f'<AbstractText Label="COMPARISON">None.</AbstractText>'
        f'<AbstractText Label="INDICATION">Cough.</AbstractText>'
        f'<AbstractText Label="FINDINGS">{findings}</AbstractText>'
        f'<AbstractText Label="IMPRESSION">{impression}</AbstractText>'
        f"</Abstract></Article></MedlineCitation><MeSH>{mesh}</MeSH>{images}</eCitation>"
    )


NORMAL = "The heart is normal in size. The lungs are clear. No pneumothorax or pleural effusion."


def write_openi(root: Path, with_projections: bool = True, all_missing: bool = False) -> dict:
    """Open-i tree: XML reports, PNGs in both naming styles, projections CSV, split CSV.

    uid 1: NLM names, F+L (train)        uid 2: Kaggle names, F+L (train)
    uid 3: Kaggle frontal only (train)   uid 4: cardiomegaly report, F (16-bit PNG) + L (validation)
    uid 5: F+L + an image with no projections row (test)   uid 6: F+L (test)
    uid 7: lateral only -> "no frontal view"              uid 8: frontal file missing
    uid 9: frontal PNG corrupt -> "unreadable image"      bad.xml: malformed XML
    projections CSV: one row with projection "Oblique" (malformed).
    """
    root = Path(root)
    rep, img = root / "ecgen-radiology", root / "images"

    def nlm(uid, n):
        return f"CXR{uid}_IM-{uid:04d}-{n}001"

    def kaggle_file(uid, n):
        return f"{uid}_IM-{uid:04d}-{n}001.dcm.png"

    proj_rows = ["uid,filename,projection"]
    reports = {
        1: (NORMAL, "Normal chest x-XXXX.", ["normal"], []),
        2: (NORMAL, "No acute disease.", ["normal"], []),
        3: (NORMAL, "No acute cardiopulmonary abnormality.", ["normal"], []),
        4: ("There is cardiomegaly. No pneumothorax.", "Cardiomegaly.", ["Cardiomegaly"], ["mild"]),
        5: (NORMAL, "Normal.", ["normal"], []),
        6: (NORMAL, "Negative.", ["normal"], []),
        7: (NORMAL, "Normal.", ["normal"], []),
        8: (NORMAL, "Normal.", ["normal"], []),
        9: (NORMAL, "Normal.", ["normal"], []),
    }
    views = {1: "FL", 2: "FL", 3: "F", 4: "FL", 5: "FL", 6: "FL", 7: "L", 8: "FL", 9: "FL"}
    for uid, (findings, impression, major, minor) in reports.items():
        ids = []
        for n, v in enumerate(views[uid], start=1):
            ids.append(nlm(uid, n))
            fname = f"{nlm(uid, n)}.png" if uid in (1, 4, 7, 9) else kaggle_file(uid, n)
            value = FRONTAL_VALUE if v == "F" else LATERAL_VALUE
            proj_rows.append(f"{uid},{kaggle_file(uid, n)},{'Frontal' if v == 'F' else 'Lateral'}")
            path = img / fname
            if all_missing or (uid == 8 and v == "F"):
                continue
            if uid == 9 and v == "F":
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(CORRUPT_BYTES)
            elif uid == 4 and v == "F":
                _image(path, int(FRONTAL_VALUE / 255 * 65535), mode="I;16")
            else:
                _image(path, value, mode="RGB" if uid == 2 and v == "L" else "L")
        if uid == 5:
            ids.append("CXR5_IM-0005-9001")  # no projections row
            if not all_missing:
                _image(img / "CXR5_IM-0005-9001.png", 128)
        _write(rep / f"{uid}.xml", _openi_xml(uid, findings, impression, ids, major, minor))
    _write(rep / "bad.xml", "<eCitation><uId id='CXR99'/><AbstractText>unclosed")
    proj_rows.append("6,6_IM-0006-7001.dcm.png,Oblique")
    if with_projections:
        _write(root / "indiana_projections.csv", "\n".join(proj_rows) + "\n")
    splits = {1: "train", 2: "train", 3: "train", 9: "train", 4: "validation", 5: "test", 6: "test",
              7: "train", 8: "validate"}
    _write(root / "split.csv", "uid,split\n" + "".join(f"{u},{s}\n" for u, s in splits.items()))
    return {
        "root": root,
        "split_file": "split.csv",
        "counts": {"train": 3, "validation": 1, "test": 2},
        "studies": {"train": {"CXR1", "CXR2", "CXR3"}, "validation": {"CXR4"}, "test": {"CXR5", "CXR6"}},
        "lateral": {"CXR1", "CXR2", "CXR4", "CXR5", "CXR6"},
        "cardiomegaly": "CXR4",
        "skips": {
            "malformed XML": "bad.xml",
            "no frontal view": "7.xml",
            "missing image": "CXR8_IM-0008-1001",
            "unreadable image": "CXR9_IM-0009-1001.png",
            "image without projections entry": "CXR5_IM-0005-9001",
            "malformed CSV row": "indiana_projections.csv",
        },
    }


# ---------------------------------------------------------------------------------------------
# MIMIC-CXR-JPG

LABEL_HEADER = ("No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,Lung Lesion,Edema,"
                "Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,"
                "Fracture,Support Devices")
_BLANK14 = "," * 13


def _labels(**vals) -> str:
    names = LABEL_HEADER.split(",")
    cells = [""] * 14
    for k, v in vals.items():
        cells[names.index(k.replace("_", " "))] = v
    return ",".join(cells)


def write_mimic(root: Path) -> dict:
    """MIMIC-CXR-JPG tree with gzipped CSVs, JPEGs and reports in a separate `reports/` dir.

    s50000001 p10000001 PA+LATERAL train   s50000002 p10000001 AP only train
    s50000003 p10000002 PA+LL (+AP extra) train  s50000004 p11000003 PA+LATERAL train
    s50000005 p10000004 PA+LATERAL test    s50000006 p10000005 PA+LATERAL validate
    s50000007 p10000006 LATERAL only -> no frontal view
    s50000008 p10000007 PA+LATERAL, report missing -> missing report
    s50000009 p10000008 PA file missing, LATERAL present -> missing image, no frontal view
    metadata: one malformed row (missing dicom_id). chexpert: one row with value 2.0 (malformed).
    """
    root = Path(root)
    studies = [
        ("10000001", "50000001", [("d01", "PA"), ("d02", "LATERAL")], "train"),
        ("10000001", "50000002", [("d03", "AP")], "train"),
        ("10000002", "50000003", [("d04", "LL"), ("d05", "PA"), ("d06", "AP")], "train"),
        ("11000003", "50000004", [("d07", "PA"), ("d08", "LATERAL")], "train"),
        ("10000004", "50000005", [("d09", "PA"), ("d10", "LATERAL")], "test"),
        ("10000005", "50000006", [("d11", "PA"), ("d12", "LATERAL")], "validate"),
        ("10000006", "50000007", [("d13", "LATERAL")], "train"),
        ("10000007", "50000008", [("d14", "PA"), ("d15", "LATERAL")], "train"),
        ("10000008", "50000009", [("d16", "PA"), ("d17", "LATERAL")], "train"),
    ]
    meta = ["dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns"]
    split = ["dicom_id,study_id,subject_id,split"]
    for subj, study, images, sp in studies:
        for dicom, view in images:
            meta.append(f"{dicom},{subj},{study},CHEST (PA AND LAT),{view},20,24")
            split.append(f"{dicom},{study},{subj},{sp}")
            if dicom == "d16":
                continue
            value = FRONTAL_VALUE if view in ("PA", "AP") else LATERAL_VALUE
            _image(root / "files" / f"p{subj[:2]}" / f"p{subj}" / f"s{study}" / f"{dicom}.jpg", value, fmt="JPEG")
        if study != "50000008":
            text = (
                "                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n"
                " INDICATION:  ___ with cough.\n\n FINDINGS:\n \n The lungs are clear. Heart size normal.\n"
                " No pleural effusion.\n \n IMPRESSION:\n \n No acute cardiopulmonary process.\n"
            )
            _write(root / "reports" / "files" / f"p{subj[:2]}" / f"p{subj}" / f"s{study}.txt", text)
    meta.append(",10000009,50000010,CHEST,PA,20,24")  # malformed: no dicom_id
    chex = ["subject_id,study_id," + LABEL_HEADER]
    chex.append(f"10000001,50000001,{_labels(Cardiomegaly='1.0', Edema='-1.0', Pneumothorax='0.0')}")
    chex.append(f"10000001,50000002,{_labels(No_Finding='1.0')}")
    chex.append(f"10000002,50000003,{_labels(Atelectasis='-1.0')}")
    chex.append(f"11000003,50000004,{_labels(Edema='1.0')}")
    chex.append(f"10000004,50000005,{_labels(No_Finding='1.0')}")
    chex.append(f"10000005,50000006,{_labels(Pneumonia='2.0')}")  # malformed value
    _write(root / "mimic-cxr-2.0.0-metadata.csv.gz", "\n".join(meta) + "\n", gz=True)
    _write(root / "mimic-cxr-2.0.0-chexpert.csv.gz", "\n".join(chex) + "\n", gz=True)
    _write(root / "mimic-cxr-2.0.0-split.csv.gz", "\n".join(split) + "\n", gz=True)
    return {
        "root": root,
        "reports_dir": "reports",
        "counts": {"train": 4, "validation": 1, "test": 1},
        "counts_p10_lateral": {"train": 2, "validation": 1, "test": 1},
        "s50000001_labels": {"Cardiomegaly": 1.0, "Edema": -1.0, "Pneumothorax": 0.0},
        "views": {"s50000001": ("PA", "LATERAL"), "s50000002": ("AP", ""), "s50000003": ("PA", "LL")},
        "skips": {
            "no frontal view": "files/p10/p10000006/s50000007",
            "missing report": "files/p10/p10000007/s50000008.txt",
            "missing image": "files/p10/p10000008/s50000009/d16.jpg",
            "malformed CSV row": "mimic-cxr-2.0.0-metadata.csv.gz",
        },
    }


# ---------------------------------------------------------------------------------------------
# ChestX-ray14


def write_chestxray14(root: Path) -> dict:
    """NIH tree: Data_Entry CSV, list files, images in two images_00x/images folders.

    Patients 1-6; patient 6 is in test_list. One row with an unknown finding ("Dragon"), one
    image missing, one image in neither list, one corrupt PNG.
    """
    root = Path(root)
    rows = [
        ("00000001_000.png", "Cardiomegaly|Effusion", 0, 1, "PA"),
        ("00000001_001.png", "No Finding", 1, 1, "PA"),
        ("00000002_000.png", "Infiltration|Mass", 0, 2, "AP"),
        ("00000003_000.png", "Hernia|Emphysema", 0, 3, "PA"),
        ("00000004_000.png", "Pleural_Thickening|Nodule|Consolidation", 0, 4, "PA"),
        ("00000005_000.png", "No Finding", 0, 5, "PA"),
        ("00000006_000.png", "Pneumothorax", 0, 6, "AP"),
        ("00000006_001.png", "No Finding", 1, 6, "PA"),
        ("00000007_000.png", "Dragon", 0, 7, "PA"),        # unknown label
        ("00000008_000.png", "No Finding", 0, 8, "PA"),    # image missing
        ("00000009_000.png", "No Finding", 0, 9, "PA"),    # in no list
        ("00000010_000.png", "No Finding", 0, 10, "PA"),   # corrupt
    ]
    lines = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
             "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"]
    for k, (name, labels, fu, pid, view) in enumerate(rows):
        lines.append(f"{name},{labels},{fu},{pid},{40 + pid},{'M' if pid % 2 else 'F'},{view},2500,2048,0.14,0.14,")
        folder = root / ("images_001" if k < 6 else "images_002") / "images"
        if name == "00000008_000.png":
            continue
        if name == "00000010_000.png":
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(CORRUPT_BYTES)
            continue
        _image(folder / name, FRONTAL_VALUE)
    lines.append("00000011_000.png,No Finding,0")  # malformed: too few fields
    _write(root / "Data_Entry_2017_v2020.csv", "\n".join(lines) + "\n")
    train_val = [r[0] for r in rows if r[3] not in (6, 9)] + ["00000011_000.png"]
    _write(root / "train_val_list.txt", "\n".join(train_val) + "\n")
    _write(root / "test_list.txt", "00000006_000.png\n00000006_001.png\n")
    usable_train_val = {"00000001_000", "00000001_001", "00000002_000", "00000003_000",
                        "00000004_000", "00000005_000"}
    return {
        "root": root,
        "train_val": usable_train_val,
        "test": {"00000006_000", "00000006_001"},
        "skips": {
            "malformed CSV row (unknown or inconsistent finding labels)": "Data_Entry_2017_v2020.csv",
            "missing image": "00000008_000.png",
            "image in neither train_val_list.txt nor test_list.txt": "00000009_000.png",
            "unreadable image": "00000010_000.png",
            "malformed CSV row": "Data_Entry_2017_v2020.csv",
        },
    }


# ---------------------------------------------------------------------------------------------
# CheXpert


def write_chexpert(root: Path) -> dict:
    """CheXpert-v1.0-small tree: train.csv/valid.csv, JPEG views grouped in patient/study folders.

    train: patients 1-5 (patient1 two studies: study1 F+L, study2 F only; patient3 study1 L only
    -> no frontal view; patient4 frontal file missing -> missing image + no frontal view;
    one row with Frontal/Lateral "Sideways" -> malformed). valid: patients 64541-64542 (test).
    """
    root = Path(root)
    base = root / "CheXpert-v1.0-small"
    header = "Path,Sex,Age,Frontal/Lateral,AP/PA," + LABEL_HEADER
    train = [header]
    valid = [header]

    def add(lines, split, patient, study, view_no, fl, appa, labels, create=True):
        rel = f"CheXpert-v1.0-small/{split}/patient{patient:05d}/study{study}/view{view_no}_{fl.lower()}.jpg"
        lines.append(f"{rel},Female,{50 + patient % 40},{fl},{appa},{labels}")
        if create:
            _image(root / rel, FRONTAL_VALUE if fl == "Frontal" else LATERAL_VALUE, fmt="JPEG")

    lab1 = _labels(Cardiomegaly="1.0", Edema="-1.0", Pneumothorax="0.0")
    add(train, "train", 1, 1, 1, "Frontal", "PA", lab1)
    add(train, "train", 1, 1, 2, "Lateral", "", lab1)
    add(train, "train", 1, 2, 1, "Frontal", "AP", _labels(No_Finding="1.0"))
    add(train, "train", 2, 1, 1, "Frontal", "AP", _labels(Support_Devices="1.0", Pleural_Effusion="-1.0"))
    add(train, "train", 3, 1, 1, "Lateral", "", _labels(No_Finding="1.0"))
    add(train, "train", 4, 1, 1, "Frontal", "PA", _labels(No_Finding="1.0"), create=False)
    add(train, "train", 5, 1, 1, "Frontal", "PA", _labels(Fracture="1.0"))
    add(train, "train", 5, 1, 2, "Lateral", "", _labels(Fracture="1.0"))
    add(train, "train", 6, 1, 1, "Frontal", "PA", _labels(Fracture="1.0"))
    add(train, "train", 7, 1, 1, "Frontal", "AP", _labels(Edema="1.0"))
    train.append("CheXpert-v1.0-small/train/patient00008/study1/view1_frontal.jpg,Male,60,Sideways,PA," + _BLANK14)
    add(valid, "valid", 64541, 1, 1, "Frontal", "AP", _labels(Cardiomegaly="0.0", Edema="1.0"))
    add(valid, "valid", 64542, 1, 1, "Frontal", "PA", _labels(No_Finding="1.0"))
    add(valid, "valid", 64542, 1, 2, "Lateral", "", _labels(No_Finding="1.0"))
    _write(base / "train.csv", "\n".join(train) + "\n")
    _write(base / "valid.csv", "\n".join(valid) + "\n")
    return {
        "root": root,
        "train_val_studies": {"patient00001/study1", "patient00001/study2", "patient00002/study1",
                              "patient00005/study1", "patient00006/study1", "patient00007/study1"},
        "test_studies": {"patient64541/study1", "patient64542/study1"},
        "lateral": {"patient00001/study1", "patient00005/study1", "patient64542/study1"},
        "study1_labels": {"Cardiomegaly": 1.0, "Edema": -1.0, "Pneumothorax": 0.0},
        "skips": {
            "no frontal view": "patient00003/study1",
            "missing image": "patient00004/study1/view1_frontal.jpg",
            "malformed CSV row": "train.csv",
        },
    }


def write_openi_kaggle(root: Path) -> dict:
    """The Kaggle re-packaging: indiana_reports.csv + indiana_projections.csv + *.dcm.png images."""
    root = Path(root)
    reports = ["uid,MeSH,Problems,image,indication,comparison,findings,impression"]
    proj = ["uid,filename,projection"]
    for uid in (1, 2, 3):
        reports.append(f'{uid},normal;Cardiomegaly,normal,Xray Chest PA and Lateral,Cough,None,"{NORMAL}",Normal.')
        for n, v in ((1, "Frontal"), (2, "Lateral")):
            name = f"{uid}_IM-{uid:04d}-{n}001.dcm.png"
            proj.append(f"{uid},{name},{v}")
            _image(root / "images" / "images_normalized" / name,
                   FRONTAL_VALUE if v == "Frontal" else LATERAL_VALUE)
    reports.append('4,normal,normal,Xray,Cough,None,"",""')  # empty report
    _write(root / "indiana_reports.csv", "\n".join(reports) + "\n")
    _write(root / "indiana_projections.csv", "\n".join(proj) + "\n")
    return {"root": root, "studies": {"CXR1", "CXR2", "CXR3"}, "skips": {"empty report (no findings or impression)": "indiana_reports.csv:5"}}
