"""A parametric adult chest: patient variation and the normal anatomy as scene primitives.

Sizes are centimetres (see `scene.py` for the frame). `Patient` holds the drawn variation;
`Anatomy` holds the handful of ellipsoids that findings need to know about (lungs, diaphragm domes,
heart, mediastinum) so that pathology can be placed relative to them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from xray_gen.data.phantom import scene as sc
from xray_gen.data.phantom.scene import Ellipsoid, Scene, rotation

RIB = 0.7 * sc.BONE
SIDES = {"right": -1.0, "left": 1.0}  # sign of x for the patient's side


@dataclasses.dataclass
class Patient:
    sex: str  # "M" or "F"
    age: int
    width: float  # habitus scale of the lateral dimension
    depth: float  # habitus scale of the antero-posterior dimension
    fat: float  # extra soft-tissue thickness (cm)
    inspiration: float  # 1 = normal; <1 shallow (high diaphragm), >1 hyperinflated
    rotation_deg: float  # rotation about the vertical axis
    view: str  # "PA", "AP" or "AP_SUPINE"
    exposure: float  # multiplies the display window
    gamma: float
    noise: float  # detector noise level
    marker: str  # "L" or "R"
    marker_pos: tuple  # (row, col) fractions for the side marker
    breast: float  # breast size scale (0 for male)


def sample_patient(rng: np.random.Generator) -> Patient:
    sex = "F" if rng.random() < 0.5 else "M"
    age = int(rng.integers(20, 92))
    view = str(rng.choice(["PA", "AP", "AP_SUPINE"], p=[0.6, 0.25, 0.15]))
    size = 0.94 if sex == "F" else 1.0
    return Patient(
        sex=sex, age=age,
        width=size * rng.uniform(0.9, 1.1), depth=size * rng.uniform(0.88, 1.15),
        fat=float(rng.gamma(2.0, 0.8)),
        inspiration=float(np.clip(rng.normal(1.0 if view == "PA" else 0.9, 0.06), 0.78, 1.15)),
        rotation_deg=float(rng.normal(0.0, 2.5)), view=view,
        exposure=float(rng.uniform(0.92, 1.08)), gamma=float(rng.uniform(0.85, 1.2)),
        noise=float(rng.uniform(0.01, 0.03)), marker=str(rng.choice(["L", "R"])),
        marker_pos=(float(rng.uniform(0.05, 0.15)), float(rng.uniform(0.06, 0.2))),
        breast=float(rng.uniform(0.7, 1.3)) if sex == "F" else 0.0,
    )


@dataclasses.dataclass
class Anatomy:
    """Key ellipsoids and landmarks; mutated by findings before `build`."""

    patient: Patient
    lungs: dict  # side -> Ellipsoid
    domes: dict  # side -> Ellipsoid (diaphragm dome; subtracted from the lung)
    heart: Ellipsoid  # the ventricles; its size is what cardiomegaly changes
    mediastinum: Ellipsoid
    hila: dict  # side -> (3,) hilum point
    chest_rx: float
    chest_ry: float
    spine_y: float
    edema: float = 0.0  # 0 none .. 1 severe (thickens vessel markings)
    broken_rib: tuple | None = None  # (side, rib number) for a fracture
    collapsed: dict = dataclasses.field(default_factory=dict)  # side -> collapsed lung (pneumothorax)

    def atrium(self) -> Ellipsoid:
        """Right atrium (right heart border), placed and scaled with the ventricles."""
        semi = np.sqrt(np.linalg.eigvalsh(self.heart.shape)).mean() / 5.3
        c = self.heart.center + np.array([-4.0, 1.0, 1.2]) * semi * [self.patient.width, 1, 1]
        return Ellipsoid.make(c, np.array([2.9, 3.4, 3.6]) * semi)

    def zone_center(self, side: str, zone: str) -> np.ndarray:
        """A point inside the lung of `side` for zone 'upper', 'middle' or 'lower'."""
        lung = self.lungs[side]
        semi = np.sqrt(np.diag(lung.shape))
        dz = {"upper": 0.55, "middle": 0.1, "lower": -0.45}[zone]
        lateral = SIDES[side] * 0.25 * semi[0]
        return lung.center + np.array([lateral, 0.1 * semi[1], dz * semi[2]])


def make_anatomy(p: Patient) -> Anatomy:
    w, d, insp = p.width, p.depth, p.inspiration
    dome_top = {"right": -5.5 - (insp - 1) * 14, "left": -6.8 - (insp - 1) * 14}
    lungs, domes, hila = {}, {}, {}
    for side, s in SIDES.items():
        semi_x = (6.4 if side == "right" else 6.0) * w
        cx = s * (7.9 * w)
        top = 15.0
        bottom = dome_top[side] - 6.0
        lungs[side] = Ellipsoid.make([cx, 1.6 * d, 0.5 * (top + bottom)],
                                     [semi_x, 7.5 * d, 0.5 * (top - bottom)])
        domes[side] = Ellipsoid.make([s * 6.0 * w, 0.4 * d, dome_top[side] - 9.5],
                                     [9.0 * w, 10.0 * d, 9.5])
        hila[side] = np.array([s * 4.2 * w, 1.0 * d, 0.5 + 0.3 * (1 - insp) * 10])
    heart_z = 0.5 * (dome_top["right"] + dome_top["left"]) + 3.3
    heart = Ellipsoid.make([2.4 * w, -2.6 * d, heart_z], [6.4 * w, 5.2 * d, 4.4],
                           rotation(0.15, 0.45 - 0.8 * (1 - insp), 0.35))
    mediastinum = Ellipsoid.make([0.3, -0.5 * d, 7.5], [2.6 * w, 4.0 * d, 6.0])
    return Anatomy(p, lungs, domes, heart, mediastinum, hila, chest_rx=14.6 * w, chest_ry=9.8 * d,
                   spine_y=5.6 * d)


def _taper(z):
    return np.sqrt(1.0 - np.clip((np.asarray(z) + 4.0) / 24.0, 0.0, 0.97) ** 2)


def build(anat: Anatomy, rng: np.random.Generator) -> Scene:
    """The normal chest (plus whatever findings already changed in `anat`)."""
    p, s = anat.patient, Scene()
    w, d = p.width, p.depth
    fat = p.fat
    # Body, neck, shoulders, breasts (the arms are pose-dependent: see `arms`).
    s.ellipsoid([0, 0.6 * d, -8], [15.8 * w + fat, 11.0 * d + fat, 40], sc.TISSUE)
    s.ellipsoid([0, 1.5, 21], [5.2 + 0.3 * fat, 5.0, 8], sc.TISSUE)
    for side, sg in SIDES.items():
        s.ellipsoid([sg * 14.0 * w, 2.0, 13.0], [5.0 * w, 5.0 * d, 4.5], sc.TISSUE)
        if p.breast > 0:
            b = p.breast
            s.ellipsoid([sg * 8.8 * w, -10.2 * d - 0.5 * fat, -6.0 - 1.0 * b], [5.2 * b, 2.4 * b, 5.0 * b],
                        0.55 * sc.TISSUE)  # mostly fat
    # Lungs (minus diaphragm domes), heart and mediastinum filling lung space.
    for side in SIDES:
        lung, dome = anat.lungs[side], anat.domes[side]
        if side in anat.collapsed:
            small = anat.collapsed[side]
            s.compound(lung, sc.AIR, minus=dome)  # pleural air
            s.compound(small, sc.LUNG - sc.AIR, clip=lung, minus=dome)  # the collapsed lung
            rim = small.scaled(0.96)
            s.compound(small, 0.25, clip=lung, minus=rim)  # visceral pleural line
        else:
            s.compound(lung, sc.LUNG, minus=dome)
        for organ in (anat.heart, anat.atrium(), anat.mediastinum):
            s.compound(organ, -sc.LUNG, clip=lung, minus=dome)
    s.add(anat.heart, 0.02)
    # Liver, gastric bubble.
    dr, dl = anat.domes["right"], anat.domes["left"]
    s.ellipsoid(dr.center + [-1.0, 0, -1.5], [9.5 * w, 8.0 * d, 8.5], 0.015)
    top_l = dl.center[2] + np.sqrt(dl.shape[2, 2])
    s.ellipsoid([6.5 * w, -1.0, top_l - 2.6], [2.8, 2.4, 1.5], sc.AIR)
    # Aorta: ascending, arch, descending; the knob indents the left lung.
    hz = anat.heart.center[2]
    aorta = np.array([[0.6, -2.5, hz + 3], [0.0, -1.8, 6.5], [0.8, -0.3, 9.0], [2.4, 2.0, 9.0],
                      [2.9, 3.8, 6.5], [2.5, 4.3, 0.0], [2.0, 4.2, -8.0], [1.2, 4.0, -16.0]])
    aorta[:, 0] *= w
    s.tube(aorta, 1.35, 0.01)
    knob = Ellipsoid.make([3.0 * w, 1.8, 8.2], [1.9, 2.4, 1.9])
    s.compound(knob, -sc.LUNG, clip=anat.lungs["left"])
    desc = Ellipsoid.make([2.6 * w, 4.3, -3.0], [1.5, 1.6, 9.0])
    s.compound(desc, -sc.LUNG, clip=anat.lungs["left"], minus=dl)
    # Trachea and main bronchi (air).
    carina = np.array([0.0, 0.6, 1.5])
    s.tube([[0.0, -0.8, 20.0], [0.0, 0.0, 9.0], carina], 0.85, sc.AIR)
    s.tube([carina, [-2.8 * w, 1.0, -0.5]], 0.6, sc.AIR)
    s.tube([carina, [3.0 * w, 1.2, -1.5]], 0.55, sc.AIR)
    _spine(s, anat)
    _ribs(s, anat)
    _shoulder_girdle(s, anat)
    _vessels(s, anat, rng)
    return s


def arms(anat: Anatomy) -> Scene:
    """Arms hanging at the sides (frontal pose); for the lateral the arms are raised out of view."""
    s, w, fat = Scene(), anat.patient.width, anat.patient.fat
    for sg in SIDES.values():
        s.ellipsoid([sg * (19.3 * w + fat), 1.5, 5.0], [3.6 + 0.4 * fat, 4.2, 12.0], sc.TISSUE)
        s.ellipsoid([sg * 17.6 * w, 1.5, 13.2], [2.2, 2.2, 2.5], sc.BONE)
        s.tube([[sg * 18.2 * w, 1.5, 12.5], [sg * (19.5 * w + 0.2 * fat), 1.5, -4.0]], 1.2, sc.BONE)
    return s


def _spine(s: Scene, anat: Anatomy) -> None:
    zs = np.arange(19.0, -23.0, -2.55)
    for z in zs:
        y = anat.spine_y - 0.012 * (z + 2.0) ** 2 + 0.6
        s.tube([[0, y, z - 1.0], [0, y, z + 1.0]], 1.75, sc.BONE * 0.45)  # vertebral body
        s.ellipsoid([0, y + 3.8, z - 0.6], [0.45, 1.4, 0.7], sc.BONE * 0.6)
        for sg in (-1, 1):
            s.ellipsoid([sg * 1.5, y + 2.0, z + 0.1], [0.5, 0.9, 0.55], sc.BONE * 0.6)
            s.ellipsoid([sg * 2.6, y + 2.4, z], [1.0, 0.5, 0.45], sc.BONE * 0.5)  # transverse process
    s.ellipsoid([0, -anat.chest_ry - 0.2, 4.0], [1.5, 0.55, 8.5], sc.BONE * 0.8)  # sternum


def rib_points(anat: Anatomy, side: str, number: int, n: int = 12) -> np.ndarray:
    """(n, 3) points along rib `number` (1 = top) from the spine round to the front."""
    sg, w = SIDES[side], anat.patient.width
    z0 = 14.2 - 2.35 * (number - 1) * (0.9 + 0.1 * anat.patient.inspiration)
    phi = np.linspace(0.08, 0.78, n) * np.pi
    t = _taper(z0)
    rx, ry = anat.chest_rx * t * (0.85 if number == 1 else 1.0), anat.chest_ry * (0.6 + 0.4 * t)
    x = sg * (1.8 * w + (rx - 1.8 * w) * np.sin(phi))
    y = anat.spine_y * 0.4 + (ry + 1.0) * np.cos(phi)
    drop = 4.5 + 0.25 * number
    z = z0 + 1.4 * np.sin(phi * 1.3) - drop * ((1 - np.cos(phi)) / 2) ** 1.6
    return np.stack([x, y, z], 1)


def _ribs(s: Scene, anat: Anatomy) -> None:
    for side in SIDES:
        for k in range(1, 11):
            pts = rib_points(anat, side, k)
            if anat.broken_rib == (side, k):
                cut = 6
                tail = pts[cut:].copy()
                tail[:, 2] -= 0.45
                s.tube(pts[:cut], 0.5, RIB)
                s.tube(tail, 0.5, RIB)
            else:
                s.tube(pts, 0.5, RIB)
            front = pts[-1] + np.array([-SIDES[side] * 2.5, -1.2, -1.0])
            s.tube([pts[-1], front], 0.5, sc.CARTILAGE)


def _shoulder_girdle(s: Scene, anat: Anatomy) -> None:
    w = anat.patient.width
    for side, sg in SIDES.items():
        clav = np.array([[1.8, -7.5, 12.3], [5.0, -7.8, 12.7], [9.5, -6.0, 13.6], [13.0, -2.5, 14.6],
                         [16.0, -0.5, 14.8]])
        clav[:, 0] *= sg * w
        s.tube(clav, 0.7, sc.BONE * 1.2)
        s.ellipsoid([sg * 13.3 * w, 7.5, 8.5], [3.4, 0.7, 6.5], sc.BONE * 0.7,
                    rotation(0.0, sg * 0.25, -sg * 0.5))


def _vessels(s: Scene, anat: Anatomy, rng: np.random.Generator) -> None:
    """Branching pulmonary vessels from each hilum, kept inside the (aerated) lung."""
    for side, sg in SIDES.items():
        lung = anat.collapsed.get(side, anat.lungs[side])
        semi = np.sqrt(np.diag(anat.lungs[side].shape))
        starts = np.repeat(anat.hila[side][None], 7, 0)
        ang = np.linspace(-1.25, 1.35, 7) + rng.normal(0, 0.1, 7)
        dirs = np.stack([sg * np.cos(ang) * 0.9, rng.normal(0, 0.5, 7), np.sin(ang) * 1.2], 1)
        radius, length = 0.55, 4.2
        p0, p1, rr = [], [], []
        for _ in range(3):
            dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
            ends = starts + dirs * length * rng.uniform(0.7, 1.2, (len(starts), 1)) * semi / 7.0
            p0.append(starts)
            p1.append(ends)
            rr.append(np.full(len(starts), radius))
            starts = np.repeat(ends, 2, 0)
            dirs = np.repeat(dirs, 2, 0) + rng.normal(0, 0.45, (2 * len(dirs), 3))
            radius, length = radius * 0.65, length * 0.8
        p0, p1, rr = np.concatenate(p0), np.concatenate(p1), np.concatenate(rr)
        keep = lung.contains(p1) & lung.contains(p0)
        if anat.edema > 0:
            rr = rr * (1 + 0.5 * anat.edema)
        s.tube_p0.append(p0[keep])
        s.tube_p1.append(p1[keep])
        s.tube_r.append(rr[keep])
        s.tube_mu.append(np.full(keep.sum(), sc.TISSUE * (1.0 + 0.3 * anat.edema)))
