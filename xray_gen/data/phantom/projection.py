"""Parallel-beam line integrals of a `Scene`, with per-primitive geometric magnification.

For an ellipsoid with shape matrix S the chord along the depth axis d through in-plane offset q is
    L * sqrt(1 - q^T S2^-1 q),  L = 2 sqrt(det S / det S2),
where S2 is the in-plane 2x2 block of S; the chord's mid-depth is c_d + S_d,2 S2^-1 q. So both the
projected integral and the depth interval (needed for intersections) are closed forms, evaluated
only inside each primitive's projected bounding box. Small primitives are evaluated in batches of
equal-size square patches and scattered with `np.bincount`; big ones one by one into a slice.
"""

from __future__ import annotations

import dataclasses

import threading

import numpy as np

from xray_gen.data.phantom.scene import Scene

PATCH = 48  # primitives whose box is at most this many pixels are batched


@dataclasses.dataclass(frozen=True)
class View:
    """Projection geometry: in-plane axes (a, vertical z), depth axis, field of view (cm)."""

    a_axis: int  # patient axis shown left->right in the image
    depth_axis: int
    a_min: float = -18.0
    z_max: float = 17.5
    fov: float = 36.0
    sid: float = 180.0  # source-image distance (cm)
    detector: float = -13.0  # detector position along the depth axis

    def magnification(self, depth: np.ndarray) -> np.ndarray:
        """Magnification of an object at `depth` relative to one at depth 0."""
        oid = np.abs(np.asarray(depth, float) - self.detector)
        return (self.sid - abs(self.detector)) / (self.sid - oid)


def _ell_params(view: View, center: np.ndarray, shape: np.ndarray):
    """In-plane centre (a, z), inverse 2x2 form entries, peak chord, depth centre, depth slope."""
    a, d = view.a_axis, view.depth_axis
    ia = [a, 2]
    s2 = shape[:, ia][:, :, ia]  # (n, 2, 2)
    det2 = s2[:, 0, 0] * s2[:, 1, 1] - s2[:, 0, 1] ** 2
    inv = np.stack([s2[:, 1, 1], -s2[:, 0, 1], s2[:, 0, 0]], 1) / det2[:, None]
    peak = 2.0 * np.sqrt(np.maximum(np.linalg.det(shape), 1e-12) / det2)
    sd = shape[:, d, ia]  # (n, 2) covariance of depth with in-plane coords
    slope = np.stack([sd[:, 0] * inv[:, 0] + sd[:, 1] * inv[:, 1],
                      sd[:, 0] * inv[:, 1] + sd[:, 1] * inv[:, 2]], 1)
    ext = np.sqrt(np.stack([s2[:, 0, 0], s2[:, 1, 1]], 1))
    return center[:, [a, 2]], inv, peak, center[:, d], slope, ext


def _magnify_ellipsoids(view, center, shape):
    m = view.magnification(center[:, view.depth_axis])
    f = np.ones_like(center)
    f[:, view.a_axis] = m
    f[:, 2] = m
    ref = np.zeros(3)
    ref[2] = view.z_max - view.fov / 2
    center = ref + f * (center - ref)
    return center, shape * f[:, :, None] * f[:, None, :]


class Projector:
    """Renders scenes for one view at one resolution."""

    def __init__(self, view: View, resolution: int):
        self.view, self.res = view, resolution
        self.px = view.fov / resolution
        # float32 throughout the per-pixel maths (half the memory traffic of float64)
        self.a_coords = (view.a_min + (np.arange(resolution) + 0.5) * self.px).astype(np.float32)
        self.z_coords = (view.z_max - (np.arange(resolution) + 0.5) * self.px).astype(np.float32)
        self.width = resolution + PATCH + 2
        self.offs = np.arange(PATCH + 2)
        # Projectors are cached and shared by grain's reader threads: pending patches are per thread.
        self._local = threading.local()

    # -- boxes -------------------------------------------------------------------------------
    def _box(self, lo_a, hi_a, lo_z, hi_z):
        """Pixel index boxes [j0, j1) x [i0, i1) clipped to the image."""
        v, n = self.view, self.res
        j0 = np.clip(np.floor((lo_a - v.a_min) / self.px - 0.5), 0, n).astype(int)
        j1 = np.clip(np.ceil((hi_a - v.a_min) / self.px + 0.5), 0, n).astype(int)
        i0 = np.clip(np.floor((v.z_max - hi_z) / self.px - 0.5), 0, n).astype(int)
        i1 = np.clip(np.ceil((v.z_max - lo_z) / self.px + 0.5), 0, n).astype(int)
        return j0, j1, i0, i1

    def _scatter(self, canvas, j0, i0, size, values):
        """Add (n, h, w) patches at (i0, j0) into the padded flat canvas; size = (h, w)."""
        h, w = size
        idx = (i0[:, None, None] + self.offs[None, :h, None]) * self.width + (
            j0[:, None, None] + self.offs[None, None, :w])
        self._local.pending.append((idx.ravel(), values.ravel()))

    # -- primitives ---------------------------------------------------------------------------
    def ellipsoids(self, canvas, center, shape, mu):
        if len(mu) == 0:
            return
        center, shape = _magnify_ellipsoids(self.view, center, shape)
        c2, inv, peak, _, _, ext = (x.astype(np.float32) for x in _ell_params(self.view, center, shape))
        j0, j1, i0, i1 = self._box(c2[:, 0] - ext[:, 0], c2[:, 0] + ext[:, 0],
                                   c2[:, 1] - ext[:, 1], c2[:, 1] + ext[:, 1])
        mu = mu.astype(np.float32)
        size = np.maximum(j1 - j0, i1 - i0)
        amp = mu * peak
        for (sh, sw), sel in _groups(i1 - i0, j1 - j0):
            if sh is None:
                continue
            du = self.a_coords.take(np.minimum(j0[sel, None] + self.offs[:sw], self.res - 1)) - c2[sel, :1]
            dz = self.z_coords.take(np.minimum(i0[sel, None] + self.offs[:sh], self.res - 1)) - c2[sel, 1:]
            q = (inv[sel, 0, None, None] * du[:, None, :] ** 2
                 + 2 * inv[sel, 1, None, None] * du[:, None, :] * dz[:, :, None]
                 + inv[sel, 2, None, None] * dz[:, :, None] ** 2)
            val = amp[sel, None, None] * np.sqrt(np.maximum(1.0 - q, 0.0))
            self._scatter(canvas, j0[sel], i0[sel], (sh, sw), val)
        img = canvas.reshape(-1, self.width)
        for k in np.flatnonzero(size > PATCH):
            du = self.a_coords[j0[k]:j1[k]] - c2[k, 0]
            dz = self.z_coords[i0[k]:i1[k], None] - c2[k, 1]
            q = inv[k, 0] * du**2 + 2 * inv[k, 1] * du * dz + inv[k, 2] * dz**2
            img[i0[k]:i1[k], j0[k]:j1[k]] += amp[k] * np.sqrt(np.maximum(1.0 - q, 0.0))

    def tubes(self, canvas, p0, p1, radius, mu):
        if len(mu) == 0:
            return
        v = self.view
        ref = v.z_max - v.fov / 2
        m0 = v.magnification(p0[:, v.depth_axis])[:, None]
        m1 = v.magnification(p1[:, v.depth_axis])[:, None]
        e3 = np.linalg.norm(p1 - p0, axis=1)
        a0 = p0[:, [v.a_axis, 2]] * m0
        a1 = p1[:, [v.a_axis, 2]] * m1
        a0[:, 1] += (1 - m0[:, 0]) * ref
        a1[:, 1] += (1 - m1[:, 0]) * ref
        r = radius * 0.5 * (m0[:, 0] + m1[:, 0])
        a0, a1, r, mu, e3 = (x.astype(np.float32) for x in (a0, a1, r, mu, e3))
        e2 = a1 - a0
        l2 = np.maximum((e2**2).sum(1), 1e-9)
        sin = np.maximum(np.sqrt(l2) / np.maximum(e3, 1e-9), r / np.maximum(e3, r))
        amp = 2.0 * mu / sin
        lo, hi = np.minimum(a0, a1) - r[:, None], np.maximum(a0, a1) + r[:, None]
        j0, j1, i0, i1 = self._box(lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1])
        r2 = r**2
        for (sh, sw), sel in _groups(i1 - i0, j1 - j0):
            if sh is None:  # rare: long straight segments, one slice each
                for k in sel:
                    self._tube_slice(canvas, a0[k], e2[k], l2[k], r2[k], amp[k], j0[k], j1[k], i0[k], i1[k])
                continue
            wa = self.a_coords.take(np.minimum(j0[sel, None] + self.offs[:sw], self.res - 1)) - a0[sel, :1]
            wz = self.z_coords.take(np.minimum(i0[sel, None] + self.offs[:sh], self.res - 1)) - a0[sel, 1:]
            wa, wz = wa[:, None, :], wz[:, :, None]
            ea, ez = e2[sel, 0, None, None], e2[sel, 1, None, None]
            dot = wa * ea + wz * ez
            ll = l2[sel, None, None]
            rho2 = wa**2 + wz**2 - dot**2 / ll
            inside = (dot >= 0) & (dot <= ll)
            val = amp[sel, None, None] * np.sqrt(np.maximum(r2[sel, None, None] - rho2, 0.0)) * inside
            self._scatter(canvas, j0[sel], i0[sel], (sh, sw), val)

    def _tube_slice(self, canvas, a0, e2, l2, r2, amp, j0, j1, i0, i1):
        img = canvas.reshape(-1, self.width)
        wa = self.a_coords[j0:j1] - a0[0]
        wz = self.z_coords[i0:i1, None] - a0[1]
        dot = wa * e2[0] + wz * e2[1]
        rho2 = wa**2 + wz**2 - dot**2 / l2
        img[i0:i1, j0:j1] += amp * np.sqrt(np.maximum(r2 - rho2, 0.0)) * ((dot >= 0) & (dot <= l2))

    def compounds(self, canvas, items):
        img = canvas.reshape(-1, self.width)
        for a, clip, minus, mu in items:
            parts = [e for e in (a, clip, minus) if e is not None]
            center, shape = _magnify_ellipsoids(
                self.view, np.stack([e.center for e in parts]), np.stack([e.shape for e in parts]))
            c2, inv, peak, cd, slope, ext = (x.astype(np.float32) for x in _ell_params(self.view, center, shape))
            n_box = 2 if clip is not None else 1
            lo_a = np.max(c2[:n_box, 0] - ext[:n_box, 0])
            hi_a = np.min(c2[:n_box, 0] + ext[:n_box, 0])
            lo_z = np.max(c2[:n_box, 1] - ext[:n_box, 1])
            hi_z = np.min(c2[:n_box, 1] + ext[:n_box, 1])
            if hi_a <= lo_a or hi_z <= lo_z:
                continue
            j0, j1, i0, i1 = (int(x) for x in self._box(np.array(lo_a), np.array(hi_a),
                                                        np.array(lo_z), np.array(hi_z)))
            if j1 <= j0 or i1 <= i0:
                continue
            ivs = []
            for k in range(len(parts)):
                du = self.a_coords[j0:j1] - c2[k, 0]
                dz = self.z_coords[i0:i1, None] - c2[k, 1]
                q = inv[k, 0] * du**2 + 2 * inv[k, 1] * du * dz + inv[k, 2] * dz**2
                h = np.where(q < 1, 0.5 * peak[k] * np.sqrt(np.abs(1 - q)), np.float32(-1e3))
                mid = cd[k] + slope[k, 0] * du + slope[k, 1] * dz
                ivs.append((mid - h, mid + h))
            lo, hi = ivs[0]
            if clip is not None:
                lo, hi = np.maximum(lo, ivs[1][0]), np.minimum(hi, ivs[1][1])
            length = np.maximum(hi - lo, 0.0)
            if minus is not None:
                mlo, mhi = ivs[-1]
                length = length - np.maximum(np.minimum(hi, mhi) - np.maximum(lo, mlo), 0.0).clip(0, None)
                length = np.maximum(length, 0.0)
            img[i0:i1, j0:j1] += mu * length

    def render(self, scene: Scene) -> np.ndarray:
        """Line-integral image (res, res) float32 of the scene."""
        canvas = np.zeros(self.width * self.width, np.float32)
        self._local.pending = []
        if scene.ell_mu:
            self.ellipsoids(canvas, np.stack(scene.ell_center), np.stack(scene.ell_shape),
                            np.asarray(scene.ell_mu, float))
        if scene.tube_mu:
            self.tubes(canvas, np.concatenate(scene.tube_p0), np.concatenate(scene.tube_p1),
                       np.concatenate(scene.tube_r), np.concatenate(scene.tube_mu))
        self.compounds(canvas, scene.compounds)
        pending = self._local.pending
        if pending:  # one scatter for all batched patches
            idx = np.concatenate([p[0] for p in pending])
            val = np.concatenate([p[1] for p in pending])
            canvas += np.bincount(idx, val, minlength=canvas.size).astype(np.float32)
            self._local.pending = []
        return canvas.reshape(self.width, self.width)[: self.res, : self.res].astype(np.float32)


_EDGES = np.array([2, 4, 8, 12, 16, 24, 32, PATCH])


def _groups(h, w):
    """((patch h, patch w), indices) per box-size class; ((None, None), indices) for boxes with a
    side bigger than PATCH (rendered one by one); empty boxes are dropped."""
    ch, cw = np.searchsorted(_EDGES, h), np.searchsorted(_EDGES, w)  # first edge >= size
    big = (ch >= len(_EDGES)) | (cw >= len(_EDGES))
    ok = (h > 0) & (w > 0)
    out = []
    if np.any(big & ok):
        out.append(((None, None), np.flatnonzero(big & ok)))
    key = np.where(big | ~ok, -1, ch * len(_EDGES) + cw)
    for k in np.unique(key[key >= 0]):
        out.append(((int(_EDGES[k // len(_EDGES)]), int(_EDGES[k % len(_EDGES)])), np.flatnonzero(key == k)))
    return out
