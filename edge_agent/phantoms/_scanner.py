"""Scanner and patient effects that real series show and analytic phantoms lack.

- reconstruction: soft / standard / sharp (bone) kernels with their noise
  texture (noise-power spectrum shaped by a difference of Gaussians, edge
  enhancement and overshoot for sharp kernels) and filtered back-projection
  vs iterative reconstruction (lower, blotchier noise, smoother image);
  noise grows as slices get thinner (0.6–5 mm);
- patient motion: a ghost (shifted, faint copy: bone ghosts inside the brain)
  and motion blur on a run of consecutive slices;
- metal: dental fillings, aneurysm clips, shunt valves with radial streaks and
  a dark band (photon starvation).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

KERNELS = ("soft", "standard", "sharp")
RECONS = ("fbp", "iterative")


def draw_recon(rng: np.random.Generator, thickness: float, force: dict) -> dict:
    """Kernel, reconstruction and noise level for a series of slices ``thickness`` mm thick."""
    kernel = str(rng.choice(KERNELS, p=[0.3, 0.5, 0.2]))
    recon = str(rng.choice(RECONS, p=[0.5, 0.5]))
    kernel = force.get("kernel", kernel)
    recon = force.get("recon", recon)
    sd = rng.uniform(2.5, 6.0) * (5.0 / max(thickness, 0.5)) ** 0.4
    sigma = rng.uniform(0.7, 1.4)
    if kernel == "soft":
        sd *= rng.uniform(0.7, 1.0)
        sigma *= 1.3
    elif kernel == "sharp":
        sd *= rng.uniform(3.0, 8.0)
        sigma = rng.uniform(0.3, 0.6)
    if recon == "iterative":
        sd *= rng.uniform(0.45, 0.8)
        sigma *= rng.uniform(1.3, 2.0)
    return {"kernel": kernel, "recon": recon, "noise_sd": float(sd), "sigma": float(sigma),
            "dog": float(rng.uniform(0.0, 0.6)), "sharpen": float(rng.uniform(0.3, 1.0)) if kernel == "sharp" else 0.0,
            "smooth": float(rng.uniform(0.4, 0.9)) if recon == "iterative" else 0.0,
            "base_noise": float(rng.uniform(1.1, 1.8))}


def texture_noise(rng: np.random.Generator, shape, recon: dict) -> np.ndarray:
    """Unit-variance correlated noise with the kernel's texture (band-pass for FBP ramps)."""
    white = rng.standard_normal(shape, dtype=np.float32)
    s = recon["sigma"]
    n = ndimage.gaussian_filter(white, s, truncate=2.5) if s > 0.3 else white
    if recon["dog"] > 0:
        n = n - recon["dog"] * ndimage.gaussian_filter(white, s * 3.0, truncate=2.0)
    return n / max(float(n.std()), 1e-6)


def apply_recon(img: np.ndarray, recon: dict) -> np.ndarray:
    """Kernel's effect on the image itself: edge enhancement (sharp) or smoothing (iterative)."""
    if recon["sharpen"]:
        img = img + recon["sharpen"] * (img - ndimage.gaussian_filter(img, 1.2, truncate=2.5))
    if recon["smooth"]:
        img = ndimage.gaussian_filter(img, recon["smooth"], truncate=2.5)
    return img


def draw_motion(rng: np.random.Generator, n_slices: int, force: dict) -> dict | None:
    on = rng.random()
    if not force.get("motion", on < 0.12):
        return None
    k0 = int(rng.integers(n_slices))
    length = int(rng.integers(1, max(2, n_slices // 3)))
    ang = rng.uniform(0, 2 * math.pi)
    return {"k0": k0, "k1": k0 + length, "shift_px": float(rng.uniform(2.0, 10.0)), "angle": ang,
            "ghost": float(rng.uniform(0.05, 0.3)), "blur_px": float(rng.uniform(0.0, 4.0))}


def apply_motion(img: np.ndarray, motion: dict | None, k: int) -> np.ndarray:
    if motion is None or not motion["k0"] <= k < motion["k1"]:
        return img
    dy, dx = motion["shift_px"] * math.sin(motion["angle"]), motion["shift_px"] * math.cos(motion["angle"])
    ghost = ndimage.shift(img, (dy, dx), order=1, mode="nearest")
    out = (1 - motion["ghost"]) * img + motion["ghost"] * ghost
    if motion["blur_px"] > 0.5:
        steps = np.linspace(-motion["blur_px"], motion["blur_px"], 5)
        out = np.mean([ndimage.shift(out, (s * math.sin(motion["angle"]), s * math.cos(motion["angle"])), order=1,
                                     mode="nearest") for s in steps], axis=0)
    return out.astype(np.float32)


def draw_metal(rng: np.random.Generator, a: dict, force: dict) -> list[dict]:
    """0–3 metal objects (phantom frame): dental, aneurysm clip, shunt valve."""
    on = rng.random()
    if not force.get("metal", on < 0.1):
        return []
    bx, by, bz = a["brain_axes"]
    out = []
    for _ in range(int(rng.integers(1, 4))):
        kind = str(rng.choice(["dental", "clip", "shunt"]))
        if kind == "dental":
            c = (rng.uniform(-25, 25), -rng.uniform(0.6, 0.8) * by, a["base"]["z_or"] - rng.uniform(25, 40))
        elif kind == "clip":
            c = (rng.uniform(-20, 20), rng.uniform(-20, 5), a["base"]["z_sel"] + rng.uniform(5, 18))
        else:
            th = rng.uniform(-math.pi, math.pi)
            r = (bx + by) / 2 + a["csf_gap"] + a["skull"] + 2
            c = (r * math.cos(th) * bx / ((bx + by) / 2), r * math.sin(th) * by / ((bx + by) / 2), rng.uniform(10, 40))
        out.append({"kind": kind, "centre": c, "radius": float(rng.uniform(1.5, 4.0)),
                    "rays": [(float(rng.uniform(0, math.pi)), float(rng.choice([-1, 1]) * rng.uniform(80, 600)))
                             for _ in range(int(rng.integers(6, 16)))],
                    "decay_mm": float(rng.uniform(25, 90))})
    return out


def streaks_from(img: np.ndarray, rc: tuple[float, float], rays, width_px: float, decay_px: float) -> np.ndarray:
    """Radial streaks through pixel ``rc``: (angle, amplitude) lines decaying away from it."""
    rows = np.arange(img.shape[0], dtype=np.float32)[:, None] - rc[0]
    cols = np.arange(img.shape[1], dtype=np.float32)[None, :] - rc[1]
    r = np.sqrt(rows * rows + cols * cols)
    out = np.zeros(img.shape, np.float32)
    for ang, amp in rays:
        perp = rows * math.cos(ang) - cols * math.sin(ang)
        out += amp * np.exp(-0.5 * (perp / width_px) ** 2)
    return out * np.exp(-r / decay_px)
