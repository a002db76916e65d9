"""Ground truth findings: sampling with clinically plausible co-occurrence, and placement in 3-D.

A `Finding` is one observation with value 1 (stated) or -1 (hedged in the report), laterality,
zone and severity. `sample_truth` draws a study's findings; `requested_truth` builds them from a
{label: value} dict; `apply_before` changes the anatomy (heart size, collapsed lung, broken rib...),
`apply_after` adds primitives (fluid, airspace disease, nodules, devices) to the built scene.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from xray_gen.data.phantom import scene as sc
from xray_gen.data.phantom.anatomy import SIDES, Anatomy, Patient
from xray_gen.data.phantom.scene import Ellipsoid, Scene, rotation
from xray_gen.data.schema import CHEXPERT_LABELS

PATHOLOGIES = tuple(n for n in CHEXPERT_LABELS if n not in ("No Finding", "Support Devices"))
OPACITY_CHILDREN = ("Edema", "Consolidation", "Pneumonia", "Lung Lesion", "Atelectasis")
SEVERITIES = ("mild", "moderate", "severe")
DEVICES = ("et_tube", "central_line", "picc", "pacemaker", "ng_tube")
# Findings that the report may hedge ("may represent", "cannot exclude").
HEDGEABLE = ("Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia",
             "Atelectasis", "Pneumothorax", "Pleural Effusion", "Fracture", "Enlarged Cardiomediastinum")


@dataclasses.dataclass
class Finding:
    name: str
    value: float  # 1 stated, -1 hedged
    side: str = "right"  # "right", "left" or "bilateral"
    zone: str = "lower"  # "upper", "middle", "lower"
    severity: str = "mild"
    kind: str = ""  # subtype: lesion "nodule"/"mass", atelectasis "plate"/"basal", devices "a+b"

    @property
    def sides(self) -> tuple[str, ...]:
        return ("right", "left") if self.side == "bilateral" else (self.side,)


def _side(rng, p_bilateral=0.0):
    if rng.random() < p_bilateral:
        return "bilateral"
    return "right" if rng.random() < 0.5 else "left"


def _draw(rng: np.random.Generator, name: str, value: float, patient: Patient) -> Finding:
    """Laterality, zone, severity and subtype of one finding."""
    sev = str(rng.choice(SEVERITIES, p=[0.5, 0.35, 0.15])) if value == 1 else "mild"
    zone = str(rng.choice(["upper", "middle", "lower"], p=[0.25, 0.25, 0.5]))
    f = Finding(name, value, _side(rng), zone, sev)
    if name == "Pleural Effusion":
        f.side, f.zone = _side(rng, 0.4), "lower"
    elif name == "Edema":
        f.side, f.zone = "bilateral", "middle"
    elif name in ("Cardiomegaly", "Enlarged Cardiomediastinum", "Support Devices"):
        f.side, f.zone = "bilateral", "middle"
    elif name == "Atelectasis":
        f.kind = "plate" if rng.random() < 0.5 else "basal"
        f.zone = "lower"
        if rng.random() < 0.25:
            f.side = "bilateral"
    elif name == "Lung Lesion":
        f.kind = "mass" if rng.random() < 0.3 else "nodule"
    elif name == "Pneumothorax":
        f.zone = "upper"
    elif name == "Fracture":
        f.zone, f.kind = "middle", str(int(rng.integers(4, 9)))  # rib number
    if name == "Support Devices":
        supine = patient.view != "PA"
        chosen = [d for d, p in zip(DEVICES, (0.5 if supine else 0.05, 0.35, 0.15, 0.35, 0.3))
                  if rng.random() < p]
        f.kind = "+".join(chosen or [str(rng.choice(DEVICES))])
    return f


def sample_truth(rng: np.random.Generator, patient: Patient) -> dict[str, Finding]:
    """Findings of one study. About 40% of studies have no pathology."""
    p: dict[str, float] = {}
    devices = rng.random() < (0.45 if patient.view != "PA" else 0.08)
    if rng.random() < 0.4:
        names = []
    else:
        old = patient.age > 60
        cm = rng.random() < (0.35 if old else 0.15)
        p = {
            "Cardiomegaly": cm,
            "Pleural Effusion": rng.random() < (0.45 if cm else 0.12),
            "Edema": rng.random() < (0.35 if cm else 0.05),
            "Enlarged Cardiomediastinum": rng.random() < (0.15 if cm else 0.05),
            "Pneumonia": rng.random() < 0.12,
            "Lung Lesion": rng.random() < (0.12 if old else 0.05),
            "Pneumothorax": rng.random() < (0.12 if devices else 0.04),
            "Pleural Other": rng.random() < 0.05,
            "Fracture": rng.random() < 0.06,
        }
        p["Consolidation"] = rng.random() < (0.6 if p["Pneumonia"] else 0.07)
        p["Atelectasis"] = rng.random() < (0.4 if p["Pleural Effusion"] else 0.15)
        p["Lung Opacity"] = rng.random() < 0.08
        names = [n for n, on in p.items() if on]
    if devices:
        names.append("Support Devices")
    truth = {}
    for n in names:
        value = -1.0 if (n in HEDGEABLE and rng.random() < 0.12) else 1.0
        truth[n] = _draw(rng, n, value, patient)
    _consistent(truth)
    return truth


def requested_truth(values: dict, rng: np.random.Generator, patient: Patient) -> dict[str, Finding]:
    truth = {}
    for name, value in values.items():
        if name not in CHEXPERT_LABELS:
            raise KeyError(f"unknown observation {name!r}; valid: {', '.join(CHEXPERT_LABELS)}")
        value = float(value)
        if name == "No Finding" or value == 0 or np.isnan(value):
            continue
        if value not in (1.0, -1.0):
            raise ValueError(f"{name}: requested value must be 1 or -1, got {value}")
        truth[name] = _draw(rng, name, value, patient)
    _consistent(truth)
    return truth


def _consistent(truth: dict) -> None:
    """CheXpert hierarchy: a stated opacity-type finding implies Lung Opacity (stated)."""
    if "Pneumonia" in truth and "Consolidation" in truth:  # same place
        c, pn = truth["Consolidation"], truth["Pneumonia"]
        c.side, c.zone = (pn.side if pn.side != "bilateral" else "right"), pn.zone
    if any(truth.get(n) is not None and truth[n].value == 1 for n in OPACITY_CHILDREN):
        if "Lung Opacity" not in truth or truth["Lung Opacity"].value != 1:
            truth["Lung Opacity"] = Finding("Lung Opacity", 1.0, "right", "lower", "mild", kind="implied")


# -- placement in 3-D --------------------------------------------------------------------------
def _strength(f: Finding) -> float:
    return {"mild": 0.55, "moderate": 0.8, "severe": 1.0}[f.severity]


def apply_before(truth: dict, anat: Anatomy, rng: np.random.Generator) -> None:
    """Changes to the anatomy itself."""
    if (f := truth.get("Cardiomegaly")) is not None:
        k = 1.12 + 0.35 * _strength(f) if f.value == 1 else 1.1
        anat.heart = anat.heart.scaled([k, 0.85 + 0.25 * k, 0.9 + 0.12 * k], about=anat.heart.center)
        anat.heart = Ellipsoid(anat.heart.center + [0.8 * (k - 1) * 3, 0, 0], anat.heart.shape)
    if (f := truth.get("Enlarged Cardiomediastinum")) is not None:
        k = 1.5 + 0.7 * _strength(f) if f.value == 1 else 1.4
        anat.mediastinum = anat.mediastinum.scaled([k, 1.1, 1.05])
    if (f := truth.get("Edema")) is not None:
        anat.edema = _strength(f) if f.value == 1 else 0.3
    if (f := truth.get("Pneumothorax")) is not None:
        shrink = 0.92 - 0.25 * _strength(f) if f.value == 1 else 0.94
        for side in f.sides:
            lung = anat.lungs[side]
            anat.collapsed[side] = lung.scaled(shrink, about=anat.hila[side] + [0, 0, -2.0])
    if (f := truth.get("Fracture")) is not None:
        anat.broken_rib = (f.sides[0], int(f.kind))
    if (f := truth.get("Atelectasis")) is not None and f.kind == "basal":
        for side in f.sides:  # volume loss: the hemidiaphragm rises
            d = anat.domes[side]
            anat.domes[side] = Ellipsoid(d.center + [0, 0, 1.2 * _strength(f)], d.shape)


def apply_after(truth: dict, anat: Anatomy, s: Scene, rng: np.random.Generator) -> None:
    """Extra primitives for the findings."""
    lungs, domes = anat.lungs, anat.domes
    supine = anat.patient.view == "AP_SUPINE"
    if (f := truth.get("Pleural Effusion")) is not None:
        for side in f.sides:
            lung, sg = lungs[side], SIDES[side]
            semi = np.sqrt(np.diag(lung.shape))
            h = 2.5 + 7.0 * _strength(f) if f.value == 1 else 2.0
            if supine:  # layers posteriorly: a haze over the hemithorax
                e = Ellipsoid.make(lung.center + [0, semi[1] + 1.0, 0], [semi[0] + 2, 1.5 + h * 0.5, semi[2] + 2])
            else:  # basal, with a meniscus rising laterally
                base = lung.center[2] - semi[2]
                e = Ellipsoid.make([lung.center[0] + sg * 3.0, lung.center[1] + 1.0, base - 3.0],
                                   [semi[0] + 1.5, semi[1] + 2.0, h + 3.0])
            s.compound(e, -sc.LUNG * 0.95, clip=lung, minus=domes[side])
    for name, mu in (("Consolidation", 0.9), ("Pneumonia", 0.7), ("Lung Opacity", 0.5)):
        f = truth.get(name)
        if f is None or (name == "Lung Opacity" and f.kind == "implied"):
            continue
        if name == "Pneumonia" and "Consolidation" in truth:
            mu *= 0.5
        for side in f.sides:
            c = anat.zone_center(side, f.zone)
            size = 2.0 + 2.0 * _strength(f)
            for _ in range(3):
                jitter = rng.normal(0, 1.2, 3)
                blob = Ellipsoid.make(c + jitter, size * rng.uniform(0.7, 1.2, 3),
                                      rotation(*rng.uniform(-0.6, 0.6, 3)))
                s.compound(blob, -sc.LUNG * mu * (0.5 if f.value != 1 else 0.8), clip=lungs[side],
                           minus=domes[side])
    if (f := truth.get("Lung Lesion")) is not None:
        side = f.sides[0]
        r = (rng.uniform(2.0, 3.5) if f.kind == "mass" else rng.uniform(0.6, 1.3)) * (
            1.0 if f.value == 1 else 0.7)
        c = anat.zone_center(side, f.zone) + rng.normal(0, 1.0, 3)
        s.compound(Ellipsoid.make(c, r * rng.uniform(0.85, 1.15, 3)), -sc.LUNG * 1.5, clip=lungs[side])
    if (f := truth.get("Edema")) is not None:
        k = _strength(f) if f.value == 1 else 0.3
        for side in ("right", "left"):
            for scale, mu in ((1.0, 0.12), (0.7, 0.12), (0.45, 0.1)):  # soft perihilar 'bat wing'
                hz = Ellipsoid.make(anat.hila[side] + [SIDES[side] * 2.0, 0.5, -1.0], np.array([7.0, 7.5, 9.0]) * scale)
                s.compound(hz, -sc.LUNG * mu * k, clip=lungs[side], minus=domes[side])
            s.compound(lungs[side], -sc.LUNG * 0.08 * k, minus=domes[side])
    if (f := truth.get("Atelectasis")) is not None:
        for side in f.sides:
            c = anat.zone_center(side, "lower") + [0, 0, 1.5]
            if f.kind == "plate":
                plate = Ellipsoid.make(c + [0, -1.0, rng.uniform(-1, 1)], [4.5, 5.0, 0.45],
                                       rotation(0.0, SIDES[side] * rng.uniform(-0.25, 0.1), 0.0))
                s.compound(plate, -sc.LUNG * 0.9, clip=lungs[side])
            else:
                blob = Ellipsoid.make(c + [0, 2.0, -2.5], [4.0, 4.0, 2.5])
                s.compound(blob, -sc.LUNG * 0.6 * _strength(f), clip=lungs[side], minus=domes[side])
    if (f := truth.get("Pleural Other")) is not None:
        side = f.sides[0]
        lung, sg = lungs[side], SIDES[side]
        semi = np.sqrt(np.diag(lung.shape))
        c = lung.center + [sg * (semi[0] - 0.8), 0.0, {"upper": 0.5, "middle": 0.0, "lower": -0.4}[f.zone] * semi[2]]
        s.compound(Ellipsoid.make(c, [1.0, 5.0, 4.0]), -sc.LUNG * 1.2, clip=lung)
    if (f := truth.get("Support Devices")) is not None:
        _devices(s, anat, f.kind.split("+"))


def _devices(s: Scene, anat: Anatomy, kinds: list[str]) -> None:
    w = anat.patient.width
    hz = anat.heart.center[2]
    for kind in kinds:
        if kind == "et_tube":
            pts = [[0.0, -2.5, 22.0], [0.0, -1.0, 14.0], [0.0, -0.2, 6.0]]
            s.tube(pts, 0.45, sc.PLASTIC)
            s.tube(pts, 0.06, sc.METAL)
        elif kind in ("central_line", "picc"):
            if kind == "central_line":
                pts = [[-5.5 * w, -3.0, 17.0], [-3.5 * w, -1.5, 12.0], [-1.8, -1.0, 8.0], [-1.5, -1.0, 3.0]]
            else:
                pts = [[-18.5 * w, 1.5, 6.0], [-17.0 * w, 1.0, 12.0], [-12.0 * w, -2.0, 13.5],
                       [-5.0 * w, -2.0, 11.0], [-1.8, -1.0, 6.5], [-1.5, -1.0, 2.5]]
            s.tube(pts, 0.14, sc.METAL * 0.5)
        elif kind == "pacemaker":
            gen = np.array([8.5 * w, -8.4, 12.0])
            s.ellipsoid(gen, [2.4, 0.6, 1.9], sc.METAL * 2.0)
            lead = [gen + [-1.5, 0.5, 0.3], [4.5 * w, -5.0, 13.0], [0.5, -2.0, 9.0], [-1.0, -1.0, 4.0],
                    [-0.8, -2.5, hz + 1.0], [2.0, -5.0, hz - 2.0], [4.5 * w, -6.0, hz - 3.5]]
            s.tube(lead, 0.13, sc.METAL)
        elif kind == "ng_tube":
            pts = [[0.3, -1.5, 22.0], [0.4, 2.5, 10.0], [0.8, 3.0, -2.0], [3.0, 2.0, -8.0], [6.0, -1.0, -13.5]]
            s.tube(pts, 0.25, sc.PLASTIC * 2)
            s.tube(pts, 0.07, sc.METAL)
