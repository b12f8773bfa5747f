"""Exact slab rendering of small chest structures, and the 3-D pulmonary vessel and airway trees.

Small structures (vessels, airways, nodules, calcifications, nodes) are rendered
on ``n_sub`` planes through the slice thickness and averaged, so through-plane
partial volume is physical: a vessel crossing a 5 mm slice obliquely is a
smeared ellipse, an end-on vessel is a dot that reappears, shifted, on the next
slice, and a 4 mm nodule in a 5 mm slice is a faint blob. Everything is computed
in the scanner frame (the phantom's rotation applied once to the geometry), in
pixel boxes around each object.

The vessel trees start at the hila and branch in 3-D (monopodial branching:
the major child keeps most of the calibre, Murray's law r³ = r1³ + r2³ for the
pair), tapering from 4–6.5 mm trunk radii to ~0.5 mm at the periphery, kept
inside the lungs. The calibre is also bounded by the depth of the point in
the lung (radius ≤ ``r_min`` + ``DEPTH_RADIUS`` × the distance to the costal
and diaphragmatic pleura): on
real CT the vessels of the outer centimetre or two are ≤ 1–2 mm across and
fade out under the pleura, and the hilar ones are thick (Weibel / Horsfield
morphometry; Fleischner glossary: the subpleural lung is nearly vessel-free
on CT). Without that bound the main stems stayed 5–6 mm thick out to the
chest wall and the phantom lung was a bundle of thick straight sticks that
no real lung looks like. Segments are short enough that a vessel
curves, long enough (4–8 calibres) that the trees reach the outer lung. Arteries run beside the bronchi of the first generations; veins form
a second, interleaved tree draining to the lower hila.
"""

from __future__ import annotations

import math

import numpy as np

from edge_agent.phantoms._geometry import Acquisition


class Slab:
    """The slice at scanner height ``z``: pixel axes and the sub-planes through its thickness."""

    def __init__(self, acq: Acquisition, z: float, sub_mm: float = 1.25):
        self.acq = acq
        self.z = float(z)
        self.n = acq.matrix
        self.px = acq.pixel_spacing
        self.n_sub = max(1, int(math.ceil(acq.thickness / sub_mm - 1e-6)))
        t = acq.thickness
        self.zs = (self.z + t * ((np.arange(self.n_sub) + 0.5) / self.n_sub - 0.5)).astype(np.float32)
        axis = ((np.arange(self.n) - (self.n - 1) / 2.0) * self.px).astype(np.float32)
        self.xs = axis - np.float32(acq.centre[0])    # scanner x of each column
        self.ys = axis - np.float32(acq.centre[1])    # scanner y of each row
        self.rt = acq.rotation.T.astype(np.float32)   # scanner → phantom

    def box(self, x0: float, x1: float, y0: float, y1: float):
        """Pixel box (rows, cols) of a scanner-frame rectangle (mm); None when it misses the image."""
        n, px = self.n, self.px
        c0 = int(math.floor((x0 + self.acq.centre[0]) / px + (n - 1) / 2.0)) - 1
        c1 = int(math.ceil((x1 + self.acq.centre[0]) / px + (n - 1) / 2.0)) + 2
        r0 = int(math.floor((y0 + self.acq.centre[1]) / px + (n - 1) / 2.0)) - 1
        r1 = int(math.ceil((y1 + self.acq.centre[1]) / px + (n - 1) / 2.0)) + 2
        r0, r1, c0, c1 = max(r0, 0), min(r1, n), max(c0, 0), min(c1, n)
        if r0 >= r1 or c0 >= c1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def coords(self, box):
        """Scanner coordinates broadcastable to (n_sub, h, w): X (1,1,w), Y (1,h,1), Z (n_sub,1,1)."""
        rs, cs = box
        return (self.xs[cs][None, None, :], self.ys[rs][None, :, None], self.zs[:, None, None])

    def phantom_coords(self, box):
        """Phantom-frame coordinates of the box's pixels on every sub-plane, each (n_sub, h, w)."""
        X, Y, Z = self.coords(box)
        r = self.rt
        return tuple(r[i, 0] * X + r[i, 1] * Y + r[i, 2] * Z for i in range(3))


def to_scanner(acq: Acquisition, p) -> np.ndarray:
    return acq.rotation @ np.asarray(p, float)


def capsule_m(slab: Slab, a_s: np.ndarray, b_s: np.ndarray, r: float, pad: float = 0.0, box=None):
    """(box, membership per sub-plane (n_sub, h, w)) of a capsule a→b (scanner frame) of radius ``r``;
    None when it does not reach the slab."""
    half = slab.acq.thickness / 2.0
    lo, hi = slab.z - half - r, slab.z + half + r
    az, bz = a_s[2], b_s[2]
    if max(az, bz) < lo or min(az, bz) > hi:
        return None
    d = b_s - a_s
    if abs(d[2]) > 1e-6:
        t0, t1 = sorted(((lo - az) / d[2], (hi - az) / d[2]))
        t0, t1 = max(t0, 0.0), min(t1, 1.0)
    else:
        t0, t1 = 0.0, 1.0
    p0, p1 = a_s + t0 * d, a_s + t1 * d
    m = r + pad + 1.5 * slab.px
    if box is None:
        box = slab.box(min(p0[0], p1[0]) - m, max(p0[0], p1[0]) + m, min(p0[1], p1[1]) - m, max(p0[1], p1[1]) + m)
    if box is None:
        return None
    X, Y, Z = slab.coords(box)
    ll = float(d @ d) + 1e-9
    t = np.clip(((X - a_s[0]) * d[0] + (Y - a_s[1]) * d[1] + (Z - a_s[2]) * d[2]) / ll, 0.0, 1.0)
    dx, dy, dz = X - a_s[0] - t * d[0], Y - a_s[1] - t * d[1], Z - a_s[2] - t * d[2]
    dist = np.sqrt(dx * dx + dy * dy + dz * dz)
    return box, np.clip(0.5 - (dist - r) / slab.px, 0.0, 1.0)


def ellipsoid_m(slab: Slab, c_s: np.ndarray, axes, frame: np.ndarray | None = None, box=None):
    """(box, membership per sub-plane) of an ellipsoid centred at ``c_s`` (scanner frame) with semi-axes
    ``axes`` along the columns of ``frame`` (scanner frame; identity when None)."""
    ext = float(max(axes))
    half = slab.acq.thickness / 2.0
    if abs(c_s[2] - slab.z) > ext + half:
        return None
    m = ext + 1.5 * slab.px
    if box is None:
        box = slab.box(c_s[0] - m, c_s[0] + m, c_s[1] - m, c_s[1] + m)
    if box is None:
        return None
    X, Y, Z = slab.coords(box)
    dx, dy, dz = X - np.float32(c_s[0]), Y - np.float32(c_s[1]), Z - np.float32(c_s[2])
    if frame is None:
        loc = (dx, dy, dz)
    else:
        f = frame.astype(np.float32)
        loc = tuple(f[0, i] * dx + f[1, i] * dy + f[2, i] * dz for i in range(3))
    q2 = sum((li / np.float32(ai)) ** 2 for li, ai in zip(loc, axes))
    g = np.sqrt(sum((li / np.float32(ai * ai)) ** 2 for li, ai in zip(loc, axes))) + 1e-9
    q = np.sqrt(q2) + 1e-9
    sd = (q - 1.0) * q / g
    return box, np.clip(0.5 - sd / slab.px, 0.0, 1.0)


def paint_m(img: np.ndarray, box, m_sub: np.ndarray, value, weight: np.ndarray | None = None) -> np.ndarray:
    """Blend ``value`` with the slab-averaged membership (optionally × ``weight`` on the box); returns it."""
    m = m_sub.mean(axis=0)
    if weight is not None:
        m = m * weight[box]
    t = img[box]
    t += m * (value - t)
    return m


def random_frame(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q


# --------------------------------------------------------------------------- trees


def _perp(u: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    v -= (v @ u) * u
    return v / (np.linalg.norm(v) + 1e-9)


#: A vessel's radius is at most ``r_min`` + this × its depth under the costal and diaphragmatic pleura (mm):
#: ~1 mm at 1 cm, ~2.2 mm at 3 cm, the full trunk calibre only in the central lung.
DEPTH_RADIUS = 0.06


def lung_depth(inside, p, cap: float = 90.0) -> float:
    """How deep ``p`` lies under the costal / diaphragmatic pleura (mm, to ~1 mm): the largest margin that
    ``inside(p, margin, pleural=True)`` still grants."""
    if not inside(p, 0.0, pleural=True):
        return 0.0
    lo, hi = 0.0, cap
    if inside(p, hi, pleural=True):
        return hi
    while hi - lo > 1.0:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if inside(p, mid, pleural=True) else (lo, mid)
    return lo


def vessel_tree(rng: np.random.Generator, root: np.ndarray, directions: list[np.ndarray], r0: float,
                inside, *, r_min: float = 0.35, budget: int = 700) -> list[tuple]:
    """Segments ``(a, b, r, generation)`` (phantom frame) of a tapering tree grown from ``root``.

    ``inside(p, margin)`` → bool keeps the tree inside the lungs (a branch that would leave is bent back,
    then stopped) and gives each point's depth, which bounds the calibre (:data:`DEPTH_RADIUS`). Breadth
    first with a segment ``budget``, so the finest generations are cut evenly."""
    segs: list[tuple] = []
    queue = [(root, d / np.linalg.norm(d), r0 * rng.uniform(0.85, 1.1), 0) for d in directions]
    head = 0
    while head < len(queue) and len(segs) < budget:
        a, u, r, gen = queue[head]
        head += 1
        if gen > 0:  # the trunks leave the hilum at full calibre; beyond, the depth bounds it
            r = min(r, r_min + DEPTH_RADIUS * lung_depth(inside, a))
        length = r * rng.uniform(4.0, 8.0) + rng.uniform(2.0, 5.0)
        b = a + u * length
        tries = 0
        while not inside(b) and tries < 4:
            u = u + rng.normal(0, 0.6, 3) - 0.5 * (b - root) / (np.linalg.norm(b - root) + 1e-9)
            u /= np.linalg.norm(u)
            length *= 0.7
            b = a + u * length
            tries += 1
        if not inside(b):
            continue
        segs.append((a, b, float(r), gen))
        if r * 0.62 < r_min:
            continue
        # monopodial bifurcation: major child keeps most calibre (Murray: r1³ + r2³ = r³)
        f = rng.uniform(0.72, 0.92)
        r1 = r * f
        r2 = max(r * (1.0 - f ** 3) ** (1.0 / 3.0), 0.0)
        axis = _perp(u, rng)
        a1, a2 = math.radians(rng.uniform(10, 30)), math.radians(rng.uniform(35, 70))
        u1 = math.cos(a1) * u + math.sin(a1) * axis
        u2 = math.cos(a2) * u - math.sin(a2) * axis
        queue.append((b, u1 / np.linalg.norm(u1), r1, gen + 1))
        if r2 >= r_min:
            queue.append((b, u2 / np.linalg.norm(u2), r2, gen + 1))
    return segs


def bronchi_along(rng: np.random.Generator, arteries: list[tuple], *, max_gen: int = 4,
                  r_art_min: float = 1.4) -> list[tuple]:
    """Bronchi beside the first arterial generations: ``(a, b, lumen_r, wall_mm, mucus)`` (phantom frame).

    The bronchus runs parallel to its artery, offset by the two radii plus a gap (the bronchovascular
    bundle): end-on, an artery dot with a ring beside it."""
    out = []
    offsets: dict[int, np.ndarray] = {}
    for i, (a, b, r, gen) in enumerate(arteries):
        if gen > max_gen or r < r_art_min:
            continue
        u = (b - a) / (np.linalg.norm(b - a) + 1e-9)
        off = offsets.get(gen)
        side = _perp(u, rng) if off is None else off - (off @ u) * u
        side /= np.linalg.norm(side) + 1e-9
        offsets[gen + 1] = side
        lumen = r * rng.uniform(0.55, 0.85)
        wall = max(0.5, lumen * rng.uniform(0.2, 0.35))
        shift = side * (r + lumen + wall + 0.5)
        out.append((a + shift, b + shift, float(lumen), float(wall), False))
    return out
