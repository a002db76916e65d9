"""Radiology report from the phantom's ground truth, with the label vector it states.

Each sentence template carries the label effects it states ({observation: 1 | 0 | -1}); the
study's labels are the aggregate of the effects of the sentences actually written (positive >
uncertain > negative, not mentioned = NaN), so labels and text agree by construction - and
`tests/test_phantom.py` checks that the rule-based labeler reads the same labels back.
"""

from __future__ import annotations

import numpy as np

from xray_gen.data.phantom.findings import PATHOLOGIES, Finding
from xray_gen.data.schema import LABEL_INDEX, NUM_LABELS

LOBES = {
    ("right", "upper"): "right upper lobe", ("right", "middle"): "right middle lobe",
    ("right", "lower"): "right lower lobe", ("left", "upper"): "left upper lobe",
    ("left", "middle"): "lingula", ("left", "lower"): "left lower lobe",
}
ZONES = {"upper": "upper lung zone", "middle": "mid lung zone", "lower": "lung base"}
SEV_WORD = {"mild": "small", "moderate": "moderate", "severe": "large"}
ORDINAL = {4: "fourth", 5: "fifth", 6: "sixth", 7: "seventh", 8: "eighth"}


class _Writer:
    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.effects: dict[str, list[float]] = {}

    def pick(self, options):
        return options[int(self.rng.integers(len(options)))]

    def say(self, text: str, **effects) -> str:
        if "opacit" in text and "Lung_Opacity" not in effects:  # an opacity stated in passing
            effects["Lung_Opacity"] = 1.0
        for key, v in effects.items():
            self.effects.setdefault(key.replace("_", " "), []).append(v)
        return text[0].upper() + text[1:]

    def labels(self) -> np.ndarray:
        out = np.full((NUM_LABELS,), np.nan, np.float32)
        for name, vals in self.effects.items():
            out[LABEL_INDEX[name]] = 1.0 if 1.0 in vals else (-1.0 if -1.0 in vals else 0.0)
        patho = out[[LABEL_INDEX[n] for n in PATHOLOGIES]]
        if not np.any((patho == 1) | (patho == -1)):
            out[LABEL_INDEX["No Finding"]] = 1.0
        return out


def _side_text(f: Finding) -> str:
    return "bilateral" if f.side == "bilateral" else f.side


def _lobe(f: Finding) -> str:
    side = f.sides[0]
    return LOBES[(side, f.zone)] if f.side != "bilateral" else f"bilateral {ZONES[f.zone]}s"


def _finding_sentence(w: _Writer, f: Finding) -> str:
    """One FINDINGS sentence stating (or hedging) `f`."""
    hedge = f.value == -1
    side, lobe, sev = _side_text(f), _lobe(f), f.severity
    zone = f"{side} {ZONES[f.zone]}" if f.side != "bilateral" else f"bilateral {ZONES[f.zone]}s"
    n = f.name
    if n == "Cardiomegaly":
        if hedge:
            return w.say(w.pick(["the heart size is borderline.", "heart size is at the upper limits of normal.",
                                 "possible mild cardiomegaly."]), Cardiomegaly=-1.0)
        adj = {"mild": "mildly", "moderate": "moderately", "severe": "markedly"}[sev]
        return w.say(w.pick([f"the heart is {adj} enlarged.", f"{sev} cardiomegaly.",
                             "the cardiac silhouette is enlarged.", f"{adj} enlarged cardiac silhouette."]),
                     Cardiomegaly=1.0)
    if n == "Enlarged Cardiomediastinum":
        if hedge:
            return w.say(w.pick(["the mediastinum may be mildly widened.", "possible mediastinal widening."]),
                         Enlarged_Cardiomediastinum=-1.0)
        return w.say(w.pick(["the mediastinum is widened.", "widened mediastinal silhouette.",
                             "the cardiomediastinal silhouette is enlarged.", "mediastinal widening is noted."]),
                     Enlarged_Cardiomediastinum=1.0)
    if n == "Lung Opacity":
        if hedge:
            return w.say(w.pick([f"possible subtle opacity in the {zone}.", f"questionable {zone} opacity."]),
                         Lung_Opacity=-1.0)
        return w.say(w.pick([f"patchy opacity in the {zone}.", f"there is a hazy opacity in the {zone}.",
                             f"{zone} airspace opacity."]), Lung_Opacity=1.0)
    if n == "Consolidation":
        if hedge:
            return w.say(w.pick([f"possible {lobe} consolidation.", f"{lobe} consolidation cannot be excluded."]),
                         Consolidation=-1.0)
        return w.say(w.pick([f"{lobe} opacity consistent with consolidation.",
                             f"dense airspace opacity in the {lobe} compatible with consolidation.",
                             f"focal consolidation in the {lobe}."]), Consolidation=1.0)
    if n == "Pneumonia":
        if hedge:
            return w.say(w.pick([f"findings may represent early {lobe} pneumonia.",
                                 f"{lobe} pneumonia is not excluded in the appropriate clinical setting."]),
                         Pneumonia=-1.0)
        return w.say(w.pick([f"{lobe} opacity consistent with pneumonia.",
                             f"airspace opacity in the {lobe} compatible with pneumonia in the appropriate clinical setting."]),
                     Pneumonia=1.0, Lung_Opacity=1.0)
    if n == "Lung Lesion":
        size = f"{w.rng.uniform(2.5, 6.0) if f.kind == 'mass' else w.rng.uniform(0.6, 2.4):.1f}"
        if hedge:
            return w.say(w.pick([f"possible nodule projecting over the {zone}.",
                                 f"questionable {side} {'upper' if f.zone == 'upper' else 'lower'} lobe nodule."]),
                         Lung_Lesion=-1.0)
        if f.kind == "mass":
            return w.say(w.pick([f"there is a {size} cm mass in the {lobe}.", f"{lobe} mass measuring {size} cm."]),
                         Lung_Lesion=1.0)
        return w.say(w.pick([f"a {size} cm nodular opacity in the {lobe}.",
                             f"{size} cm pulmonary nodule in the {lobe}."]),
                     Lung_Lesion=1.0)
    if n == "Edema":
        if hedge:
            return w.say(w.pick(["possible mild pulmonary vascular congestion.",
                                 "mild interstitial edema cannot be excluded."]), Edema=-1.0)
        return w.say(w.pick([f"bilateral perihilar hazy opacities consistent with {sev} pulmonary edema.",
                             f"{sev} pulmonary edema with bilateral interstitial opacities.",
                             "pulmonary vascular congestion and interstitial opacities, consistent with edema."]),
                     Edema=1.0, Lung_Opacity=1.0)
    if n == "Atelectasis":
        where = "bibasilar" if f.side == "bilateral" else f"{side} basilar"
        if hedge:
            return w.say(w.pick([f"possible {where} atelectasis.", f"{where} atelectasis is not excluded."]),
                         Atelectasis=-1.0)
        if f.kind == "plate":
            return w.say(w.pick([f"linear opacity at the {where.replace('basilar', 'base')} consistent with plate-like atelectasis.",
                                 f"{where} plate-like atelectasis."]), Atelectasis=1.0)
        return w.say(w.pick([f"{where} opacity with volume loss consistent with atelectasis.",
                             f"{where} atelectatic opacities."]), Atelectasis=1.0, Lung_Opacity=1.0)
    if n == "Pneumothorax":
        size = SEV_WORD[sev]
        if hedge:
            return w.say(w.pick([f"possible tiny {side} apical pneumothorax.",
                                 f"a small {side} apical pneumothorax cannot be excluded."]), Pneumothorax=-1.0)
        return w.say(w.pick([f"{size} {side} pneumothorax.", f"there is a {size} {side} apical pneumothorax.",
                             f"{size} {side} pneumothorax with a visible visceral pleural line."]), Pneumothorax=1.0)
    if n == "Pleural Effusion":
        size = SEV_WORD[sev]
        eff = "effusions" if f.side == "bilateral" else "effusion"
        if hedge:
            return w.say(w.pick([f"possible small {side} pleural {eff}.",
                                 f"trace {side} pleural {eff} cannot be excluded."]), Pleural_Effusion=-1.0)
        article = "" if f.side == "bilateral" else "a "
        opts = [f"{size} {side} pleural {eff}.", f"there is {article}{size} {side} pleural {eff}."]
        if f.side != "bilateral":
            opts.append(f"blunting of the {side} costophrenic angle consistent with a {size} effusion.")
        return w.say(w.pick(opts), Pleural_Effusion=1.0)
    if n == "Pleural Other":
        where = {"upper": "apical", "middle": "lateral", "lower": "basilar"}[f.zone]
        if hedge:
            return w.say(f"possible {side} {where} pleural thickening.", Pleural_Other=-1.0)
        return w.say(w.pick([f"{side} {where} pleural thickening.",
                             f"calcified pleural plaque along the {side} lateral chest wall."]), Pleural_Other=1.0)
    if n == "Fracture":
        rib = ORDINAL[int(f.kind)]
        if hedge:
            return w.say(w.pick([f"possible {side} rib fracture.", f"questionable fracture of the {side} {rib} rib."]),
                         Fracture=-1.0)
        return w.say(w.pick([f"acute fracture of the {side} {rib} rib.", f"displaced {side} {rib} rib fracture.",
                             f"there is a nondisplaced fracture of the lateral {side} {rib} rib."]), Fracture=1.0)
    if n == "Support Devices":
        if hedge:
            return w.say("possible catheter projecting over the right chest, which may be external to the patient.",
                         Support_Devices=-1.0)
        out = []
        for d in f.kind.split("+"):
            out.append(w.say(w.pick({
                "et_tube": [f"endotracheal tube tip terminates {w.rng.uniform(3, 6):.1f} cm above the carina.",
                            "ET tube in standard position."],
                "central_line": ["right internal jugular central venous catheter with tip in the SVC.",
                                 "right IJ central line terminates in the lower SVC."],
                "picc": ["right-sided PICC line with tip in the distal SVC.",
                         "PICC line tip projects over the cavoatrial junction."],
                "pacemaker": ["left chest wall pacemaker with lead terminating in the right ventricle.",
                              "left-sided pacemaker device with a single lead in the right ventricle."],
                "ng_tube": ["enteric tube courses below the diaphragm with tip in the stomach.",
                            "nasogastric tube tip is in the stomach."],
            }[d]), Support_Devices=1.0))
        return " ".join(out)
    raise KeyError(n)


def _negatives(w: _Writer, truth: dict) -> list[str]:
    """Explicit negative / normal statements for what is absent."""
    absent = {n for n in PATHOLOGIES if n not in truth}
    out = []
    if {"Cardiomegaly", "Enlarged Cardiomediastinum"} <= absent and w.rng.random() < 0.5:
        out.append(w.say(w.pick(["the heart size and mediastinal contours are within normal limits.",
                                 "heart size and mediastinal contours are normal."]),
                         Cardiomegaly=0.0, Enlarged_Cardiomediastinum=0.0))
    else:
        if "Cardiomegaly" in absent:
            out.append(w.say(w.pick(["the heart is normal in size.", "heart size is normal.", "normal heart size.",
                                     "the cardiac silhouette is within normal limits."]), Cardiomegaly=0.0))
        if "Enlarged Cardiomediastinum" in absent and "Cardiomegaly" not in truth:
            out.append(w.say(w.pick(["the mediastinal contours are normal.", "the cardiomediastinal silhouette is normal.",
                                     "mediastinal contours are within normal limits."]),
                             Enlarged_Cardiomediastinum=0.0))
    lung_children = {"Lung Opacity", "Consolidation", "Pneumonia", "Edema", "Atelectasis", "Lung Lesion"}
    if lung_children <= absent:
        out.append(w.say(w.pick(["the lungs are clear.", "lungs are clear bilaterally.",
                                 "the lungs are well expanded and clear."]), Lung_Opacity=0.0))
    elif w.rng.random() < 0.5:
        out.append(w.say("the lungs are otherwise clear.", Lung_Opacity=0.0))
    if {"Consolidation", "Pneumonia"} <= absent and w.rng.random() < 0.6:
        out.append(w.say(w.pick(["no focal consolidation.", "there is no focal airspace consolidation."]),
                         Consolidation=0.0))
    if "Edema" in absent and w.rng.random() < 0.4:
        out.append(w.say(w.pick(["no pulmonary edema.", "there is no evidence of pulmonary edema."]), Edema=0.0))
    ptx, eff = "Pneumothorax" in absent, "Pleural Effusion" in absent
    if ptx and eff:
        out.append(w.say(w.pick(["no pneumothorax or large pleural effusion.", "no pleural effusion or pneumothorax.",
                                 "there is no pneumothorax or pleural effusion."]),
                         Pneumothorax=0.0, Pleural_Effusion=0.0))
    elif ptx:
        out.append(w.say(w.pick(["no pneumothorax.", "there is no pneumothorax."]), Pneumothorax=0.0))
    elif eff:
        out.append(w.say(w.pick(["no pleural effusion.", "the costophrenic angles are sharp."]), Pleural_Effusion=0.0))
    if "Lung Lesion" in absent and w.rng.random() < 0.2:
        out.append(w.say("no pulmonary nodules or masses.", Lung_Lesion=0.0))
    if "Fracture" in absent and w.rng.random() < 0.3:
        out.append(w.say(w.pick(["no acute displaced rib fracture.", "no displaced fracture is seen."]), Fracture=0.0))
    return out


def _impression(w: _Writer, truth: dict) -> str:
    stated = [f for n, f in truth.items() if n != "Support Devices" and f.kind != "implied"]
    if not stated:
        return w.say(w.pick(["no acute cardiopulmonary abnormality.", "no acute cardiopulmonary process.",
                             "no active disease.", "normal chest radiograph."]))
    pos = [f for f in stated if f.value == 1]
    hedged = [f for f in stated if f.value == -1]
    short = {
        "Cardiomegaly": "cardiomegaly", "Enlarged Cardiomediastinum": "widened mediastinum",
        "Lung Opacity": "airspace opacity", "Lung Lesion": "pulmonary nodule", "Edema": "pulmonary edema",
        "Consolidation": "consolidation", "Pneumonia": "pneumonia", "Atelectasis": "atelectasis",
        "Pneumothorax": "pneumothorax", "Pleural Effusion": "pleural effusion",
        "Pleural Other": "pleural thickening", "Fracture": "rib fracture",
    }
    parts = []
    for f in pos:
        word = "pulmonary mass" if f.name == "Lung Lesion" and f.kind == "mass" else short[f.name]
        where = "" if f.name in ("Cardiomegaly", "Enlarged Cardiomediastinum", "Edema") else f"{_side_text(f)} "
        parts.append(w.say(f"{where}{word}", **{f.name.replace(" ", "_"): 1.0}))
    sentences = []
    if parts:
        parts = [parts[0]] + [p[0].lower() + p[1:] for p in parts[1:]]
        joined = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        sentences.append(joined[0].upper() + joined[1:] + ".")
    for f in hedged:
        sentences.append(w.say(w.pick([f"possible {short[f.name]}.", f"{short[f.name]} cannot be excluded."]),
                               **{f.name.replace(" ", "_"): -1.0}))
    return " ".join(sentences)


DEID = ["Comparison: XXXX.", "Compared to prior exam dated XXXX.", "XXXX-year-old with chest pain.",
        "Comparison is made to the study of XXXX XXXX."]


def write(truth: dict, patient, rng: np.random.Generator, deid_rate: float = 0.0):
    """(findings, impression, labels) for one study."""
    w = _Writer(rng)
    stated = [f for f in truth.values() if f.kind != "implied" and f.name != "Support Devices"]
    order = rng.permutation(len(stated))
    sentences = [_finding_sentence(w, stated[i]) for i in order]
    if "Lung Opacity" in truth and truth["Lung Opacity"].value == 1 and 1.0 not in w.effects.get("Lung Opacity", []):
        children = [f for f in stated if f.value == 1]
        where = children[0].side if children and children[0].side != "bilateral" else "bilateral"
        sentences.append(w.say(w.pick([f"associated {where} airspace opacity.",
                                       f"there is increased {where} lung opacity."]), Lung_Opacity=1.0))
    negatives = _negatives(w, truth)
    body = sentences + negatives
    if negatives and "otherwise" not in negatives[0] and rng.random() < 0.6:
        body = negatives[:1] + sentences + negatives[1:]  # often the heart comes first
    if "Support Devices" in truth:
        body.insert(0, _finding_sentence(w, truth["Support Devices"]))
    if patient.inspiration < 0.86 and rng.random() < 0.7:
        body.insert(int(rng.integers(len(body) + 1)), "Low lung volumes.")
    if patient.view != "PA" and rng.random() < 0.5:
        body.insert(0, "Portable AP semi-upright view of the chest." if patient.view == "AP"
                    else "Supine AP view of the chest.")
    if rng.random() < deid_rate:
        body.insert(0, str(w.pick(DEID)))
    impression = _impression(w, truth)
    if rng.random() < deid_rate * 0.5:
        impression = impression + " Findings discussed with Dr. XXXX at XXXX."
    return " ".join(body), impression, w.labels()
