"""A generated plankton-like dataset: the embedded default for the main job and for fast tests.

``deepsea make-synthetic OUT`` writes ``OUT/<class>/<id>.jpg``: twelve classes
of procedurally drawn organisms, dark on white, at a random orientation and
position, with noise, as JPEGs of varying size (cropped around the organism
with a random margin, as NDSB images are).  Telling the classes apart needs
rotation invariance (every class appears at every angle) and size (two pairs
of classes share a shape and differ only in size, like real plankton).

``colour=True`` writes RGB images: every organism is tinted with a colour drawn
from :data:`PALETTE` (the same for every class, so it carries no label), except
the classes of :data:`COLOUR_PAIRS`, each split into a red and a green class of
the same shape.  Red and green have the same luma, so the grayscale versions
of a pair's images are identically distributed: only a model that sees colour
can tell those classes apart.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np
from PIL import Image

from deepsea.errors import UserError

__all__ = [
    "COLOUR_PAIRS",
    "PALETTE",
    "SYNTHETIC_CLASSES",
    "colour_classes",
    "draw",
    "make_synthetic",
]

Shape = Callable[[np.ndarray, np.ndarray, np.random.Generator, float], np.ndarray]


def _disc(y, x, rng, r):
    return np.hypot(y, x) <= r


def _ellipse(aspect_lo, aspect_hi):
    def f(y, x, rng, r):
        a = rng.uniform(aspect_lo, aspect_hi)
        return (y / r) ** 2 + (x * a / r) ** 2 <= 1

    return f


def _ring(y, x, rng, r):
    d = np.hypot(y, x)
    return (d <= r) & (d >= r * rng.uniform(0.55, 0.7))


def _cross(y, x, rng, r):
    w = r * rng.uniform(0.18, 0.26)
    return ((np.abs(y) <= w) & (np.abs(x) <= r)) | ((np.abs(x) <= w) & (np.abs(y) <= r))


def _polygon(n_vertices, star):
    def f(y, x, rng, r):
        ang = np.arctan2(y, x)
        d = np.hypot(y, x)
        sector = 2 * np.pi / n_vertices
        local = np.mod(ang, sector) - sector / 2
        if star:
            inner = r * rng.uniform(0.35, 0.5)
            edge = inner + (r - inner) * (1 - np.abs(local) / (sector / 2))
            return d <= edge
        return d * np.cos(local) <= r * np.cos(sector / 2)

    return f


def _chain(y, x, rng, r):
    n = int(rng.integers(3, 6))
    bead = r / n * 1.05
    centres = (np.arange(n) - (n - 1) / 2) * 2 * bead * 0.95
    m = np.zeros(y.shape, bool)
    for c in centres:
        m |= np.hypot(y, x - c) <= bead
    return m


def _crescent(y, x, rng, r):
    off = r * rng.uniform(0.35, 0.5)
    return (np.hypot(y, x) <= r) & (np.hypot(y, x - off) > r * 0.85)


def _spiky(y, x, rng, r):
    body = np.hypot(y, x) <= r * 0.5
    n = int(rng.integers(7, 12))
    ang = np.arctan2(y, x)
    d = np.hypot(y, x)
    spines = (np.abs(np.sin((ang * n) / 2)) < 0.12) & (d <= r)
    return body | spines


SYNTHETIC_CLASSES: dict[str, tuple[Shape, tuple[float, float]]] = {
    # name: (shape, radius range in pixels of the original image)
    "disc_small": (_disc, (5.0, 8.0)),
    "disc_large": (_disc, (14.0, 22.0)),
    "ellipse_small": (_ellipse(1.8, 2.4), (7.0, 11.0)),
    "ellipse_large": (_ellipse(1.8, 2.4), (18.0, 28.0)),
    "rod": (_ellipse(5.0, 8.0), (12.0, 24.0)),
    "ring": (_ring, (10.0, 18.0)),
    "cross": (_cross, (9.0, 16.0)),
    "triangle": (_polygon(3, star=False), (9.0, 16.0)),
    "star": (_polygon(5, star=True), (10.0, 18.0)),
    "chain": (_chain, (12.0, 22.0)),
    "crescent": (_crescent, (9.0, 16.0)),
    "spiky": (_spiky, (10.0, 18.0)),
}


_LUMA = np.array([0.299, 0.587, 0.114])  # PIL's conversion to grayscale


def _with_luma(r: float, b: float, luma: float) -> tuple[float, float, float]:
    """The colour ``(r, g, b)`` whose luma is ``luma``."""
    return (r, (luma - _LUMA[0] * r - _LUMA[2] * b) / _LUMA[1], b)


_PAIR_LUMA = 110.0
RED = _with_luma(225.0, 55.0, _PAIR_LUMA)
GREEN = _with_luma(30.0, 95.0, _PAIR_LUMA)
PALETTE: tuple[tuple[float, float, float], ...] = (RED, GREEN, (60.0, 90.0, 200.0), (150.0, 105.0, 40.0))
"""The colours of organisms whose colour carries no label (one drawn per image)."""

COLOUR_PAIRS = ("ring", "cross", "star")
"""Shapes split into a ``_red`` and a ``_green`` class in the colour mode."""


def colour_classes() -> dict[str, tuple[str, tuple[float, float, float] | None]]:
    """The colour mode's classes: name -> (shape class, fixed colour or None for a palette colour)."""
    out: dict[str, tuple[str, tuple[float, float, float] | None]] = {}
    for name in SYNTHETIC_CLASSES:
        if name in COLOUR_PAIRS:
            out[f"{name}_red"] = (name, RED)
            out[f"{name}_green"] = (name, GREEN)
        else:
            out[name] = (name, None)
    return out


def draw(name: str, rng: np.random.Generator, colour: tuple[float, float, float] | None = None) -> np.ndarray:
    """One uint8 image of class ``name``: dark organism on white, cropped with a random margin; with ``colour``
    an RGB image whose organism has that colour where it is fully inked (its luma is the grayscale image's)."""
    shape, (r_lo, r_hi) = SYNTHETIC_CLASSES[name]
    r = rng.uniform(r_lo, r_hi)
    margin = rng.uniform(0.15, 0.6) * r + 3
    half = math.ceil(r + margin)
    size_h = 2 * half + int(rng.integers(0, 6))
    size_w = 2 * half + int(rng.integers(0, 6))
    ss = 3  # supersampling for anti-aliased edges
    yy, xx = np.mgrid[0 : size_h * ss, 0 : size_w * ss].astype(np.float64) / ss
    cy = size_h / 2 + rng.uniform(-0.15, 0.15) * margin
    cx = size_w / 2 + rng.uniform(-0.15, 0.15) * margin
    theta = rng.uniform(0, 2 * np.pi)
    c, s = math.cos(theta), math.sin(theta)
    y, x = yy - cy, xx - cx
    yr, xr = c * y - s * x, s * y + c * x
    mask = shape(yr, xr, rng, r).astype(np.float64)
    mask = mask.reshape(size_h, ss, size_w, ss).mean(axis=(1, 3))
    # texture: darker rim, lighter interior, smooth blotches
    darkness = rng.uniform(0.55, 0.9)
    blotch = 1 + 0.15 * np.sin(yy[::ss, ::ss] / rng.uniform(2, 5) + rng.uniform(0, 6)) * np.cos(
        xx[::ss, ::ss] / rng.uniform(2, 5)
    )
    ink = np.clip(darkness * mask * blotch, 0, 1)
    noise = rng.normal(0, rng.uniform(2, 7), ink.shape)
    if colour is None:
        return np.clip(255.0 * (1 - ink) + noise, 0, 255).astype(np.uint8)
    tint = 255.0 - np.asarray(colour, np.float64)  # how far each channel falls from white at full ink
    img = 255.0 - ink[..., None] * tint + noise[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def make_synthetic(
    out: str | os.PathLike,
    per_class: int = 150,
    seed: int = 0,
    classes: list[str] | None = None,
    progress: bool = True,
    colour: bool = False,
) -> str:
    """Writes ``per_class`` JPEGs for each class under ``out/<class>/``; returns ``out``.

    Image ids are unique across classes.  The output is a function of
    ``(per_class, seed, classes, colour)`` alone.  ``colour``: RGB images and the colour mode's classes
    (:func:`colour_classes`).
    """
    from tqdm.auto import tqdm

    out = os.fspath(out)
    table = colour_classes() if colour else {n: (n, None) for n in SYNTHETIC_CLASSES}
    names = classes or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise UserError(f"unknown synthetic classes {unknown}; choose from {sorted(table)}")
    if per_class < 1:
        raise UserError(f"per_class must be positive, got {per_class}")
    total = len(names) * per_class
    with tqdm(total=total, desc=f"drawing {out}", unit="img", disable=not progress) as bar:
        for ci, name in enumerate(names):
            folder = os.path.join(out, name)
            os.makedirs(folder, exist_ok=True)
            shape, fixed = table[name]
            for i in range(per_class):
                rng = np.random.default_rng([seed, ci, i])
                if colour:
                    tint = fixed if fixed is not None else PALETTE[int(rng.integers(len(PALETTE)))]
                    img = draw(shape, rng, tint)
                else:
                    img = draw(shape, rng)
                image_id = ci * per_class + i + 1
                Image.fromarray(img, mode="RGB" if colour else "L").save(
                    os.path.join(folder, f"{image_id}.jpg"), quality=92
                )
                bar.update()
    return out


SYNTHETIC_VERSION = 1
DEFAULT_PER_CLASS = 150


