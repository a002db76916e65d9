"""A 3-D scene of analytic primitives with linear attenuation coefficients.

Coordinates are centimetres in the patient frame: x towards the patient's left, y towards the
back (posterior), z up (superior); the origin sits roughly at the carina. Attenuation values are
*differences* added to whatever else occupies the same space (the body is soft tissue; a lung adds
a negative value that turns tissue into aerated lung; a rib adds bone minus tissue).

Three kinds of primitive:
- ellipsoid: centre c and shape matrix S = R diag(a^2) R^T (points x with (x-c)^T S^-1 (x-c) <= 1);
- tube: a straight cylinder segment p0 -> p1 of radius r (chains of them make ribs, vessels, lines);
- compound: (A intersect B) minus C for ellipsoids A, B, C (B and C optional) - e.g. lung minus the
  diaphragm dome, pleural fluid clipped to the pleural space, a heart filling lung air.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Attenuation (1/cm) relative to soft tissue at a diagnostic effective energy.
TISSUE = 0.20
LUNG = -0.145  # aerated lung = tissue + LUNG
AIR = -0.20
BONE = 0.30
CARTILAGE = 0.06
METAL = 2.5
PLASTIC = 0.08


def rotation(rx: float = 0.0, ry: float = 0.0, rz: float = 0.0) -> np.ndarray:
    """Rotation matrix from angles (radians) about x, then y, then z."""
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return mz @ my @ mx


@dataclasses.dataclass(frozen=True)
class Ellipsoid:
    center: np.ndarray  # (3,)
    shape: np.ndarray  # (3, 3) R diag(a^2) R^T

    @classmethod
    def make(cls, center, semi, rot=None) -> "Ellipsoid":
        semi = np.asarray(semi, float)
        r = np.eye(3) if rot is None else np.asarray(rot, float)
        return cls(np.asarray(center, float), (r * semi**2) @ r.T)

    def contains(self, points: np.ndarray) -> np.ndarray:
        d = np.asarray(points, float) - self.center
        return np.einsum("...i,ij,...j->...", d, np.linalg.inv(self.shape), d) <= 1.0

    def scaled(self, factor, about=None) -> "Ellipsoid":
        """Scaled by `factor` (scalar or per-axis in the patient frame) about `about` (default centre)."""
        f = np.broadcast_to(np.asarray(factor, float), (3,))
        about = self.center if about is None else np.asarray(about, float)
        return Ellipsoid(about + f * (self.center - about), self.shape * np.outer(f, f))


@dataclasses.dataclass
class Scene:
    """Growing lists of primitives; `arrays()` packs them for the projector."""

    ell_center: list = dataclasses.field(default_factory=list)
    ell_shape: list = dataclasses.field(default_factory=list)
    ell_mu: list = dataclasses.field(default_factory=list)
    tube_p0: list = dataclasses.field(default_factory=list)
    tube_p1: list = dataclasses.field(default_factory=list)
    tube_r: list = dataclasses.field(default_factory=list)
    tube_mu: list = dataclasses.field(default_factory=list)
    compounds: list = dataclasses.field(default_factory=list)  # (A, B|None, C|None, mu)

    def ellipsoid(self, center, semi, mu, rot=None) -> Ellipsoid:
        e = Ellipsoid.make(center, semi, rot)
        self.add(e, mu)
        return e

    def add(self, e: Ellipsoid, mu: float) -> None:
        self.ell_center.append(e.center)
        self.ell_shape.append(e.shape)
        self.ell_mu.append(mu)

    def tube(self, points, radius, mu) -> None:
        """A chain of cylinder segments through `points` (n, 3); radius scalar or per segment."""
        pts = np.asarray(points, float)
        n = len(pts) - 1
        self.tube_p0.append(pts[:-1])
        self.tube_p1.append(pts[1:])
        self.tube_r.append(np.broadcast_to(np.asarray(radius, float), (n,)))
        self.tube_mu.append(np.broadcast_to(np.asarray(mu, float), (n,)))

    def compound(self, a: Ellipsoid, mu: float, clip: Ellipsoid | None = None,
                 minus: Ellipsoid | None = None) -> None:
        self.compounds.append((a, clip, minus, mu))

    def merged(self, other: "Scene") -> "Scene":
        """A new scene holding the primitives of both."""
        out = Scene()
        for f in dataclasses.fields(Scene):
            setattr(out, f.name, getattr(self, f.name) + getattr(other, f.name))
        return out

    def transformed(self, fn) -> "Scene":
        """A new scene with every point mapped by the affine map x -> fn(x) = A x + b (fn is
        given as a (3, 3) matrix and a (3,) offset tuple)."""
        a, b = fn
        out = Scene()
        out.ell_center = [a @ c + b for c in self.ell_center]
        out.ell_shape = [a @ s @ a.T for s in self.ell_shape]
        out.ell_mu = list(self.ell_mu)
        out.tube_p0 = [p @ a.T + b for p in self.tube_p0]
        out.tube_p1 = [p @ a.T + b for p in self.tube_p1]
        out.tube_r = list(self.tube_r)
        out.tube_mu = list(self.tube_mu)

        def tr(e):
            return None if e is None else Ellipsoid(a @ e.center + b, a @ e.shape @ a.T)

        out.compounds = [(tr(x), tr(y), tr(z), mu) for x, y, z, mu in self.compounds]
        return out
