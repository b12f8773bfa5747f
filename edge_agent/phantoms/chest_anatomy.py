"""What real chest CTs have and ellipsoid chests lack (every item a nodule mimic or a texture the model must learn).

Phantom frame: x to the patient's left, y posterior, z superior (mm).

- chest wall: fat, muscle, **ribs** (oblique hoops descending anteriorly: cortex and marrow, seen as
  ovals in the wall), **costal cartilage** joining the sternum (80–150 HU, often calcified), sternum,
  **spine** (vertebral bodies with cortex and discs, canal, posterior elements);
- **lungs** shaped by the chest wall, the mediastinum, the heart and the **diaphragm domes** (right
  higher), with a low-frequency parenchymal texture and a dependent density gradient; below the domes
  the **liver dome**, spleen, stomach (air-fluid level) and the **splenic flexure** (gas and stool): in
  a thick slice the top of a dome is a round hazy density inside the lung;
- **vessels** that branch in 3-D from the hila and taper (:mod:`edge_agent.phantoms.chest_vessels`),
  bronchi beside them, **mucus**-filled bronchi;
- **lobar fissures** (a thin sheet: a line on thin slices, a faint band on thick ones), **atelectasis**
  (dependent subpleural bands and plate-like lines), **emphysema** (centrilobular lucencies and
  subpleural bullae with thin walls), **scars**, **pleural thickening / plaques**, calcified
  **granulomas** (benign, labelled negative);
- mediastinum: **heart** in pericardial fat with **coronary arteries and their calcium**, **aorta**
  (ascending, arch, descending) with **calcified wall plaques**, pulmonary trunk and arteries, SVC,
  trachea and main bronchi, oesophagus, **lymph nodes** (some calcified), hila;
- **metal**: pacemaker/port with a lead, or sternotomy wires, with streaks.
"""

from __future__ import annotations

import math

import numpy as np

from edge_agent.phantoms import chest_vessels as cv
from edge_agent.phantoms._geometry import Acquisition, paint, soft_ellipsoid

# force keys and default probabilities (what the generator draws when a key is not forced)
CONFOUNDER_P = {
    "emphysema": 0.3, "bullae": 0.15, "atelectasis": 0.4, "plate_atelectasis": 0.25, "fissures": 0.85,
    "scar": 0.35, "pleural_thickening": 0.2, "granuloma": 0.25, "mucus": 0.2, "lymph_nodes": 0.6,
    "coronary_calcium": 0.35, "aortic_calcium": 0.4, "costal_calcification": 0.45, "metal": 0.06,
    "cardiac_motion": 0.5,
}


def _on(rng: np.random.Generator, force: dict, key: str) -> bool:
    u = rng.random()   # always consumed, so forcing one key does not shift the other draws
    return bool(force[key]) if key in force else bool(u < CONFOUNDER_P[key])


def draw(rng: np.random.Generator, xr: np.random.Generator, vr: np.random.Generator, force: dict) -> dict:
    """One chest. ``rng``: geometry and tissue values; ``xr``: confounders; ``vr``: vessel trees."""
    s = rng.uniform(0.88, 1.15)
    body = (160.0 * s * rng.uniform(0.9, 1.1), 110.0 * s * rng.uniform(0.9, 1.1))
    bx, by = body
    fat, muscle = rng.uniform(8.0, 25.0), rng.uniform(6.0, 14.0)
    rib_r = (rng.uniform(2.8, 4.0), rng.uniform(4.5, 6.5))          # radial, cranio-caudal half sizes
    wall = fat + muscle + 2 * rib_r[0] + 1.0                         # body surface → pleura
    mw = rng.uniform(14.0, 26.0)                                     # half width of the upper mediastinum
    half_in = bx - wall
    ax = (half_in - mw) / 2.0 + 6.0
    lungs = [((side * (mw + ax), rng.uniform(0.0, 10.0), 10.0 * s), (ax, by * 0.74, 135.0 * s)) for side in (-1.0, 1.0)]
    z_r = -rng.uniform(30.0, 60.0) * s
    a = {
        "s": s, "body": body, "fat": fat, "muscle": muscle, "wall": wall, "mw": mw, "rib_r": rib_r,
        "fat_hu": rng.uniform(-115.0, -80.0), "muscle_hu": rng.uniform(35.0, 60.0),
        "med_hu": rng.uniform(-90.0, -40.0),
        "lung_hu": rng.uniform(-905.0, -840.0), "gradient_hu": rng.uniform(0.0, 50.0),
        "texture": [(rng.normal(size=3) * 2 * math.pi / rng.uniform(15.0, 60.0), rng.uniform(0, 2 * math.pi),
                     rng.uniform(3.0, 14.0)) for _ in range(5)],
        "lungs": lungs,
        "dome": {"z": (z_r, z_r - rng.uniform(8.0, 25.0)), "h": rng.uniform(35.0, 70.0),
                 "y0": -rng.uniform(0.0, 0.25) * by},
        "blood_hu": rng.uniform(32.0, 50.0), "liver_hu": rng.uniform(48.0, 68.0), "spleen_hu": rng.uniform(40.0, 52.0),
        "rib_hu": (rng.uniform(700.0, 1300.0), rng.uniform(180.0, 350.0)),
        "cartilage_hu": rng.uniform(80.0, 150.0),
        "spine": (0.0, by * rng.uniform(0.36, 0.46), rng.uniform(14.0, 20.0)),
        "disc": (rng.uniform(20.0, 26.0), rng.uniform(4.0, 7.0), rng.uniform(0, 30.0)),
        "confounders": [],
    }
    sx, sy, sr = a["spine"]
    # ribs: 12 pairs, posterior ends every 22-27 mm from the apex down, descending 35-75 mm anteriorly
    top = 150.0 * s
    step = rng.uniform(21.0, 27.0) * s
    a["ribs"] = []
    for i in range(12):
        for side in (-1.0, 1.0):
            a["ribs"].append({"side": side, "z0": top - 10.0 - i * step + rng.normal(0, 2.0),
                              "drop": rng.uniform(70.0, 120.0) * s, "end": rng.uniform(2.1, 2.6) if i < 7
                              else rng.uniform(1.4, 2.1), "cart": i < 7, "phase": rng.uniform(0, 2 * math.pi)})
    # heart (on the diaphragm, anterior, to the left) in pericardial fat
    hz = z_r + rng.uniform(5.0, 25.0)
    yaw = math.radians(rng.uniform(20.0, 45.0))
    frame = np.array([[math.cos(yaw), -math.sin(yaw), 0.0], [math.sin(yaw), math.cos(yaw), 0.0], [0, 0, 1.0]])
    tilt = math.radians(rng.uniform(10.0, 30.0))
    frame = frame @ np.array([[1, 0, 0], [0, math.cos(tilt), -math.sin(tilt)], [0, math.sin(tilt), math.cos(tilt)]])
    a["heart"] = {"c": np.array([bx * rng.uniform(0.03, 0.12), -by * rng.uniform(0.2, 0.35), hz + 40.0 * s]),
                  "axes": np.array([58.0, 46.0, 44.0]) * s * rng.uniform(0.9, 1.12, 3), "frame": frame,
                  "peri": rng.uniform(2.0, 7.0)}
    h = a["heart"]
    h["hf"] = [list(map(float, row)) for row in h["frame"]]
    h["ax_m"] = [float(v) for v in h["axes"] + h["peri"]]
    zc = h["c"][2]
    # great vessels and airways (polylines: (points, radius))
    car = zc + rng.uniform(45.0, 70.0) * s
    ay0 = -by * 0.15
    a["carina_z"] = car
    asc = [np.array([-8.0, ay0 - 10.0, zc + 10.0]), np.array([-15.0, ay0 - 5.0, car + 15.0]),
           np.array([-5.0, ay0 + 10.0, car + 40.0]), np.array([15.0, sy - 30.0, car + 35.0]),
           np.array([22.0, sy - 28.0, car]), np.array([18.0, sy - 25.0, -220.0])]
    a["aorta"] = (asc, rng.uniform(13.0, 17.0), rng.uniform(10.0, 13.5))
    hil = [np.array([side * (mw + rng.uniform(6.0, 14.0)), rng.uniform(-8.0, 8.0), car - rng.uniform(12.0, 25.0)])
           for side in (-1.0, 1.0)]
    a["hila"] = hil
    pa0 = np.array([10.0, ay0 - 12.0, zc + 25.0])
    pa1 = np.array([8.0, ay0 + 5.0, car - 10.0])
    a["pa"] = [(pa0, pa1, rng.uniform(11.0, 14.0)), (pa1, hil[0], rng.uniform(8.0, 10.0)),
               (pa1, hil[1], rng.uniform(8.0, 10.0))]
    a["svc"] = (np.array([-25.0, ay0 - 2.0, car + 80.0]), np.array([-22.0, ay0 - 8.0, zc + 15.0]), rng.uniform(8.0, 11.0))
    tr = rng.uniform(7.0, 10.0)
    a["trachea"] = [(np.array([0.0, ay0 + 15.0, 300.0]), np.array([0.0, ay0 + 15.0, car]), tr)] + [
        (np.array([0.0, ay0 + 15.0, car]), hil[i] + np.array([0.0, 6.0, 4.0]), tr * 0.72) for i in (0, 1)]
    a["oesophagus"] = (np.array([8.0, ay0 + 15.0 + tr + 8.0, 300.0]), np.array([14.0, sy - sr - 10.0, -150.0]),
                       rng.uniform(6.0, 9.0), rng.uniform(0.0, 3.0))

    def inside(p, margin=2.0, pleural=False):
        return lung_inside(a, p, margin, pleural=pleural)

    a["inside"] = inside
    # vessel trees: arteries from the hila, veins to the lower hila (towards the left atrium)
    a["arteries"], a["veins"] = [], []
    for li, side in enumerate((-1.0, 1.0)):
        dirs = [np.array(v) * np.array([side, 1, 1]) + vr.normal(0, 0.15, 3) for v in
                ((0.4, -0.3, 1.0), (0.5, 0.4, 0.9), (0.9, -0.5, 0.1), (0.8, 0.6, -0.3), (0.5, 0.3, -1.0),
                 (0.6, -0.5, -0.7), (0.9, 0.1, 0.4))]
        a["arteries"] += cv.vessel_tree(vr, hil[li], dirs, vr.uniform(4.5, 6.5), inside, budget=1400)
        vroot = hil[li] + np.array([side * 4.0, vr.uniform(0.0, 10.0), -vr.uniform(20.0, 35.0)])
        vdirs = [np.array(v) * np.array([side, 1, 1]) + vr.normal(0, 0.2, 3) for v in
                 ((0.5, -0.4, 0.9), (0.9, 0.2, 0.3), (0.7, 0.5, -0.6), (0.6, -0.4, -0.6), (0.9, -0.2, -0.2))]
        a["veins"] += cv.vessel_tree(vr, vroot, vdirs, vr.uniform(4.0, 6.0), inside, budget=1000)
    a["bronchi"] = cv.bronchi_along(vr, a["arteries"], max_gen=2, r_art_min=2.0)
    c = a["confounders"]
    # ---- confounders: one random stream per key, so forcing one never shifts the others
    R = {key: np.random.default_rng(int(sd)) for key, sd in zip(CONFOUNDER_P, xr.integers(0, 2 ** 62, len(CONFOUNDER_P)))}
    g = R["mucus"]
    if _on(g, force, "mucus") and a["bronchi"]:
        idx = g.choice(len(a["bronchi"]), size=min(len(a["bronchi"]), int(g.integers(1, 5))), replace=False)
        for i in idx:
            a_, b_, lr, wt, _ = a["bronchi"][i]
            a["bronchi"][i] = (a_, b_, lr, wt, float(g.uniform(-10.0, 40.0)))
        c.append("mucus")
    a["fissures"] = None
    g = R["fissures"]
    if _on(g, force, "fissures"):
        a["fissures"] = {"major": [(side, hil[i][2] + g.uniform(-10.0, 15.0), g.uniform(0.7, 1.4),
                                    g.uniform(-0.002, 0.002), g.uniform(0, 6.28)) for i, side in enumerate((-1.0, 1.0))],
                         "minor": (hil[0][2] + g.uniform(0.0, 20.0), g.uniform(-0.12, 0.12), g.uniform(-0.1, 0.1)),
                         "t": g.uniform(0.3, 0.8), "hu": g.uniform(-50.0, 40.0)}
        c.append("fissures")
    a["emphysema"] = []
    g = R["emphysema"]
    if _on(g, force, "emphysema"):
        n = int(g.integers(20, 160))
        sev = g.uniform(0.3, 1.0)
        for _ in range(n):
            p = _random_lung_point(g, a, upper=0.7)
            if p is not None:
                a["emphysema"].append((p, g.uniform(1.0, 2.5 + 4.0 * sev), g.uniform(-1000.0, -950.0)))
        c.append("emphysema")
    a["bullae"] = []
    g = R["bullae"]
    if _on(g, force, "bullae"):
        for _ in range(int(g.integers(1, 6))):
            p = _pleural_point(g, a, depth=g.uniform(4.0, 15.0), upper=0.75)
            if p is not None:
                a["bullae"].append((p, g.uniform(6.0, 25.0), g.uniform(0.4, 1.2)))
        c.append("bullae")
    a["atelectasis"] = None
    g = R["atelectasis"]
    if _on(g, force, "atelectasis"):
        a["atelectasis"] = {"t": g.uniform(3.0, 16.0), "hu": g.uniform(-450.0, 0.0), "zc": g.uniform(-40.0, 40.0)}
        c.append("atelectasis")
    a["plates"] = []
    g = R["plate_atelectasis"]
    if _on(g, force, "plate_atelectasis"):
        for _ in range(int(g.integers(1, 4))):
            p = _random_lung_point(g, a, upper=0.2)
            if p is not None:
                d = np.array([g.normal(), g.normal() * 0.6, g.normal() * 0.15])
                d /= np.linalg.norm(d)
                ln = g.uniform(15.0, 45.0)
                a["plates"].append((p - d * ln / 2, p + d * ln / 2, g.uniform(0.7, 2.0), g.uniform(-350.0, 0.0)))
        c.append("plate_atelectasis")
    a["scars"] = []
    g = R["scar"]
    if _on(g, force, "scar"):
        for _ in range(int(g.integers(1, 4))):
            p = _random_lung_point(g, a)
            if p is not None:
                d = g.normal(size=3)
                d /= np.linalg.norm(d)
                ln = g.uniform(10.0, 35.0)
                a["scars"].append((p - d * ln / 2, p + d * ln / 2, g.uniform(0.8, 2.2), g.uniform(-300.0, 30.0)))
        c.append("scar")
    a["plaques"] = []
    g = R["pleural_thickening"]
    if _on(g, force, "pleural_thickening"):
        for _ in range(int(g.integers(1, 5))):
            p = _pleural_point(g, a, depth=0.0)
            if p is not None:
                calc = g.random() < 0.35
                a["plaques"].append((p, (g.uniform(8.0, 30.0), g.uniform(8.0, 30.0), g.uniform(1.5, 5.0)),
                                     g.uniform(250.0, 700.0) if calc else g.uniform(15.0, 55.0)))
        c.append("pleural_thickening")
    a["granulomas"] = []
    g = R["granuloma"]
    if _on(g, force, "granuloma"):
        for _ in range(int(g.integers(1, 4))):
            p = _random_lung_point(g, a)
            if p is not None:
                a["granulomas"].append((p, g.uniform(1.0, 4.0), g.uniform(250.0, 1200.0)))
        c.append("granuloma")
    a["nodes"] = []
    g = R["lymph_nodes"]
    if _on(g, force, "lymph_nodes"):
        sites = [(-mw * 0.6, ay0 + 10.0, car + 25.0), (mw * 0.4, ay0 - 5.0, car + 15.0), (0.0, ay0 + 25.0, car - 15.0),
                 (hil[0][0] * 0.9, hil[0][1] - 8.0, hil[0][2]), (hil[1][0] * 0.9, hil[1][1] - 8.0, hil[1][2]),
                 (-mw * 0.5, ay0 + 5.0, car + 50.0)]
        for i in g.choice(len(sites), size=int(g.integers(1, len(sites) + 1)), replace=False):
            r = g.uniform(3.0, 8.0)
            a["nodes"].append((np.array(sites[i]) + g.normal(0, 3.0, 3), (r * g.uniform(1.0, 1.6), r, r * g.uniform(1.0, 1.5)),
                               g.uniform(250.0, 700.0) if g.random() < 0.2 else g.uniform(20.0, 45.0)))
        c.append("lymph_nodes")
    a["coronary"] = []
    a["coronary_calcium"] = []
    hc, hax, hf = h["c"], h["axes"], h["frame"]
    for kind in ("lad", "rca", "lcx"):
        pts = []
        for t in np.linspace(0.0, 1.0, 7):
            if kind == "lad":
                lp = np.array([math.cos(0.9 - 1.6 * t) * 0.2, -math.sin(0.4 + 0.9 * t) * 0.98, 0.6 - 1.2 * t])
            elif kind == "rca":
                ang = math.pi * (0.6 + 0.8 * t)
                lp = np.array([math.cos(ang), math.sin(ang) * 0.8, 0.45])
            else:
                ang = math.pi * (0.4 - 0.9 * t)
                lp = np.array([math.cos(ang), math.sin(ang) * 0.8, 0.45])
            lp = lp / (np.linalg.norm(lp / 1.0) + 1e-9)
            pts.append(hc + hf @ (lp * hax * 1.03 + np.sign(lp) * 1.5))
        a["coronary"].append(pts)
    g = R["coronary_calcium"]
    if _on(g, force, "coronary_calcium"):
        for pts in a["coronary"]:
            for _ in range(int(g.integers(0, 5))):
                i = int(g.integers(len(pts) - 1))
                t = g.random()
                a["coronary_calcium"].append((pts[i] + t * (pts[i + 1] - pts[i]), g.uniform(0.8, 3.0), g.uniform(150.0, 1000.0)))
        c.append("coronary_calcium")
    a["aortic_calcium"] = []
    g = R["aortic_calcium"]
    if _on(g, force, "aortic_calcium"):
        pts, r_asc, r_desc = a["aorta"]
        for _ in range(int(g.integers(2, 14))):
            i = int(g.integers(len(pts) - 1))
            t = g.random()
            p = pts[i] + t * (pts[i + 1] - pts[i])
            u = (pts[i + 1] - pts[i]) / np.linalg.norm(pts[i + 1] - pts[i])
            n = cv._perp(u, g)
            r = r_asc if i < 2 else r_desc
            a["aortic_calcium"].append((p + n * (r - 0.8), g.uniform(1.0, 3.5), g.uniform(250.0, 900.0)))
        c.append("aortic_calcium")
    g = R["costal_calcification"]
    a["costal_calc"] = float(g.uniform(0.15, 0.9)) if _on(g, force, "costal_calcification") else 0.0
    if a["costal_calc"]:
        c.append("costal_calcification")
    a["metal"] = None
    g = R["metal"]
    if _on(g, force, "metal"):
        if g.random() < 0.6:
            gen_c = np.array([bx * 0.45, -by * 0.85, car + g.uniform(30.0, 60.0)])
            lead = [gen_c, a["svc"][0] + np.array([5.0, 0, 0]), a["svc"][1], hc + hf @ (np.array([-0.3, -0.2, -0.3]) * hax)]
            a["metal"] = {"kind": "pacemaker", "box": (gen_c, (22.0, 5.0, 18.0)), "lead": lead,
                          "rays": [(float(g.uniform(0, math.pi)), float(g.choice([-1, 1]) * g.uniform(100, 500)))
                                   for _ in range(int(g.integers(6, 14)))]}
        else:
            wires = [np.array([0.0, -by + fat + muscle - 2.0, car + 40.0 - i * g.uniform(18.0, 25.0)]) for i in range(int(g.integers(4, 7)))]
            a["metal"] = {"kind": "sternotomy", "wires": wires,
                          "rays": [(float(g.uniform(0, math.pi)), float(g.choice([-1, 1]) * g.uniform(60, 250)))
                                   for _ in range(int(g.integers(4, 10)))]}
        c.append("metal")
    a["cardiac_motion"] = None
    g = R["cardiac_motion"]
    if _on(g, force, "cardiac_motion"):
        a["cardiac_motion"] = {"k0": 0, "k1": 10 ** 6, "shift_px": float(g.uniform(1.0, 4.0)),
                               "angle": float(g.uniform(0, 2 * math.pi)), "ghost": float(g.uniform(0.15, 0.45)),
                               "blur_px": float(g.uniform(0.0, 2.5))}
        c.append("cardiac_motion")
    return a


# --------------------------------------------------------------------------- geometry helpers


def dome_z(a: dict, x, y):
    """Height of the diaphragm under (x, y): right dome higher, posterior recesses deeper."""
    d = a["dome"]
    out = []
    for li, zt in enumerate(d["z"]):
        (cx, cy, _), (ax, ay, _) = a["lungs"][li]
        out.append(zt - d["h"] * (((x - cx) / (ax * 1.1)) ** 2 + ((y - d["y0"]) / (ay * 1.1)) ** 2))
    w = np.clip(0.5 + np.asarray(x) / 40.0, 0.0, 1.0)
    return (1 - w) * out[0] + w * out[1]


def _wall_d(a: dict, x, y, z):
    """Signed distance (mm, negative inside) to the body surface, which tapers towards the apices."""
    bx, by = a["body"]
    taper = 1.0 - 0.15 * np.clip((z - 60.0) / 120.0, 0.0, 1.0)
    r = np.sqrt((x / (bx * taper)) ** 2 + (y / (by * taper)) ** 2) + 1e-6
    return (r - 1.0) * np.sqrt(x * x + y * y) / r


def _dome_scalar(a: dict, x: float, y: float) -> float:
    d = a["dome"]
    out = []
    for li, zt in enumerate(d["z"]):
        (cx, cy, _), (ax, ay, _) = a["lungs"][li]
        out.append(zt - d["h"] * (((x - cx) / (ax * 1.1)) ** 2 + ((y - d["y0"]) / (ay * 1.1)) ** 2))
    w = min(max(0.5 + x / 40.0, 0.0), 1.0)
    return (1 - w) * out[0] + w * out[1]


def lung_inside(a: dict, p, margin: float = 2.0, *, pleural: bool = False) -> bool:
    """Is the phantom point ``p`` inside a lung by at least ``margin`` mm (roughly)?

    ``pleural``: measure the margin to the costal and diaphragmatic surfaces only (the mediastinum and
    the heart do not count): how far a point is from the periphery, where vessels are thin."""
    x, y, z = (float(v) for v in p)
    if z < _dome_scalar(a, x, y) + margin:
        return False
    if abs(x) < a["mw"] + (0.0 if pleural else margin):
        return False
    bx, by = a["body"]
    taper = 1.0 - 0.15 * min(max((z - 60.0) / 120.0, 0.0), 1.0)
    r = math.sqrt((x / (bx * taper)) ** 2 + (y / (by * taper)) ** 2) + 1e-6
    if (r - 1.0) * math.sqrt(x * x + y * y) / r > -(a["wall"] + margin):
        return False
    h = a["heart"]
    f, c, ax = h["hf"], h["c"], h["ax_m"]
    dx, dy, dz = x - c[0], y - c[1], z - c[2]
    q = 0.0
    for i in range(3):
        li = f[0][i] * dx + f[1][i] * dy + f[2][i] * dz
        q += (li / (ax[i] + (0.0 if pleural else margin))) ** 2
    if q < 1.0:
        return False
    for (cc, aa) in a["lungs"]:
        q = ((x - cc[0]) / (aa[0] - margin)) ** 2 + ((y - cc[1]) / (aa[1] - margin)) ** 2 + ((z - cc[2]) / (aa[2] - margin)) ** 2
        if q < 1.0:
            return True
    return False


def _random_lung_point(rng, a, upper: float | None = None, margin: float = 4.0, tries: int = 40):
    """A random point inside the lungs; ``upper`` biases to the upper (>0.5) or lower (<0.5) zones."""
    for _ in range(tries):
        c, ax = a["lungs"][int(rng.integers(2))]
        u = rng.uniform(-1, 1, 3)
        if upper is not None:
            u[2] = abs(u[2]) * (1 if rng.random() < upper else -1)
        p = np.asarray(c) + u * np.asarray(ax)
        if lung_inside(a, p, margin):
            return p
    return None


def pleural_point(rng, a, depth: float = 0.0, upper: float | None = None):
    """A point ``depth`` mm inside the lung surface (found along a ray from inside the lung)."""
    return _pleural_point(rng, a, depth=depth, upper=upper)


def _pleural_point(rng, a, depth: float = 0.0, upper: float | None = None):
    p0 = _random_lung_point(rng, a, upper=upper, margin=10.0)
    if p0 is None:
        return None
    c = np.asarray(a["lungs"][0 if p0[0] < 0 else 1][0])
    u = p0 - c
    u[2] *= 0.3
    u = u + rng.normal(0, 0.3, 3)
    u /= np.linalg.norm(u) + 1e-9
    lo, hi = 0.0, 250.0
    for _ in range(30):   # bisection for the boundary along the ray
        mid = (lo + hi) / 2
        if lung_inside(a, p0 + u * mid, 0.0):
            lo = mid
        else:
            hi = mid
    return p0 + u * max(lo - depth, 0.0)


# --------------------------------------------------------------------------- rendering


def _soft(d, w):
    return np.clip(0.5 - d / w, 0.0, 1.0)


def render_body(img: np.ndarray, p, slab: cv.Slab, a: dict) -> dict:
    """Chest wall, bones, abdomen, lungs (with texture, gradient, atelectasis, emphysema). Returns masks."""
    acq: Acquisition = slab.acq
    x, y, zz = p
    w = acq.pixel_spacing
    t = acq.thickness
    d = _wall_d(a, x, y, zz)
    fat, muscle = a["fat"], a["muscle"]
    paint(img, _soft(d, w), a["fat_hu"])
    paint(img, _soft(d + fat, w), a["muscle_hu"])
    cavity = _soft(d + a["wall"] - 1.0, w)
    paint(img, _soft(d + fat + muscle, w), a["med_hu"])
    _ribs(img, p, d, slab, a)
    _spine(img, p, slab, a)
    # diaphragm and the abdomen below it
    zd = dome_z(a, x, y)
    gx = (dome_z(a, x + 1.0, y) - zd)
    gy = (dome_z(a, x, y + 1.0) - zd)
    nz = 1.0 / np.sqrt(1.0 + gx * gx + gy * gy)
    wd = np.sqrt((w * (1 - nz)) ** 2 + (t * nz) ** 2) + 0.3
    above = np.clip(0.5 + (zz - zd) * nz / wd, 0.0, 1.0)
    below = (1.0 - above) * _soft(d + fat + muscle, w)
    if float(below.max()) > 0.0 and slab.z < max(a["dome"]["z"]) + t:
        bx, by = a["body"]
        paint(img, below, a["liver_hu"])
        organs = (((bx * 0.45, by * 0.35, zd_left(a) - 45.0), (45.0, 55.0, 60.0), a["spleen_hu"]),)
        for c, axs, hu in organs:
            paint(img, soft_ellipsoid(p, c, axs, acq) * below, hu)
        st_c = (bx * 0.35, -by * 0.25, zd_left(a) - 40.0)
        st = soft_ellipsoid(p, st_c, (45.0, 40.0, 55.0), acq) * below
        paint(img, st, 20.0)
        paint(img, st * np.clip((zz - (st_c[2] + 10.0)) / w + 0.5, 0, 1), -990.0)   # gas above the fluid level
        col = soft_ellipsoid(p, (bx * 0.62, -by * 0.05, zd_left(a) - 25.0), (22.0, 30.0, 30.0), acq) * below
        mott = np.cos(x * 0.9 + zz * 0.7) * np.cos(y * 1.1 - zz * 0.5) > 0.2
        paint(img, col, -60.0)
        paint(img, col * mott, -900.0)
    # lungs
    lung = np.zeros_like(img)
    for c, axs in a["lungs"]:
        lung = np.maximum(lung, soft_ellipsoid(p, c, axs, acq))
    lung *= cavity * above
    med = np.clip((np.abs(x) - a["mw"]) / w + 0.5, 0.0, 1.0)
    lung *= med
    bx, by = a["body"]
    val = a["lung_hu"] + a["gradient_hu"] * np.clip((y + by * 0.5) / by, 0.0, 1.0)
    for k, phase, amp in a["texture"]:
        val = val + amp * np.cos(k[0] * x + k[1] * y + k[2] * zz + phase)
    at = a["atelectasis"]
    if at is not None:   # dependent subpleural density: distance to the posterior lung surface
        for c, axs in a["lungs"]:
            inner = 1.0 - ((x - c[0]) / axs[0]) ** 2 - ((zz - c[2]) / axs[2]) ** 2
            ysurf = c[1] + axs[1] * np.sqrt(np.clip(inner, 0.0, 1.0))
            depth = ysurf - y
            tt = at["t"] * np.clip(1.0 - (zz - at["zc"]) / 120.0, 0.2, 1.6)
            band = np.clip(1.0 - depth / np.maximum(tt, 1e-3), 0.0, 1.0) * (inner > 0)
            val = val + band * (at["hu"] - a["lung_hu"])
    paint(img, lung, val)
    return {"lung": lung, "d": d, "cavity": cavity}


def zd_left(a):
    return a["dome"]["z"][1]


def _ribs(img, p, d, slab: cv.Slab, a):
    x, y, zz = p
    rr, rh = a["rib_r"]
    d_rib = -(a["fat"] + a["muscle"] + rr + 0.5)
    ring = np.abs(d - d_rib) < rr + 3.0
    if not ring.any():
        return
    idx = np.nonzero(ring)
    xs, ys, z0 = x[idx], y[idx], zz[idx]
    dr = d[idx] - d_rib
    phi = np.arctan2(np.abs(xs), ys)      # 0 posterior, pi anterior
    side = np.sign(xs)
    dzs = (slab.zs - slab.z) * slab.rt[2, 2]
    half = slab.acq.thickness / 2 + rh + 80.0
    w = slab.px
    cort, marrow = np.zeros(len(xs), np.float32), np.zeros(len(xs), np.float32)
    cart, calc = np.zeros(len(xs), np.float32), np.zeros(len(xs), np.float32)
    phi0 = 0.25
    for rib in a["ribs"]:
        if not (rib["z0"] - rib["drop"] - half < slab.z < rib["z0"] + half):
            continue
        sel = side == rib["side"]
        if not sel.any():
            continue
        frac = np.clip((phi - phi0) / (math.pi - phi0), 0.0, 1.0)
        zc = rib["z0"] - rib["drop"] * frac
        bone_on = (phi >= phi0) & (phi <= rib["end"]) & sel
        cart_on = rib["cart"] & (phi > rib["end"]) & (phi < math.pi - 0.12) & sel
        for dz in dzs:
            e = np.sqrt((dr / rr) ** 2 + ((z0 + dz - zc) / rh) ** 2)
            m_out = np.clip(0.5 - (e - 1.0) * rr / w, 0, 1)
            e_in = np.sqrt((dr / (rr - 1.0)) ** 2 + ((z0 + dz - zc) / (rh - 1.0)) ** 2)
            m_in = np.clip(0.5 - (e_in - 1.0) * (rr - 1.0) / w, 0, 1)
            cort += m_out * bone_on
            marrow += m_in * bone_on
            cart += m_out * cart_on
            if a["costal_calc"]:
                pat = np.cos(phi * 40.0 + zz[idx] * 0.8 + rib["phase"]) * np.cos(dr * 1.7 + rib["phase"])
                rim = (e > 0.7)
                calc += m_out * cart_on * (((pat > 1.0 - a["costal_calc"]) | rim & (pat > 0.2)))
    n = len(dzs)
    vals = img[idx]
    vals = vals + np.minimum(cort / n, 1) * (a["rib_hu"][0] - vals)
    vals = vals + np.minimum(marrow / n, 1) * (a["rib_hu"][1] - vals)
    vals = vals + np.minimum(cart / n, 1) * (a["cartilage_hu"] - vals)
    vals = vals + np.minimum(calc / n, 1) * (450.0 - vals)
    img[idx] = vals
    # sternum: anterior midline, down to the xiphoid (about the heart's lower third)
    bx, by = a["body"]
    zx = a["heart"]["c"][2] - 30.0
    top = a["carina_z"] + 70.0
    if zx < slab.z < top:
        xs_ = np.abs(x) / 14.0
        ys_ = (d - d_rib) / 5.0
        m = np.clip(0.5 - (np.sqrt(xs_ ** 2 + ys_ ** 2) - 1.0) * 5.0 / w, 0, 1) * (y < 0)
        paint(img, m, a["rib_hu"][0] * 0.7)
        m2 = np.clip(0.5 - (np.sqrt((np.abs(x) / 12.5) ** 2 + ((d - d_rib) / 3.6) ** 2) - 1.0) * 3.6 / w, 0, 1) * (y < 0)
        paint(img, m2, a["rib_hu"][1])


def _spine(img, p, slab: cv.Slab, a):
    x, y, zz = p
    sx, sy, sr = a["spine"]
    near = (np.abs(x - sx) < sr + 30.0) & (np.abs(y - sy - 18.0) < sr + 40.0)
    rows = np.flatnonzero(near.any(axis=1))
    cols = np.flatnonzero(near.any(axis=0))
    if len(rows) == 0 or len(cols) == 0:
        return
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    img = img[box]
    x, y, zz = x[box], y[box], zz[box]
    w = slab.px
    period, disc_t, ph = a["disc"]
    rr = np.sqrt((x - sx) ** 2 + (y - sy) ** 2)
    frac = np.zeros_like(zz)
    for dz in (slab.zs - slab.z) * slab.rt[2, 2]:
        frac += (np.mod(zz + dz + ph, period) < disc_t)
    frac /= len(slab.zs)
    body = _soft(rr - sr, w)
    paint(img, body * (1 - frac), 750.0)
    paint(img, _soft(rr - (sr - 2.0), w) * (1 - frac), 220.0)
    paint(img, body * frac, 85.0)
    cy = sy + sr + 8.0
    paint(img, _soft(np.sqrt(((x - sx) / 9.0) ** 2 + ((y - cy - 8.0) / 11.0) ** 2) * 9.0 - 9.0, w), 500.0)
    paint(img, _soft(np.sqrt((x - sx) ** 2 + (y - cy) ** 2) - 7.0, w), 12.0)
    paint(img, _soft(np.sqrt(((x - sx) / 3.5) ** 2 + ((y - cy - 24.0) / 9.0) ** 2) * 3.5 - 3.5, w), 550.0)


def _fissure_sheet(delta, nxy, slab, t_sheet):
    """Slab-averaged membership of a sheet ``t_sheet`` mm thick at normal distance ``delta`` (single plane)."""
    nz = np.sqrt(np.clip(1.0 - nxy * nxy, 0.0, 1.0))
    wz = slab.acq.thickness * nz
    wide = np.sqrt(wz * wz + t_sheet * t_sheet)
    soft = np.maximum(nxy * slab.px, 0.15)
    return np.minimum(1.0, t_sheet / wide) * np.clip(0.5 - (np.abs(delta) - wide / 2.0) / soft, 0.0, 1.0)


def fissure_delta(a: dict, p):
    """[(side, delta, nxy)] normal distances to the major fissures and to the right minor fissure."""
    f = a["fissures"]
    x, y, zz = p
    out = []
    for (side, z0, slope, curv, ph), (c, _) in zip(f["major"], a["lungs"]):
        zf = z0 + slope * (y - c[1]) + curv * (x - c[0]) ** 2 * 3.0 + 3.0 * np.sin(x * 0.05 + ph)
        # gradient of (z - zf) = (-dzf/dx, -dzf/dy, 1)
        gx = -(curv * 6.0 * (x - c[0]) + 0.15 * np.cos(x * 0.05 + ph))
        gy = -slope
        g = np.sqrt(gx * gx + gy * gy + 1.0)
        out.append((side, (zz - zf) / g, np.sqrt(gx * gx + gy * gy) / g))
    zm, sx_, sy_ = f["minor"]
    c = a["lungs"][0][0]
    zf = zm + sx_ * (x - c[0]) + sy_ * (y - c[1])
    g = math.sqrt(1 + sx_ * sx_ + sy_ * sy_)
    # the minor fissure only exists in front of the major fissure of the right lung
    front = out[0][1] * 1.0
    out.append((-2.0, np.where(front < 0, 1e3, (zz - zf) / g), np.full_like(x, math.sqrt(sx_ ** 2 + sy_ ** 2) / g)))
    return out


def render_fissures(img, p, slab, a, lung):
    f = a["fissures"]
    if f is None:
        return None
    x = p[0]
    total = np.zeros_like(img)
    for side, delta, nxy in fissure_delta(a, p):
        on = (x < 0) if side < -0.5 else (x > 0)
        m = _fissure_sheet(delta, nxy, slab, f["t"]) * on * lung
        total = np.maximum(total, m)
    paint(img, total, f["hu"])
    return total


def render_lung_detail(img, slab: cv.Slab, a: dict, lung: np.ndarray, seg_cache: dict) -> None:
    """Emphysema, vessels, bronchi, scars, plates, granulomas and bullae (painting order matters)."""
    acq = slab.acq
    for pc, r, hu in a["emphysema"]:
        res = cv.ellipsoid_m(slab, cv.to_scanner(acq, pc), (r, r, r))
        if res is not None:
            cv.paint_m(img, res[0], res[1], hu, lung)
    blood = a["blood_hu"]
    for seg in seg_cache["vessels"]:
        a_s, b_s, r, gen = seg
        res = cv.capsule_m(slab, a_s, b_s, r)
        if res is not None:
            cv.paint_m(img, res[0], res[1], blood, None if gen == 0 else lung)
    for a_s, b_s, lr, wt, mucus in seg_cache["bronchi"]:
        res = cv.capsule_m(slab, a_s, b_s, lr + wt)
        if res is None:
            continue
        cv.paint_m(img, res[0], res[1], a["muscle_hu"] + 5.0, lung)
        res = cv.capsule_m(slab, a_s, b_s, lr)
        if res is not None:
            cv.paint_m(img, res[0], res[1], -985.0 if mucus is False else mucus, lung)
    for sa, sb, sr, shu in a["scars"] + a["plates"]:
        res = cv.capsule_m(slab, cv.to_scanner(acq, sa), cv.to_scanner(acq, sb), sr)
        if res is not None:
            cv.paint_m(img, res[0], res[1], shu, lung)
    for pc, r, hu in a["granulomas"]:
        res = cv.ellipsoid_m(slab, cv.to_scanner(acq, pc), (r, r, r))
        if res is not None:
            cv.paint_m(img, res[0], res[1], hu)
    for pc, r, wall in a["bullae"]:
        c_s = cv.to_scanner(acq, pc)
        res = cv.ellipsoid_m(slab, c_s, (r + wall, r + wall, r + wall))
        if res is not None:
            cv.paint_m(img, res[0], res[1], -500.0, lung)
            res = cv.ellipsoid_m(slab, c_s, (r, r, r))
            if res is not None:
                cv.paint_m(img, res[0], res[1], -995.0, lung)
    for pc, axes, hu in a["plaques"]:
        c_s = cv.to_scanner(acq, pc)
        # short axis along the local chest-wall normal (radial in the axial plane)
        radial = np.array([pc[0] - a["lungs"][0 if pc[0] < 0 else 1][0][0], pc[1], 0.0])
        radial /= np.linalg.norm(radial) + 1e-9
        e1 = np.array([-radial[1], radial[0], 0.0])
        frame = acq.rotation @ np.stack([e1, np.array([0, 0, 1.0]), radial], axis=1)
        res = cv.ellipsoid_m(slab, c_s, axes, frame)
        if res is not None:
            cv.paint_m(img, res[0], res[1], hu)


def render_mediastinum(img, slab: cv.Slab, a: dict) -> np.ndarray:
    """Heart (with pericardial fat, coronaries, calcium), aorta (+ plaques), PA, SVC, airways, oesophagus,
    nodes. Returns the heart membership (full slice) for the motion weights."""
    acq = slab.acq
    h = a["heart"]
    c_s = cv.to_scanner(acq, h["c"])
    frame = acq.rotation @ h["frame"]
    heart = np.zeros_like(img)
    res = cv.ellipsoid_m(slab, c_s, h["axes"] + h["peri"], frame)
    if res is not None:
        cv.paint_m(img, res[0], res[1], a["fat_hu"] + 10.0)
        res = cv.ellipsoid_m(slab, c_s, h["axes"], frame)
        if res is not None:
            heart[res[0]] = cv.paint_m(img, res[0], res[1], a["blood_hu"])
        for pts in a["coronary"]:
            for p0, p1 in zip(pts[:-1], pts[1:]):
                r = cv.capsule_m(slab, cv.to_scanner(acq, p0), cv.to_scanner(acq, p1), 1.6)
                if r is not None:
                    cv.paint_m(img, r[0], r[1], a["blood_hu"])
        for pc, r, hu in a["coronary_calcium"]:
            rr = cv.ellipsoid_m(slab, cv.to_scanner(acq, pc), (r, r, r))
            if rr is not None:
                cv.paint_m(img, rr[0], rr[1], hu)
    pts, r_asc, r_desc = a["aorta"]
    for i, (p0, p1) in enumerate(zip(pts[:-1], pts[1:])):
        r = r_asc if i < 2 else r_desc
        res = cv.capsule_m(slab, cv.to_scanner(acq, p0), cv.to_scanner(acq, p1), r)
        if res is not None:
            cv.paint_m(img, res[0], res[1], a["blood_hu"])
    for p0, p1, r in a["pa"] + [a["svc"]]:
        res = cv.capsule_m(slab, cv.to_scanner(acq, p0), cv.to_scanner(acq, p1), r)
        if res is not None:
            cv.paint_m(img, res[0], res[1], a["blood_hu"])
    for pc, r, hu in a["aortic_calcium"]:
        res = cv.ellipsoid_m(slab, cv.to_scanner(acq, pc), (r, r, r))
        if res is not None:
            cv.paint_m(img, res[0], res[1], hu)
    p0, p1, r, lum = a["oesophagus"]
    res = cv.capsule_m(slab, cv.to_scanner(acq, p0), cv.to_scanner(acq, p1), r)
    if res is not None:
        cv.paint_m(img, res[0], res[1], a["muscle_hu"])
        if lum > 0.8:
            res = cv.capsule_m(slab, cv.to_scanner(acq, p0), cv.to_scanner(acq, p1), lum)
            if res is not None:
                cv.paint_m(img, res[0], res[1], -980.0)
    for p0, p1, r in a["trachea"]:
        res = cv.capsule_m(slab, cv.to_scanner(acq, p0), cv.to_scanner(acq, p1), r + 1.8)
        if res is not None:
            cv.paint_m(img, res[0], res[1], a["muscle_hu"] + 25.0)
            res = cv.capsule_m(slab, cv.to_scanner(acq, p0), cv.to_scanner(acq, p1), r)
            if res is not None:
                cv.paint_m(img, res[0], res[1], -990.0)
    for pc, axes, hu in a["nodes"]:
        res = cv.ellipsoid_m(slab, cv.to_scanner(acq, pc), axes)
        if res is not None:
            cv.paint_m(img, res[0], res[1], hu)
    return heart


def render_metal(img, slab: cv.Slab, a: dict) -> None:
    from edge_agent.phantoms import _scanner

    m = a["metal"]
    if m is None:
        return
    acq = slab.acq
    n = acq.matrix
    hits = []
    if m["kind"] == "pacemaker":
        c, axes = m["box"]
        res = cv.ellipsoid_m(slab, cv.to_scanner(acq, c), axes)
        if res is not None and float(res[1].max()) > 0.05:
            cv.paint_m(img, res[0], res[1], 3071.0)
            hits.append((c, float(res[1].mean(axis=0).max()), 60.0))
        for p0, p1 in zip(m["lead"][:-1], m["lead"][1:]):
            res = cv.capsule_m(slab, cv.to_scanner(acq, p0), cv.to_scanner(acq, p1), 0.9)
            if res is not None:
                cv.paint_m(img, res[0], res[1], 2500.0)
    else:
        for wc in m["wires"]:
            res = cv.ellipsoid_m(slab, cv.to_scanner(acq, wc), (5.0, 1.2, 1.2))
            if res is not None and float(res[1].max()) > 0.05:
                cv.paint_m(img, res[0], res[1], 3071.0)
                hits.append((wc, float(res[1].mean(axis=0).max()), 35.0))
    for c, strength, decay in hits:
        rc = cv.to_scanner(acq, c)
        pix = ((rc[1] + acq.centre[1]) / acq.pixel_spacing + (n - 1) / 2.0,
               (rc[0] + acq.centre[0]) / acq.pixel_spacing + (n - 1) / 2.0)
        img += _scanner.streaks_from(img, pix, m["rays"], 1.5 / acq.pixel_spacing,
                                     decay / acq.pixel_spacing) * strength * (img > -500)
