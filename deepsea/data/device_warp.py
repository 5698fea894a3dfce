"""The affine warp of :mod:`deepsea.data.transforms` in JAX: jitted, batched, and differentiable in the image and
in the transform's parameters, so augmentation can run on an accelerator and a transform can be optimised by
gradient (the seed's "affine transformations as network layers").

:func:`affine_matrix` builds the same forward map as :func:`deepsea.data.transforms.affine_matrix` from
parameters given as arrays (:class:`WarpParams`); :func:`warp` samples an image at its inverse with the same
conventions as :func:`deepsea.data.transforms.warp` (pixel centres, bilinear inside the image with the border
clamped, ``fill`` outside); :func:`warp_batch` warps a batch of images of different sizes, each padded into one
canvas, with its own size and transform; :func:`warp_inputs` turns a batch of such canvases
(``data.augment_on = "device"``: :func:`deepsea.data.pipeline.device_inputs` made them) into the network's inputs.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from deepsea.data.transforms import AugmentParams

__all__ = ["WarpParams", "affine_matrix", "warp", "warp_batch", "warp_inputs"]


class WarpParams(NamedTuple):
    """The affine part of :class:`deepsea.data.transforms.AugmentParams` as arrays (scalars, or one per image):
    angles in degrees, shifts in output pixels, ``flip`` as 0 or 1 (a float, so it can be interpolated too)."""

    rotation: jax.Array
    shift_row: jax.Array
    shift_col: jax.Array
    zoom: jax.Array
    shear: jax.Array
    stretch: jax.Array
    flip: jax.Array

    @classmethod
    def from_params(cls, params: AugmentParams | list[AugmentParams]) -> WarpParams:
        """From one :class:`AugmentParams` (scalars) or a list (arrays, one entry per image)."""
        many = isinstance(params, list)
        ps = params if many else [params]
        cols = [[p.rotation, p.shift_row, p.shift_col, p.zoom, p.shear, p.stretch, float(p.flip)] for p in ps]
        arr = jnp.asarray(np.array(cols, np.float32))
        return cls(*(arr[:, i] if many else arr[0, i] for i in range(7)))

    @classmethod
    def identity(cls) -> WarpParams:
        return cls.from_params(AugmentParams())


def _translate(dr: jax.Array, dc: jax.Array) -> jax.Array:
    one, zero = jnp.ones_like(dr), jnp.zeros_like(dr)
    return jnp.stack([jnp.stack([one, zero, dr]), jnp.stack([zero, one, dc]), jnp.stack([zero, zero, one])])


def _linear(a: jax.Array, b: jax.Array, c: jax.Array, d: jax.Array) -> jax.Array:
    one, zero = jnp.ones_like(a), jnp.zeros_like(a)
    return jnp.stack([jnp.stack([a, b, zero]), jnp.stack([c, d, zero]), jnp.stack([zero, zero, one])])


def affine_matrix(in_shape: tuple[jax.Array, jax.Array], out_size: int, scale: jax.Array, p: WarpParams) -> jax.Array:
    """The forward 3x3 map from input ``(row, col, 1)`` to output coordinates, for one image (scalar parameters;
    ``jax.vmap`` it for a batch): the composition of :func:`deepsea.data.transforms.affine_matrix`."""
    h, w = (jnp.asarray(v, jnp.float32) for v in in_shape)
    scale = jnp.asarray(scale, jnp.float32)
    theta, shear = jnp.deg2rad(p.rotation), jnp.deg2rad(p.shear)
    c, s = jnp.cos(theta), jnp.sin(theta)
    zero = jnp.zeros_like(c)
    rotate = _linear(c, -s, s, c)
    shear_m = _linear(jnp.ones_like(c), zero, jnp.tan(shear), jnp.ones_like(c))
    zoom = _linear(scale * p.zoom / p.stretch, zero, zero, scale * p.zoom * p.stretch)
    mirror = _linear(jnp.ones_like(c), zero, zero, 1.0 - 2.0 * p.flip)
    c_out = (out_size - 1) / 2.0
    return (
        _translate(c_out + p.shift_row, c_out + p.shift_col)
        @ rotate
        @ shear_m
        @ zoom
        @ mirror
        @ _translate(-(h - 1) / 2.0, -(w - 1) / 2.0)
    )


def warp(
    image: jax.Array,
    forward: jax.Array,
    out_size: int,
    fill: float = 0.0,
    size: tuple[jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """Samples ``image`` (``(H, W)`` or ``(H, W, C)``) at ``forward^-1`` of each output pixel: bilinear inside the
    image (the border clamped), ``fill`` outside; float32 ``(S, S[, C])``.  ``size``: the image's own ``(h, w)``
    when it is padded into a larger ``(H, W)`` canvas (its top-left corner), as :func:`warp_batch` does."""
    image = jnp.asarray(image)  # an integer image is read as it is and only its samples become float32
    if not jnp.issubdtype(image.dtype, jnp.integer):
        image = image.astype(jnp.float32)
    squeeze = image.ndim == 2
    if squeeze:
        image = image[..., None]
    hh, ww = image.shape[:2]
    h, w = (hh, ww) if size is None else size
    h, w = jnp.asarray(h, jnp.float32), jnp.asarray(w, jnp.float32)
    inv = jnp.linalg.inv(forward)
    rows, cols = jnp.meshgrid(jnp.arange(out_size, dtype=jnp.float32), jnp.arange(out_size, dtype=jnp.float32),
                              indexing="ij")  # fmt: skip
    src_r = inv[0, 0] * rows + inv[0, 1] * cols + inv[0, 2]
    src_c = inv[1, 0] * rows + inv[1, 1] * cols + inv[1, 2]
    inside = (src_r >= -0.5) & (src_r <= h - 0.5) & (src_c >= -0.5) & (src_c <= w - 0.5)
    r0, c0 = jnp.floor(src_r), jnp.floor(src_c)
    fr, fc = src_r - r0, src_c - c0  # the weights: differentiable in the coordinates, so in the transform
    r0i, c0i = r0.astype(jnp.int32), c0.astype(jnp.int32)
    hi, wi = h.astype(jnp.int32) - 1, w.astype(jnp.int32) - 1

    def at(r: jax.Array, c: jax.Array) -> jax.Array:
        return image[jnp.clip(r, 0, hi), jnp.clip(c, 0, wi)].astype(jnp.float32)

    top = at(r0i, c0i) * (1 - fc)[..., None] + at(r0i, c0i + 1) * fc[..., None]
    bottom = at(r0i + 1, c0i) * (1 - fc)[..., None] + at(r0i + 1, c0i + 1) * fc[..., None]
    out = top * (1 - fr)[..., None] + bottom * fr[..., None]
    out = jnp.where(inside[..., None], out, jnp.asarray(fill, jnp.float32))
    return out[..., 0] if squeeze else out


def warp_batch(images: jax.Array, sizes: jax.Array, forwards: jax.Array, out_size: int, fill: float = 0.0) -> jax.Array:
    """A batch ``(B, H, W, C)`` of images padded into one canvas (each at its top-left corner), their own sizes
    ``(B, 2)`` and forward maps ``(B, 3, 3)`` -> ``(B, S, S, C)``; jit it with ``out_size`` static."""
    return jax.vmap(lambda im, sz, f: warp(im, f, out_size, fill, (sz[0], sz[1])))(images, sizes, forwards)


def warp_inputs(batch: dict[str, jax.Array], pp: Any) -> dict[str, jax.Array]:
    """A batch of uint8 ``canvas`` images with their ``canvas_size`` and forward maps (``forward``: ``(B, R, 3, 3)``,
    the patch and each extra rotation; ``forward2``: the second size's) -> the same batch with the network's
    inputs instead (``image``, ``image2``), as :func:`deepsea.data.pipeline.preprocess_inputs` makes them for
    :class:`~deepsea.data.pipeline.Preprocess` ``pp``: scaled to [0, 1] (inverted where ``pp`` inverts), warped
    with ``pp``'s fill outside the image, normalised by its statistics.  Bilinear sampling is linear, so the
    scaling after it is the CPU's scaling before it, to float rounding."""
    out = {k: v for k, v in batch.items() if k not in ("canvas", "canvas_size", "forward", "forward2")}
    canvas, sizes = batch["canvas"], batch["canvas_size"]
    if canvas.ndim == 3:
        canvas = canvas[..., None]
    mean = jnp.asarray(pp.mean, jnp.float32)
    std = jnp.asarray(pp.std, jnp.float32)

    def patches(forwards: jax.Array, size: int) -> jax.Array:
        # the warp of the raw values, then [0, 1] and the inversion: the fill is the scaled image's, so raw
        # samples outside the image are marked and filled after the scaling
        raw = warp_batch(canvas, sizes, forwards, size, fill=jnp.nan)
        x = raw / jnp.float32(255)
        if pp.inverted:
            x = 1.0 - x
        x = jnp.where(jnp.isnan(raw), jnp.float32(pp.fill), x)
        return (x - mean) / std

    forward = batch["forward"]
    out["image"] = jnp.concatenate([patches(forward[:, r], pp.size) for r in range(forward.shape[1])], axis=-1)
    if "forward2" in batch:
        out["image2"] = patches(batch["forward2"], pp.second_size)
    return out
