"""From scene to radiograph: view geometry, rotation, exposure, noise, blur and side marker."""

from __future__ import annotations

import functools

import numpy as np

from xray_gen.data.phantom.anatomy import Patient
from xray_gen.data.phantom.projection import Projector, View
from xray_gen.data.phantom.scene import Scene, rotation

# Frontal: image columns follow +x (patient's right on the viewer's left), depth is y.
# PA: detector in front of the chest, long distance; AP: detector behind, short distance, so
# anterior structures (the heart) are magnified more.
VIEWS = {
    "PA": View(a_axis=0, depth_axis=1, sid=180.0, detector=-13.0),
    "AP": View(a_axis=0, depth_axis=1, sid=100.0, detector=13.0),
    "AP_SUPINE": View(a_axis=0, depth_axis=1, sid=100.0, detector=13.0),
    # Left lateral: columns follow +y (anterior on the left), left side against the detector.
    "LATERAL": View(a_axis=1, depth_axis=0, sid=180.0, detector=17.0),
}
# Display window (line-integral units) per view: [lo, hi] maps to [0, 1] before the gamma.
WINDOWS = {"frontal": (0.3, 7.5), "lateral": (0.8, 9.5)}
DISPLAY_GAMMA = 0.7  # < 1 lifts the lungs to mid-grey, like processed clinical radiographs


@functools.lru_cache(maxsize=16)
def projector(view: str, resolution: int) -> Projector:
    return Projector(VIEWS[view], resolution)


def _blur(img: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur (edge-replicated), the focal spot / detector PSF."""
    p = np.pad(img, 1, mode="edge")
    h = 0.25 * p[:, :-2] + 0.5 * p[:, 1:-1] + 0.25 * p[:, 2:]
    return 0.25 * h[:-2] + 0.5 * h[1:-1] + 0.25 * h[2:]


def _marker(img: np.ndarray, patient: Patient, lateral: bool, rng: np.random.Generator) -> None:
    """A small dense lead-letter style marker ("L"/"R") burnt into the line integral."""
    n = img.shape[0]
    u = max(1, n // 64)
    r0 = int(patient.marker_pos[0] * n)
    c_frac = patient.marker_pos[1]
    left_of_image = (patient.marker == "R") ^ lateral
    c0 = int(c_frac * n) if left_of_image else int((1 - c_frac) * n) - 3 * u
    level = 9.0
    img[r0:r0 + 4 * u, c0:c0 + u] += level  # vertical stroke
    if patient.marker == "L":
        img[r0 + 3 * u:r0 + 4 * u, c0:c0 + 3 * u] += level
    else:  # an "R": bowl plus leg, drawn as blocks
        img[r0:r0 + u, c0:c0 + 3 * u] += level
        img[r0 + u:r0 + 2 * u, c0 + 2 * u:c0 + 3 * u] += level
        img[r0 + 2 * u:r0 + 3 * u, c0:c0 + 2 * u] += level
        img[r0 + 3 * u:r0 + 4 * u, c0 + 2 * u:c0 + 3 * u] += level


def radiographs(scene: Scene, arms: Scene, patient: Patient, resolution: int,
                rng: np.random.Generator, lateral: bool = True):
    """(frontal, lateral) uint8 images of the same scene; `arms` only appear on the frontal.

    `lateral=False` skips rendering the lateral (None): the frontal is drawn first from `rng`, so
    it is identical either way.
    """
    rot = (rotation(0.0, 0.0, np.deg2rad(patient.rotation_deg)), np.zeros(3))
    out = [None, None]
    for i, (kind, view) in enumerate((("frontal", patient.view), ("lateral", "LATERAL"))):
        if kind == "lateral" and not lateral:
            break
        posed = (scene.merged(arms) if kind == "frontal" else scene).transformed(rot)
        line = projector(view, resolution).render(posed)
        _marker(line, patient, kind == "lateral", rng)
        lo, hi = WINDOWS[kind]
        # Quantum noise is larger where fewer photons arrive (dense regions).
        sigma = patient.noise * np.exp(0.25 * np.minimum(line, 8.0))
        line = line + sigma * rng.standard_normal(line.shape, dtype=np.float32)
        line = _blur(line)
        x = np.clip((line - lo) / ((hi - lo) * patient.exposure), 0.0, 1.0) ** (DISPLAY_GAMMA * patient.gamma)
        out[i] = (x * 255.0 + 0.5).astype(np.uint8)
    return out[0], out[1]
