"""One affine warp per image: centring, rescale and random augmentation composed into one matrix.

Coordinates are ``(row, col)`` pixel centres.  :func:`affine_matrix` returns
the forward map from input pixels to output pixels,

    F = T(c_out + shift) . R(rotation) . Shear(shear) . Z(rescale * zoom / stretch, rescale * zoom * stretch)
        . Mirror(flip) . T(-c_in)

and :func:`warp` samples the input at ``F^-1`` of every output pixel with
bilinear interpolation and a zero (background) fill outside the image, in one pass.

The seed's training ranges are :data:`TRAIN_RANGES`: rotation uniform 0-360
degrees, shift uniform +-10 px, zoom log-uniform 1/1.6-1.6, shear uniform +-20
degrees, stretch log-uniform 1/1.3-1.3, mirror with probability 1/2.  Test-time
augmentation uses the milder :data:`TTA_RANGES` on a 7-dimensional Halton
sequence mapped through the same inverse CDFs (:func:`tta_params`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import scipy.ndimage

from deepsea.errors import UserError

__all__ = [
    "NO_AUGMENTATION",
    "TRAIN_RANGES",
    "TTA_RANGES",
    "AugmentParams",
    "AugmentRanges",
    "Rescale",
    "affine_matrix",
    "colour_jitter",
    "elastic_field",
    "halton",
    "params_from_unit",
    "sample_params",
    "tta_params",
    "warp",
]


@dataclasses.dataclass(frozen=True)
class AugmentRanges:
    """Ranges of the random part of the transform; zero ranges give the plain rescale."""

    rotation: float = 360.0  # degrees, uniform in [0, rotation)
    shift: float = 10.0  # pixels, uniform in [-shift, shift] on each axis
    zoom: float = 1.6  # log-uniform in [1/zoom, zoom]
    shear: float = 20.0  # degrees, uniform in [-shear, shear]
    stretch: float = 1.3  # log-uniform in [1/stretch, stretch]
    flip: bool = True  # mirror with probability 1/2
    # colour jitter (torchvision's ColorJitter ranges): factors uniform in [1 - b, 1 + b] etc., hue shift
    # uniform in [-hue, hue] turns (at most 0.5); 0 turns each off
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    # "uniform" (the ranges above), or "gaussian": shift, log zoom, shear and log stretch drawn from a normal of
    # standard deviation half the range, truncated at the range (the seed tried Gaussian draws); rotation and
    # mirror stay uniform
    draws: str = "uniform"
    # elastic distortion (Simard et al. 2003; the seed tried it): a random displacement of every output pixel,
    # Gaussian-smoothed with standard deviation elastic_sigma and scaled to elastic pixels at most (0: off)
    elastic: float = 0.0
    elastic_sigma: float = 4.0

    def __post_init__(self) -> None:
        if self.elastic < 0 or not self.elastic_sigma > 0:
            raise UserError(f"aug.elastic={self.elastic} must be >= 0 and aug.elastic_sigma={self.elastic_sigma} > 0")
        if self.draws not in ("uniform", "gaussian"):
            raise UserError(f"aug.draws={self.draws!r}: expected 'uniform' or 'gaussian'")
        for name in ("rotation", "shift", "shear", "brightness", "contrast", "saturation", "hue"):
            if getattr(self, name) < 0:
                raise UserError(f"augmentation range {name}={getattr(self, name)} must be >= 0")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) > 1:
                raise UserError(f"augmentation range {name}={getattr(self, name)} must be <= 1 (a factor >= 0)")
        if self.hue > 0.5:
            raise UserError(f"augmentation range hue={self.hue} must be <= 0.5 (turns)")
        for name in ("zoom", "stretch"):
            if getattr(self, name) < 1:
                raise UserError(f"augmentation range {name}={getattr(self, name)} must be >= 1 (log-uniform)")

    @property
    def jitters(self) -> bool:
        """Whether any colour jitter is on."""
        return any((self.brightness, self.contrast, self.saturation, self.hue))

    @classmethod
    def from_config(cls, aug: Any) -> AugmentRanges:
        """An experiment's ``config.aug`` (a ConfigDict or dict with these keys; the jitter keys may be absent,
        as in runs written before they existed) as ranges."""
        jitter = {k: float(aug.get(k, 0.0)) for k in ("brightness", "contrast", "saturation", "hue")}
        return cls(
            aug["rotation"], aug["shift"], aug["zoom"], aug["shear"], aug["stretch"], bool(aug["flip"]), **jitter,
            draws=str(aug.get("draws", "uniform")), elastic=float(aug.get("elastic", 0.0)),
            elastic_sigma=float(aug.get("elastic_sigma", 4.0)),
        )  # fmt: skip


TRAIN_RANGES = AugmentRanges()
TTA_RANGES = AugmentRanges(rotation=360.0, shift=8.0, zoom=1.4, shear=10.0, stretch=1.2, flip=True)
NO_AUGMENTATION = AugmentRanges(rotation=0.0, shift=0.0, zoom=1.0, shear=0.0, stretch=1.0, flip=False)


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    """One draw of the random part: angles in degrees, shift in output pixels."""

    rotation: float = 0.0
    shift_row: float = 0.0
    shift_col: float = 0.0
    zoom: float = 1.0
    shear: float = 0.0
    stretch: float = 1.0
    flip: bool = False
    brightness: float = 1.0  # colour jitter: factors (1: unchanged) and a hue shift in turns
    contrast: float = 1.0
    saturation: float = 1.0
    hue: float = 0.0
    elastic: float = 0.0  # the displacement's largest size in output pixels (0: none)
    elastic_sigma: float = 4.0
    elastic_seed: int = 0  # the displacement field's random draw

    @property
    def jitters(self) -> bool:
        return (self.brightness, self.contrast, self.saturation, self.hue) != (1.0, 1.0, 1.0, 0.0)


def params_from_unit(u: Sequence[float], ranges: AugmentRanges) -> AugmentParams:
    """Maps a point of the unit cube ``[0, 1)^7`` through the inverse CDFs of the ranges' distributions.

    Dimensions: rotation, row shift, column shift, log zoom, shear, log stretch, mirror.
    """
    u = np.asarray(u, dtype=np.float64)
    if u.shape != (7,):
        raise ValueError(f"expected 7 coordinates in [0, 1), got shape {u.shape}")
    if ranges.draws == "gaussian":  # a normal of standard deviation 1/2, truncated at +-1 (its 2-sigma tails)
        from scipy.special import ndtr, ndtri

        lo = ndtr(-2.0)
        centred = ndtri(lo + (1 - 2 * lo) * u) / 2.0
    else:
        centred = 2 * u - 1  # uniform in [-1, 1]
    return AugmentParams(
        rotation=float(u[0] * ranges.rotation),
        shift_row=float(centred[1] * ranges.shift),
        shift_col=float(centred[2] * ranges.shift),
        zoom=float(math.exp(centred[3] * math.log(ranges.zoom))),
        shear=float(centred[4] * ranges.shear),
        stretch=float(math.exp(centred[5] * math.log(ranges.stretch))),
        flip=bool(ranges.flip and u[6] < 0.5),
    )


def sample_params(rng: np.random.Generator, ranges: AugmentRanges) -> AugmentParams:
    """A random draw: a uniform point of the unit cube through :func:`params_from_unit`, then, when ``ranges``
    jitter colours, four more uniforms for brightness, contrast, saturation and hue (drawn after the affine
    part, which is therefore the same draw with or without jitter)."""
    params = params_from_unit(rng.random(7), ranges)
    if ranges.jitters:
        b, c, s, h = rng.random(4)
        params = dataclasses.replace(
            params,
            brightness=float(1 + (2 * b - 1) * ranges.brightness),
            contrast=float(1 + (2 * c - 1) * ranges.contrast),
            saturation=float(1 + (2 * s - 1) * ranges.saturation),
            hue=float((2 * h - 1) * ranges.hue),
        )
    if ranges.elastic:  # drawn last: the draws before are the same with it or without
        seed = int(rng.integers(2**31))
        params = dataclasses.replace(
            params, elastic=ranges.elastic, elastic_sigma=ranges.elastic_sigma, elastic_seed=seed
        )
    return params


def elastic_field(params: AugmentParams, out_size: int) -> np.ndarray:
    """``(2, S, S)`` row and column displacements of every output pixel: uniform noise in ``[-1, 1]`` from
    ``params.elastic_seed``, Gaussian-smoothed (``elastic_sigma``), scaled so its largest component is
    ``params.elastic`` pixels."""
    noise = np.random.default_rng(params.elastic_seed).uniform(-1, 1, (2, out_size, out_size))
    field = np.stack([scipy.ndimage.gaussian_filter(n, params.elastic_sigma, mode="reflect") for n in noise])
    peak = np.abs(field).max()
    return field * (params.elastic / peak) if peak > 0 else field


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601-2, as PIL's and torchvision's grayscale


def colour_jitter(image: np.ndarray, params: AugmentParams) -> np.ndarray:
    """Brightness, contrast, saturation and hue of a float image in ``[0, 1]`` (``(H, W)`` or ``(H, W, 3)``,
    as displayed), in that order, each clipped to ``[0, 1]`` as torchvision's ``ColorJitter`` does (which
    applies them in a random order).  Grayscale images take brightness and contrast only.  Factors of 1 and a
    hue shift of 0 leave the image exactly as it was.
    """
    x = np.asarray(image, np.float32)
    colour = x.ndim == 3
    if params.brightness != 1:
        x = np.clip(x * np.float32(params.brightness), 0, 1)
    if params.contrast != 1:
        mean = np.float32((x @ _LUMA).mean() if colour else x.mean())
        x = np.clip(mean + (x - mean) * np.float32(params.contrast), 0, 1)
    if colour and params.saturation != 1:
        gray = (x @ _LUMA)[..., None]
        x = np.clip(gray + (x - gray) * np.float32(params.saturation), 0, 1)
    if colour and params.hue != 0:
        from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

        hsv = rgb_to_hsv(x)
        hsv[..., 0] = np.mod(hsv[..., 0] + params.hue, 1.0)
        x = hsv_to_rgb(hsv).astype(np.float32)
    return x


def halton(n: int, dims: int = 7, engine: Literal["auto", "scipy", "ghalton"] = "auto") -> np.ndarray:
    """The first ``n`` points of the unscrambled Halton sequence, skipping the origin: ``(n, dims)``.

    ``scipy.stats.qmc.Halton`` by default; ``ghalton`` (the seed's library) when
    installed and ``engine`` is ``"auto"`` or ``"ghalton"``.  Both give the
    same points.
    """
    if engine in ("auto", "ghalton"):
        try:
            import ghalton  # type: ignore[import-not-found]

            return np.asarray(ghalton.Halton(dims).get(n), dtype=np.float64)
        except ImportError:
            if engine == "ghalton":
                raise ImportError("ghalton is not installed: pip install 'deepsea[ghalton]'") from None
    from scipy.stats import qmc

    sampler = qmc.Halton(d=dims, scramble=False)
    sampler.fast_forward(1)  # the first point is the origin; ghalton starts after it
    return sampler.random(n)


def tta_params(
    n: int = 70, ranges: AugmentRanges = TTA_RANGES, engine: Literal["auto", "scipy", "ghalton"] = "auto"
) -> list[AugmentParams]:
    """``n`` quasi-random test-time transforms (a Halton sequence through the inverse CDFs)."""
    return [params_from_unit(u, ranges) for u in halton(n, 7, engine)]


@dataclasses.dataclass(frozen=True)
class Rescale:
    """How an image of any size is brought to the network's scale.

    ``kind="max_side"``: the largest side becomes ``value`` pixels (the seed: 85
    inside a 95x95 patch).  ``kind="factor"``: multiply by ``value`` (the seed's
    multiscale branch: 1/5 into 47x47).  ``kind="none"``: keep the raw size.
    ``kind="moments"``: centre the organism's intensity centroid and scale its radius of gyration (from the image
    moments of the inverted image) to ``value`` pixels (the seed tried it): :meth:`by_moments`.
    """

    kind: Literal["max_side", "factor", "none", "moments"] = "max_side"
    value: float = 85.0

    def __post_init__(self) -> None:
        if self.kind not in ("max_side", "factor", "none", "moments"):
            raise UserError(f"unknown rescale kind {self.kind!r}; expected 'max_side', 'factor', 'none' or 'moments'")
        if self.kind != "none" and not self.value > 0:
            raise UserError(f"rescale value must be > 0, got {self.value}")

    @classmethod
    def parse(cls, text: str) -> Rescale:
        """``"max_side:85"``, ``"factor:0.2"`` or ``"none"``."""
        kind, _, value = text.partition(":")
        if kind == "none":
            return cls("none")
        try:
            return cls(kind, float(value))  # type: ignore[arg-type]
        except ValueError as e:
            raise UserError(f"bad rescale {text!r} ({e}); expected max_side:N, factor:F, moments:R or none") from None

    def factor(self, height: int, width: int) -> float:
        if self.kind == "moments":
            raise ValueError("a moments rescale depends on the image: use Rescale.by_moments")
        if self.kind == "max_side":
            return self.value / max(height, width)
        if self.kind == "factor":
            return self.value
        return 1.0

    def by_moments(self, bright: np.ndarray) -> tuple[float, tuple[float, float]]:
        """``(scale, (row, col) centre)`` of a ``moments`` rescale for an image whose organism is bright
        (``(H, W)`` or ``(H, W, C)``, summed over channels): the intensity centroid, and the scale that makes the
        radius of gyration about it ``value`` pixels (a blank image: its centre, and a uniform square's radius)."""
        x = np.asarray(bright, np.float64)
        x = x.sum(-1) if x.ndim == 3 else x
        h, w = x.shape
        mass = x.sum()
        if not mass > 0:
            return self.value / (max(h, w) / math.sqrt(6.0)), ((h - 1) / 2.0, (w - 1) / 2.0)
        rows, cols = np.mgrid[0:h, 0:w]
        cr, cc = (rows * x).sum() / mass, (cols * x).sum() / mass
        radius = math.sqrt((((rows - cr) ** 2 + (cols - cc) ** 2) * x).sum() / mass)
        return self.value / max(radius, 0.5), (cr, cc)


def affine_matrix(
    in_shape: tuple[int, int],
    out_size: int,
    scale: float,
    params: AugmentParams = AugmentParams(),
    centre: tuple[float, float] | None = None,
) -> np.ndarray:
    """The forward 3x3 map from input ``(row, col, 1)`` to output coordinates (see the module docstring);
    ``centre``: the input point that lands on the output's centre (default: the image's centre)."""
    h, w = in_shape
    c_in = ((h - 1) / 2.0, (w - 1) / 2.0) if centre is None else centre
    theta = math.radians(params.rotation)
    shear = math.radians(params.shear)
    c, s = math.cos(theta), math.sin(theta)  # the rotation: counter-clockwise as displayed, like np.rot90
    t = math.tan(shear)
    zr, zc = scale * params.zoom / params.stretch, scale * params.zoom * params.stretch
    m = -1.0 if params.flip else 1.0
    # rotate . shear . zoom . mirror, multiplied out (the loader computes one per example)
    a, b = (c - s * t) * zr, -s * zc * m
    d, e = (s + c * t) * zr, c * zc * m
    c_out = (out_size - 1) / 2.0
    return np.array(
        [
            [a, b, c_out + params.shift_row - a * c_in[0] - b * c_in[1]],
            [d, e, c_out + params.shift_col - d * c_in[0] - e * c_in[1]],
            [0.0, 0.0, 1.0],
        ]
    )


@functools.lru_cache(maxsize=16)
def _output_grid(out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The output pixels' row and column coordinates (float64, read-only), made once per size."""
    rows, cols = np.mgrid[0:out_size, 0:out_size].astype(np.float64)
    rows.flags.writeable = cols.flags.writeable = False
    return rows, cols


def _affine_inverse(m: np.ndarray) -> np.ndarray:
    """The inverse of an affine 3x3 map (last row ``0 0 1``), in closed form."""
    a, b, c, d, tr, tc = m[0, 0], m[0, 1], m[1, 0], m[1, 1], m[0, 2], m[1, 2]
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    return np.array([[ia, ib, -(ia * tr + ib * tc)], [ic, id_, -(ic * tr + id_ * tc)], [0.0, 0.0, 1.0]])


def warp(
    image: np.ndarray, forward: np.ndarray, out_size: int, fill: float = 0.0, displacement: np.ndarray | None = None
) -> np.ndarray:
    """Samples ``image`` (``(H, W)`` or ``(H, W, C)``) at ``forward^-1`` of each output pixel.

    Pixels are squares: input pixel ``(i, j)`` covers ``[i - 1/2, i + 1/2] x
    [j - 1/2, j + 1/2]``.  Inside the image, values are interpolated bilinearly
    (clamped at the border); outside, they are ``fill`` (0: the inverted white background).  So
    a 1x1 image scales to a uniform square, like any other image.  Returns
    float32 ``(S, S[, C])``.  ``displacement``: ``(2, S, S)`` offsets added to the output pixels' coordinates
    before they are mapped back (an elastic distortion, :func:`elastic_field`).

    The sampling is SciPy's ``ndimage.affine_transform`` / ``map_coordinates`` of order 1 with ``mode="nearest"``
    (the tests' reference), computed here in float64 on the coordinates the inside test needs anyway: one pass
    for all channels.
    """
    inv = _affine_inverse(np.asarray(forward, np.float64))
    image = np.asarray(image, dtype=np.float32)
    h, w = image.shape[:2]
    rows, cols = _output_grid(out_size)
    if displacement is not None:
        rows, cols = rows + displacement[0], cols + displacement[1]
    src_r = inv[0, 0] * rows + inv[0, 1] * cols + inv[0, 2]
    src_c = inv[1, 0] * rows + inv[1, 1] * cols + inv[1, 2]
    inside = (src_r >= -0.5) & (src_r <= h - 0.5) & (src_c >= -0.5) & (src_c <= w - 0.5)
    r = np.minimum(np.maximum(src_r, 0.0), h - 1.0)  # "nearest": beyond the outer pixel centres the edge value
    c = np.minimum(np.maximum(src_c, 0.0), w - 1.0)
    r0, c0 = np.floor(r), np.floor(c)
    fr, fc = r - r0, c - c0
    r0i, c0i = r0.astype(np.intp), c0.astype(np.intp)
    top_left = r0i * w + c0i  # the four neighbours as flat indices (the next row or column clamped at the edge)
    right, down = (c0i < w - 1).astype(np.intp), (r0i < h - 1) * w
    flat = image.reshape(h * w, *image.shape[2:])
    if image.ndim == 3:
        fr, fc, inside = fr[..., None], fc[..., None], inside[..., None]
    top = flat[top_left] * (1.0 - fc) + flat[top_left + right] * fc
    bottom = flat[top_left + down] * (1.0 - fc) + flat[top_left + down + right] * fc
    return np.where(inside, top * (1.0 - fr) + bottom * fr, fill).astype(np.float32)
