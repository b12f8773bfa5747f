"""Synthetic volumes drawn here (independent of edge_agent.phantoms) for the evidence tests."""

from __future__ import annotations

import numpy as np

PX = 0.5   # mm per pixel of the drawn slices
N = 400    # 200 mm field


def grid(n: int = N, px: float = PX):
    ax = (np.arange(n) - (n - 1) / 2.0) * px
    return np.meshgrid(ax, ax, indexing="xy")   # x (cols), y (rows), mm


def head_slice(rng, *, a=72.0, b=88.0, skull=6.0, noise=3.0, brain=32.0):
    """An axial head slice: scalp 40 HU, skull 1500 HU, CSF rim 8 HU, brain (grey 40 / white 27 HU)."""
    x, y = grid()
    r = np.sqrt((x / a) ** 2 + (y / b) ** 2)
    d = (r - 1.0) * np.sqrt(x * x + y * y) / np.maximum(r, 1e-6)   # ≈ signed distance to the inner table
    img = np.full(x.shape, -1024.0, np.float32)
    img[d < skull + 5.0] = 40.0                      # scalp
    img[d < skull] = 1500.0                          # skull
    img[d < 0] = 8.0                                 # CSF
    img[d < -2.0] = 40.0                             # grey matter
    img[d < -5.0] = 27.0                             # white matter
    img += (brain - 32.0) * (d < 0)
    img += rng.normal(0, noise, img.shape).astype(np.float32) * (img > -500)
    return img, x, y, d


def cylinder_slice(rng, *, radius=100.0, wall=5.0, water=2.0, inserts=True, noise=4.0):
    """A QA phantom: acrylic wall (120 HU), water inside, rods of Teflon/acrylic/polyethylene/air."""
    x, y = grid(480, 0.5)
    rr = np.hypot(x, y)
    img = np.full(x.shape, -1024.0, np.float32)
    img[rr < radius] = 120.0
    img[rr < radius - wall] = water
    if inserts:
        for i, hu in enumerate([950.0, 120.0, -95.0, -1000.0, 340.0, 950.0, 120.0, -95.0]):
            ang = 2 * np.pi * i / 8
            img[np.hypot(x - 55 * np.cos(ang), y - 55 * np.sin(ang)) < 7.0] = hu
    img += rng.normal(0, noise, img.shape).astype(np.float32) * (img > -500)
    return img


def chest_slice(rng, *, noise=15.0):
    """An axial chest slice: body 40 HU with fat, two lungs at -850 HU, a vertebra."""
    x, y = grid(640, 0.7)
    img = np.full(x.shape, -1024.0, np.float32)
    img[(x / 160) ** 2 + (y / 110) ** 2 < 1] = -90.0
    img[(x / 150) ** 2 + (y / 100) ** 2 < 1] = 40.0
    for sx in (-1, 1):
        img[((x - sx * 70) / 55) ** 2 + ((y + 5) / 75) ** 2 < 1] = -850.0
    img[np.hypot(x, y - 80) < 15] = 400.0
    img += rng.normal(0, noise, img.shape).astype(np.float32) * (img > -1000)
    return img, x, y
