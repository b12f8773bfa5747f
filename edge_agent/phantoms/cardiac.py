"""A non-contrast chest / calcium-score CT phantom with a heart, coronary tree and calcium of known truth.

Analytic anatomy in patient coordinates (LPS mm: x patient-left, y posterior,
z superior; the aortic valve plane at z = 0), rendered slice by slice on
sub-planes ≤ 0.5 mm apart and averaged (through-plane partial volume):

* body (subcutaneous fat, chest-wall muscle), mediastinal fat, lungs
  (-860 HU), the liver dome below the right lung;
* heart: an ellipsoid of myocardium (45 HU) with blood-filled chambers
  (40 HU, no contrast) in an epicardial fat shell (-100 HU), the left atrium
  behind the aortic root; aortic root (sinuses) in a myocardial cuff, the
  ascending aorta (tilting right-anterior as it rises, in mediastinal fat),
  arch, descending aorta beside the spine, pulmonary trunk;
* coronary arteries as 3-D tubes (lumen 40 HU, radius 1.5–2 mm) in the
  epicardial fat 3 mm outside the myocardium: LM from the left sinus, LAD down
  the anterior interventricular groove, LCX round the left atrioventricular
  groove, RCA from the right sinus round the right groove;
* calcified plaques: spheres on the vessel wall (radius 0.9–2.6 mm,
  180–950 HU), each with its artery, centre, radius and HU in ``details``;
* confounders (``force`` keys, default on): aortic valve calcium
  (``valve``), mitral annulus calcium (``mitral``), calcified aortic wall
  plaques on the ascending, arch and descending aorta (``aortic_wall``),
  costal cartilage calcification (``cartilage``); always: spine (cortex,
  marrow, discs), ribs, sternum;
* scanner: soft / standard kernel noise texture (``edge_agent.phantoms._scanner``),
  3 mm (default) or 0.625–5 mm slices; ``gated=True`` gives a small field of
  view centred on the heart and calcium-score headers; ``contrast=True`` fills
  the blood pool with iodine (250–330 HU) and says so in the header.

Truth per voxel: ``plaque_labels`` (0, or 1–4 = LM, LAD, LCX, RCA: every voxel a
plaque touches on any sub-plane) and ``confounder_labels`` (1 valve, 2 mitral
annulus, 3 aortic wall, 4 costal cartilage). Deterministic per seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_agent.dicom.synth import SeriesHeaders
from edge_agent.hu import AIR_HU
from edge_agent.phantoms import Phantom
from edge_agent.phantoms._scanner import draw_recon, texture_noise

ARTERIES = ("LM", "LAD", "LCX", "RCA")
CONFOUNDERS = ("valve", "mitral", "aortic_wall", "cartilage")
AIR = AIR_HU


@dataclass
class CardiacPhantom(Phantom):
    """A :class:`Phantom` with the calcium truth: per-voxel plaque and confounder labels."""

    plaque_labels: np.ndarray | None = None       # int8 (z, y, x): 0 or 1 + index in ARTERIES
    confounder_labels: np.ndarray | None = None   # int8 (z, y, x): 0 or 1 + index in CONFOUNDERS


def _u(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([math.cos(a), math.sin(a)])


class _Anatomy:
    """The drawn geometry of one phantom (all mm, LPS)."""

    def __init__(self, rng: np.random.Generator):
        j = lambda v, s: float(v * (1.0 + rng.uniform(-s, s)))  # noqa: E731
        self.heart_c = np.array([j(20.0, 0.2), j(-16.0, 0.15), -50.0])
        self.heart_ax = np.array([j(62.0, 0.06), j(46.0, 0.05), 52.0])
        self.root = np.array([rng.uniform(-3, 3), rng.uniform(-18, -12)])
        self.root_r = float(rng.uniform(13.0, 15.0))
        self.asc_top = self.root + np.array([-14.0, -12.0])
        self.desc = np.array([rng.uniform(22, 30), rng.uniform(47, 53)])
        self.desc_r = float(rng.uniform(11.0, 13.0))
        self.spine = np.array([0.0, 72.0])
        self.la_c = np.array([self.root[0] + 12.0, self.root[1] + 30.0, -4.0])
        self.pt0 = np.array([self.root[0] + 36.0, self.root[1] - 20.0, 0.0])
        self.pt1 = np.array([self.root[0] + 30.0, self.root[1], 42.0])
        self.rib_phase = float(rng.uniform(0, 360))

    def surface(self, theta_deg: float, z: float, off: float = 3.0) -> np.ndarray:
        """A point on the heart's surface at azimuth ``theta`` and level ``z``, ``off`` mm outside."""
        c, a = self.heart_c, self.heart_ax
        s = math.sqrt(max(1.0 - ((z - c[2]) / a[2]) ** 2, 0.05))
        u = _u(theta_deg)
        return np.array([c[0] + (a[0] * s + off) * u[0], c[1] + (a[1] * s + off) * u[1], z])

    def asc_centre(self, z: float) -> np.ndarray:
        t = float(np.clip((z - 12.0) / 70.0, 0.0, 1.0))
        return self.root + t * (self.asc_top - self.root)


def _polyline(points: list[np.ndarray], step: float = 0.5) -> np.ndarray:
    out = []
    for p, q in zip(points[:-1], points[1:]):
        n = max(int(np.linalg.norm(q - p) / step), 1)
        out += [p + (q - p) * t for t in np.linspace(0.0, 1.0, n, endpoint=False)]
    out.append(points[-1])
    return np.array(out)


def _coronaries(a: _Anatomy) -> dict[str, np.ndarray]:
    """Centre lines (N, 3) of LM, LAD, LCX, RCA."""
    zo = 8.0
    ost_l = np.array([*(a.root + (a.root_r + 0.5) * _u(10.0)), zo])
    bif = np.array([*(a.root + (a.root_r + 12.0) * _u(10.0)), zo - 2.0])
    lad = [bif] + [a.surface(th, z) for th, z in zip(np.linspace(-75, -30, 12), np.linspace(-4, -88, 12))]
    lcx = [bif] + [a.surface(th, z) for th, z in zip(np.linspace(20, 80, 10), np.linspace(-4, -30, 10))]
    ost_r = np.array([*(a.root + (a.root_r + 0.5) * _u(235.0)), zo])
    rca = [ost_r, np.array([*(a.root + (a.root_r + 10.0) * _u(235.0)), zo - 3.0])] + \
        [a.surface(th, z) for th, z in zip(np.linspace(200, 150, 12), np.linspace(-10, -75, 12))]
    return {"LM": _polyline([ost_l, bif]), "LAD": _polyline(lad), "LCX": _polyline(lcx), "RCA": _polyline(rca)}


def _plaques(rng: np.random.Generator, lines: dict[str, np.ndarray], n: int, heavy: bool) -> list[dict]:
    out = []
    arteries = list(ARTERIES)
    for i in range(n):
        art = arteries[i % 4] if i < 4 else str(rng.choice(arteries, p=[0.1, 0.4, 0.2, 0.3]))
        line = lines[art]
        k = int(rng.integers(2, max(len(line) - 2, 3)))
        tangent = line[min(k + 1, len(line) - 1)] - line[max(k - 1, 0)]
        normal = np.cross(tangent, [0.0, 0.0, 1.0])
        normal = normal / (np.linalg.norm(normal) + 1e-9)
        centre = line[k] + normal * 0.8
        radius = float(rng.uniform(1.4, 2.6) if heavy else rng.uniform(0.9, 2.0))
        out.append({"artery": art, "centre": [round(float(v), 3) for v in centre], "radius_mm": round(radius, 3),
                    "hu": round(float(rng.uniform(250, 950) if heavy else rng.uniform(180, 700)), 1)})
    return out


def _confounder_spheres(rng: np.random.Generator, a: _Anatomy, force: dict) -> list[dict]:
    out = []
    if force.get("valve", True):
        for ang in (90.0, 210.0, 330.0):
            c = a.root + a.root_r * 0.6 * _u(ang + rng.uniform(-15, 15))
            out.append({"kind": "valve", "centre": [*c, rng.uniform(-1.5, 1.5)], "radius_mm": rng.uniform(2.0, 3.0),
                        "hu": rng.uniform(450, 900)})
    if force.get("mitral", True):
        m = np.array([a.root[0] + 18.0, a.root[1] + 20.0, -10.0])
        for ang in np.linspace(60, 300, 9):
            c = m[:2] + 11.0 * _u(ang)
            out.append({"kind": "mitral", "centre": [c[0], c[1], m[2] + 3.0 * math.sin(math.radians(ang))],
                        "radius_mm": rng.uniform(1.8, 2.5), "hu": rng.uniform(350, 800)})
    if force.get("aortic_wall", True):
        for z in (30.0, 55.0):  # ascending aorta, above the root
            c = a.asc_centre(z) + (a.root_r + 0.5) * _u(rng.uniform(0, 360))
            out.append({"kind": "aortic_wall", "centre": [*c, z], "radius_mm": 2.2, "hu": rng.uniform(400, 900)})
        for z in (-60.0, -20.0, 20.0):  # descending aorta, beside the spine
            c = a.desc + (a.desc_r + 0.3) * _u(rng.uniform(100, 260))
            out.append({"kind": "aortic_wall", "centre": [*c, z], "radius_mm": 2.3, "hu": rng.uniform(400, 900)})
    if force.get("cartilage", True):
        for z in (-60.0, -25.0, 15.0):
            for side in (-1.0, 1.0):
                out.append({"kind": "cartilage", "centre": [side * 30.0, -84.0, z], "radius_mm": 2.5,
                            "hu": rng.uniform(300, 650)})
    return out


class _Grid:
    """The pixel grid of a slice; paints shapes on small boxes of it."""

    def __init__(self, X: np.ndarray, Y: np.ndarray):
        self.X, self.Y = X, Y
        self.x0, self.y0 = float(X[0, 0]), float(Y[0, 0])
        self.px = float(X[0, 1] - X[0, 0])

    def box(self, cx: float, cy: float, rx: float, ry: float):
        px = self.px
        c0, c1 = max(int((cx - rx - self.x0) / px), 0), min(int((cx + rx - self.x0) / px) + 2, self.X.shape[1])
        r0, r1 = max(int((cy - ry - self.y0) / px), 0), min(int((cy + ry - self.y0) / px) + 2, self.X.shape[0])
        if c0 >= c1 or r0 >= r1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def ellipse(self, img: np.ndarray, cx: float, cy: float, ax: float, ay: float, value, where=None) -> None:
        b = self.box(cx, cy, ax, ay)
        if b is None:
            return
        m = ((self.X[b] - cx) / ax) ** 2 + ((self.Y[b] - cy) / ay) ** 2 <= 1.0
        if where is not None:
            m &= where[b]
        img[b][m] = value

    def disk(self, cx: float, cy: float, rho2: float):
        rho = math.sqrt(rho2)
        b = self.box(cx, cy, rho, rho)
        if b is None:
            return None, None
        return b, (self.X[b] - cx) ** 2 + (self.Y[b] - cy) ** 2 <= rho2


def _base(a: _Anatomy, g: _Grid) -> tuple[np.ndarray, np.ndarray]:
    """What does not change along z: body, chest wall, cavity, lungs (and the cavity mask)."""
    X, Y = g.X, g.Y
    img = np.full(X.shape, AIR, np.float32)
    img[((X / 150) ** 2 + ((Y - 5) / 105) ** 2) <= 1] = -100.0
    img[((X / 139) ** 2 + ((Y - 5) / 94) ** 2) <= 1] = 45.0
    cavity = ((X / 128) ** 2 + ((Y - 5) / 83) ** 2) <= 1
    img[cavity] = -90.0
    lung = cavity & ((((X + 62) / 62) ** 2 + ((Y - 5) / 78) ** 2 <= 1) | (((X - 62) / 60) ** 2 + ((Y - 8) / 76) ** 2 <= 1))
    img[lung] = -860.0
    return img, cavity


def _plane(a: _Anatomy, g: _Grid, base: np.ndarray, cavity: np.ndarray, z: float, contrast_hu: float | None,
           lines: dict[str, np.ndarray], spheres: list[tuple[np.ndarray, float, float, int, int]]):
    """One sub-plane at level z: (HU image, plaque label, confounder label)."""
    blood = 40.0 if contrast_hu is None else contrast_hu
    img = base.copy()
    if z < -78.0:  # the liver dome under the right lung
        rad = 1.0 - ((z + 150) / 70) ** 2
        if rad > 0:
            g.ellipse(img, -40, 10, 110 * math.sqrt(rad), 90 * math.sqrt(rad), 55.0, where=cavity)
    # spine: vertebral body (disc every 25 mm), canal, posterior elements
    sx, sy = a.spine
    disc = (z % 25.0) < 5.0
    g.ellipse(img, sx, sy, 19, 19, 800.0 if not disc else 80.0)
    g.ellipse(img, sx, sy, 16.5, 16.5, 220.0 if not disc else 80.0)
    g.ellipse(img, sx, sy + 28, 9, 9, 15.0)
    g.ellipse(img, sx, sy + 40, 24, 6, 700.0)
    g.ellipse(img, sx, sy + 52, 5, 10, 700.0)
    # ribs: ovals round the cavity, sternum in front, costal cartilage beside it
    for i in range(14):
        u = _u(a.rib_phase + i * (360.0 / 14) + z * 0.4)
        cx, cy = 133.0 * u[0], 5 + 88.0 * u[1]
        if abs(cx) < 40 and cy < 0:
            continue
        g.ellipse(img, cx, cy, 7, 5, 900.0)
        g.ellipse(img, cx, cy, 5.8, 3.8, 250.0)
    g.ellipse(img, 0, -86, 16, 7, 700.0)
    g.ellipse(img, 0, -86, 14.5, 5.5, 250.0)
    if (z % 30.0) < 12.0:
        for side in (-1.0, 1.0):
            g.ellipse(img, side * 30.0, -84.0, 10, 5, 120.0)
    # descending aorta in a fat collar; arch above
    g.ellipse(img, *a.desc, a.desc_r + 3, a.desc_r + 3, -90.0)
    g.ellipse(img, *a.desc, a.desc_r, a.desc_r, blood)
    if 82.0 <= z <= 96.0:
        p, q = a.asc_top, a.desc
        b = g.box(*(0.5 * (p + q)), abs(q[0] - p[0]) / 2 + 20, abs(q[1] - p[1]) / 2 + 20)
        Xb, Yb = g.X[b], g.Y[b]
        d = q - p
        t = np.clip(((Xb - p[0]) * d[0] + (Yb - p[1]) * d[1]) / float(d @ d), 0.0, 1.0)
        dist = np.hypot(Xb - (p[0] + t * d[0]), Yb - (p[1] + t * d[1]))
        img[b][dist <= 16.0] = -90.0
        img[b][dist <= 13.0] = blood
    # heart: epicardial fat shell, myocardium, chambers; left atrium; pulmonary trunk
    c, ax = a.heart_c, a.heart_ax
    la_ax = np.array([30.0, 16.0, 18.0])

    def ell3(cc, aa, grow=0.0, value=None):
        h = 1.0 - ((z - cc[2]) / (aa[2] + grow)) ** 2
        if h > 0:
            g.ellipse(img, cc[0], cc[1], (aa[0] + grow) * math.sqrt(h), (aa[1] + grow) * math.sqrt(h), value)

    ell3(c, ax, 8.0, -100.0)
    ell3(a.la_c, la_ax, 6.0, -100.0)
    ell3(c, ax, 0.0, 45.0)
    ell3(a.la_c, la_ax, 0.0, 45.0)
    ell3(a.la_c, la_ax, -3.0, blood)
    for off, semi in (((12, 2, -8), (0.5, 0.45, 0.55)), ((-22, -8, 0), (0.35, 0.5, 0.5))):
        ell3(c + np.array(off), ax * np.array(semi), 0.0, blood)
    if 0.0 <= z <= 42.0:
        pc = a.pt0 + (z / 42.0) * (a.pt1 - a.pt0)
        g.ellipse(img, pc[0], pc[1], 16, 16, -90.0)
        g.ellipse(img, pc[0], pc[1], 13, 13, blood)
    # aortic root in a myocardial cuff (fat wedges where the LM and RCA leave), ascending aorta in fat
    if -4.0 <= z <= 12.0:
        r = a.root
        b = g.box(r[0], r[1], a.root_r + 9, a.root_r + 9)
        Xb, Yb = g.X[b], g.Y[b]
        cuff = (Xb - r[0]) ** 2 + (Yb - r[1]) ** 2 <= (a.root_r + 9) ** 2
        ang = np.degrees(np.arctan2(Yb - r[1], Xb - r[0])) % 360.0
        wedge = ((ang >= 355) | (ang <= 30)) | ((ang >= 215) & (ang <= 255))
        img[b][cuff & ~wedge] = 45.0
        img[b][cuff & wedge] = -100.0
        g.ellipse(img, r[0], r[1], a.root_r, a.root_r, blood)
    if 12.0 < z < 96.0:
        ac = a.asc_centre(z)
        g.ellipse(img, ac[0], ac[1], a.root_r + 4, a.root_r + 4, -90.0)
        g.ellipse(img, ac[0], ac[1], a.root_r + 0.5, a.root_r + 0.5, blood)
    # coronary arteries: a sleeve of epicardial fat, then the lumen
    for line in lines.values():
        for p in line[np.abs(line[:, 2] - z) < 4.5]:
            b, m = g.disk(p[0], p[1], 4.5 ** 2 - (p[2] - z) ** 2)
            if b is not None:
                img[b][m & (img[b] < -400.0)] = -100.0
    for name, line in lines.items():
        radius = 2.0 if name in ("LM", "RCA") else 1.6
        for p in line[np.abs(line[:, 2] - z) < radius]:
            b, m = g.disk(p[0], p[1], radius ** 2 - (p[2] - z) ** 2)
            if b is not None:
                img[b][m] = blood
    plaque = {}
    conf = {}
    for centre, radius, hu, art, kind in spheres:
        dz = z - centre[2]
        if abs(dz) >= radius:
            continue
        b, m = g.disk(centre[0], centre[1], radius ** 2 - dz ** 2)
        if b is None:
            continue
        img[b][m] = hu
        if art:
            plaque.setdefault(art, []).append((b, m))
        if kind:
            conf.setdefault(kind, []).append((b, m))
    return img, plaque, conf


def cardiac_phantom(seed: int, *, plaques: int | None = None, heavy: bool | None = None, gated: bool = False,
                    contrast: bool = False, thickness_mm: float = 3.0, matrix: int = 512,
                    force: dict | None = None) -> CardiacPhantom:
    """A non-contrast chest CT (or, ``gated``, a calcium-score CT) with coronary calcium of known truth.

    ``plaques``: number of calcified coronary plaques (default 0–8; 0 = confounders only); ``heavy``: larger,
    denser plaques; ``force``: confounders on/off (:data:`CONFOUNDERS`), ``kernel`` (soft | standard),
    ``noise_sd``. Deterministic per seed.
    """
    force = dict(force or {})
    rng = np.random.default_rng([seed, 4101])
    a = _Anatomy(rng)
    if plaques is None:
        plaques = int(rng.integers(0, 9))
    if heavy is None:
        heavy = bool(rng.random() < 0.4)
    lines = _coronaries(a)
    found = _plaques(rng, lines, plaques, heavy)
    confounders = _confounder_spheres(rng, a, force)
    spheres = [(np.array(p["centre"]), p["radius_mm"], p["hu"], 1 + ARTERIES.index(p["artery"]), 0) for p in found]
    spheres += [(np.array(c["centre"], float), float(c["radius_mm"]), float(c["hu"]), 0,
                 1 + CONFOUNDERS.index(c["kind"])) for c in confounders]
    fov = float(rng.uniform(190, 220)) if gated else float(rng.uniform(360, 400))
    centre = (a.heart_c[0], a.heart_c[1] + 20.0) if gated else (0.0, 5.0)
    px = fov / matrix
    x0, y0 = centre[0] - fov / 2 + px / 2, centre[1] - fov / 2 + px / 2
    xs, ys = x0 + px * np.arange(matrix), y0 + px * np.arange(matrix)
    X, Y = np.meshgrid(xs, ys)
    z_lo, z_hi = (-105.0, 36.0) if gated else (-110.0, 100.0)
    n = int((z_hi - z_lo) // thickness_mm)
    zs = z_lo + thickness_mm * (np.arange(n) + 0.5)
    sub = max(3, int(math.ceil(thickness_mm / 0.5)))  # sub-planes ≤ 0.5 mm apart
    contrast_hu = float(rng.uniform(250, 330)) if contrast else None
    recon = draw_recon(rng, thickness_mm, {"kernel": force.get("kernel", str(rng.choice(["soft", "standard"])))})
    sd = float(force.get("noise_sd", rng.uniform(6.0, 14.0)))
    outside = (X - centre[0]) ** 2 + (Y - centre[1]) ** 2 > (fov / 2) ** 2
    grid = _Grid(X, Y)
    base, cavity = _base(a, grid)
    images, plab, clab = [], [], []
    for k, zc in enumerate(zs):
        acc = np.zeros(X.shape, np.float64)
        pk = np.zeros(X.shape, np.int8)
        ck = np.zeros(X.shape, np.int8)
        for zsub in zc + thickness_mm * ((np.arange(sub) + 0.5) / sub - 0.5):
            img, p, c = _plane(a, grid, base, cavity, float(zsub), contrast_hu, lines, spheres)
            acc += img
            for labels, found_ in ((pk, p), (ck, c)):
                for value, parts in found_.items():
                    for b, m in parts:
                        labels[b][m] = value
        img = (acc / sub).astype(np.float32)
        noise = texture_noise(np.random.default_rng([seed, 4102, k]), X.shape, recon) * sd
        img = np.where(img > -990.0, img + noise, img)
        img[outside] = AIR
        images.append(np.round(np.maximum(img, AIR)))
        plab.append(pk)
        clab.append(ck)
    volume = np.stack(images).astype(np.float32)
    plaque_labels, confounder_labels = np.stack(plab), np.stack(clab)
    kernel = {"soft": "B30f", "standard": "B35f"}.get(recon["kernel"], "STANDARD")
    extra = {"ConvolutionKernel": kernel, "PatientAge": "064Y"}
    if gated:
        extra.update(CardiacSynchronizationTechnique="PROSPECTIVE", TriggerTime=350.0)
        study, series, body = "CT CARDIAC CALCIUM SCORE", f"CaSc {thickness_mm:g}mm {kernel}", "HEART"
    else:
        study, series, body = "CT CHEST WO CONTRAST", f"CHEST {thickness_mm:g}mm {kernel}", "CHEST"
    if contrast:
        extra.update(ContrastBolusAgent="IOPAMIDOL 370", ContrastBolusRoute="IV")
        study, series = "CT CHEST W CONTRAST", f"CHEST C+ {thickness_mm:g}mm {kernel}"
    headers = SeriesHeaders(patient_name="PHANTOM^HEART", patient_id=f"CAC{seed:05d}", study_description=study,
                            series_description=series, body_part=body, accession_number=f"CAC{seed:07d}",
                            window=(40.0, 400.0), extra=extra)
    details = {"seed": seed, "plaques": found, "confounders": confounders, "gated": gated, "contrast": contrast,
               "thickness_mm": thickness_mm, "pixel_spacing_mm": px, "kernel": recon["kernel"], "noise_sd_hu": sd,
               "root": {"centre": [float(v) for v in a.root], "radius_mm": a.root_r, "valve_z_mm": 0.0}}
    labels = (plaque_labels > 0).any(axis=(1, 2))
    return CardiacPhantom(
        volume_hu=volume, spacing=(thickness_mm, px, px), outside_mask=outside, slice_labels=labels,
        kind="chest", finding="coronary_calcium" if labels.any() else None, details=details, headers=headers,
        origin=(float(x0), float(y0), float(zs[0])), slice_positions=zs, finding_mask=plaque_labels > 0,
        plaque_labels=plaque_labels, confounder_labels=confounder_labels)
