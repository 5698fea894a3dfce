"""XLA formulations of the convolution and max pooling, used where oneDNN is not: the reference and faster
gradients for XLA:CPU.

- :func:`conv_reference`: ``lax.conv_general_dilated`` in NHWC/HWIO, what every other implementation is tested
  against.
- :func:`conv_taps`: a convolution of few input channels (a network's first layer) as a sum of shifted inputs,
  which XLA fuses with the bias and activation that follow; its kernel gradient is one matrix product.
- :func:`bias_add`: ``x + bias`` whose bias gradient is a matrix-vector product (XLA:CPU lowers the plain
  reduction over large maps to a slow reduce-window).
- :func:`max_pool_slices` and :func:`max_pool_reduce_window`: max pooling as strided slices (a cheap backward pass
  on the CPU; ties share the gradient) and as ``lax.reduce_window`` (what ``flax.linen.max_pool`` runs; the
  gradient goes to the first maximum).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from deepsea.ops import pad_amounts

__all__ = [
    "DEFAULT_NEGATIVE_SLOPE",
    "TAPS_MAX_INPUT_CHANNELS",
    "Padding",
    "bias_add",
    "bias_gradient",
    "check_pool_fits",
    "conv_pads",
    "conv_reference",
    "conv_taps",
    "leaky_relu",
    "max_pool_reduce_window",
    "max_pool_slices",
    "pool_pads",
    "reduce_window_max",
]

NHWC = ("NHWC", "HWIO", "NHWC")
Padding = tuple[tuple[int, int], tuple[int, int]]


DEFAULT_NEGATIVE_SLOPE = 1.0 / 3.0
"""The seed's leaky ReLU slope."""


def leaky_relu(x: jax.Array, negative_slope: float = DEFAULT_NEGATIVE_SLOPE) -> jax.Array:
    """``max(x, a x)`` for ``0 <= a <= 1`` (``a = 0``: ReLU); the seed used ``a = 1/3``."""
    return jnp.where(x >= 0, x, jnp.asarray(negative_slope, x.dtype) * x)


def conv_pads(
    x: jax.Array, kernel: jax.Array, padding: str | Sequence[tuple[int, int]], strides: Sequence[int] = (1, 1)
) -> Padding:
    """Explicit ``((top, bottom), (left, right))`` padding of an NHWC convolution with an HWIO kernel."""
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(x.shape[1:3], kernel.shape[:2], tuple(strides), padding)
    (t, b), (left, r) = padding
    return (int(t), int(b)), (int(left), int(r))


def conv_reference(
    x: jax.Array,
    kernel: jax.Array,
    padding: str | Sequence[tuple[int, int]] = "SAME",
    strides: Sequence[int] = (1, 1),
) -> jax.Array:
    """XLA's convolution of ``x (N, H, W, C)`` with ``kernel (kh, kw, C, F)``: the reference."""
    return jax.lax.conv_general_dilated(
        x, kernel, tuple(strides), conv_pads(x, kernel, padding, strides), dimension_numbers=NHWC
    )


@jax.custom_vjp
def bias_add(x: jax.Array, bias: jax.Array) -> jax.Array:
    """``x + bias`` over the last axis, whose gradient sums over the other axes as a matrix-vector product.

    The same value and gradient as ``x + bias`` (up to the summation order).
    """
    return x + bias.astype(x.dtype)


def _bias_add_fwd(x: jax.Array, bias: jax.Array) -> tuple[jax.Array, jax.Array]:
    return bias_add(x, bias), bias


def _bias_add_bwd(bias: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    return g, bias_gradient(g).astype(bias.dtype)


def bias_gradient(g: jax.Array) -> jax.Array:
    """The sum of ``g`` over every axis but the last, as a matrix-vector product accumulated in float32."""
    flat = g.reshape(-1, g.shape[-1])
    ones = jnp.ones((flat.shape[0],), g.dtype)
    return jax.lax.dot_general(flat, ones, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)


bias_add.defvjp(_bias_add_fwd, _bias_add_bwd)


TAPS_MAX_INPUT_CHANNELS = 2
"""Without oneDNN, convolutions with at most this many input channels (a network's first layer) use
:func:`conv_taps`."""


def conv_taps(x: jax.Array, kernel: jax.Array, padding: str | Sequence[tuple[int, int]] = "SAME") -> jax.Array:
    """A stride-1 NHWC convolution (``kernel (kh, kw, C, O)``) for inputs of few channels.

    The sum over the ``kh * kw * C`` taps of shifted inputs times kernel rows, which XLA fuses with the bias and
    activation that follow into one loop.  The kernel gradient is one matrix product of the shifted inputs with
    the output gradient; the input gradient is the convolution's.  The same function as :func:`conv_reference`
    up to the summation order.
    """
    return _conv_taps(x, kernel, conv_pads(x, kernel, padding))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_taps(x: jax.Array, kernel: jax.Array, padding: Padding) -> jax.Array:
    return _taps_forward(x, kernel, padding)


def _shifted(x: jax.Array, kernel_shape: tuple[int, ...], padding: Padding) -> list[jax.Array]:
    kh, kw = kernel_shape[:2]
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    h, w = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    return [xp[:, i : i + h, j : j + w, :] for i in range(kh) for j in range(kw)]


def _taps_forward(x: jax.Array, kernel: jax.Array, padding: Padding) -> jax.Array:
    rows = kernel.reshape(-1, kernel.shape[-1])  # (kh * kw * C, O), in the order of _shifted's taps, then C
    y = None
    for t, shifted in enumerate(_shifted(x, kernel.shape, padding)):
        for c in range(x.shape[-1]):
            term = shifted[..., c : c + 1] * rows[t * x.shape[-1] + c]
            y = term if y is None else y + term
    return y


def _conv_taps_fwd(x, kernel, padding):
    return _taps_forward(x, kernel, padding), (x, kernel)


def _conv_taps_bwd(padding, res, g):
    x, kernel = res
    dx = jax.vjp(lambda x: conv_reference(x, kernel, padding), x)[1](g)[0]  # not computed for an input image
    patches = jnp.stack(_shifted(x, kernel.shape, padding), axis=-2)  # (N, H, W, kh * kw, C)
    patches = patches.reshape(-1, kernel.shape[0] * kernel.shape[1] * kernel.shape[2])
    dw = jax.lax.dot_general(patches, g.reshape(-1, g.shape[-1]), (((0,), (0,)), ((), ())))
    return dx, dw.reshape(kernel.shape).astype(kernel.dtype)


_conv_taps.defvjp(_conv_taps_fwd, _conv_taps_bwd)


def pool_pads(x: jax.Array, window: int, stride: int, padding: str | tuple[int, int]) -> Padding:
    """Explicit ``((top, bottom), (left, right))`` padding of a square pooling of NHWC ``x``."""
    h = pad_amounts(x.shape[1], window, stride, padding)
    w = pad_amounts(x.shape[2], window, stride, padding)
    return (int(h[0]), int(h[1])), (int(w[0]), int(w[1]))


def check_pool_fits(x: jax.Array, window: int, pads: Padding) -> None:
    if x.ndim != 4:
        raise ValueError(f"max pooling expects an NHWC array; got shape {x.shape}")
    for i in range(2):
        if x.shape[1 + i] + sum(pads[i]) < window:
            raise ValueError(f"a {window}-wide window does not fit a map of {x.shape[1]}x{x.shape[2]} pixels")


def max_pool_reduce_window(x: jax.Array, window: int, stride: int, padding: str | tuple[int, int]) -> jax.Array:
    """``lax.reduce_window`` max pooling of NHWC ``x`` (padded cells never win); the gradient goes to the first
    maximum of each window."""
    pads = pool_pads(x, window, stride, padding)
    check_pool_fits(x, window, pads)
    return reduce_window_max(x, (window, window), (stride, stride), pads)


def reduce_window_max(x: jax.Array, window: tuple[int, int], strides: tuple[int, int], padding: Padding) -> jax.Array:
    """``lax.reduce_window`` max of NHWC ``x`` with explicit padding (padded cells never win)."""
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, *window, 1), (1, *strides, 1), ((0, 0), *padding, (0, 0))
    )


def max_pool_slices(x: jax.Array, window: int, stride: int, padding: str | tuple[int, int]) -> jax.Array:
    """Max pooling of NHWC ``x`` as the maximum of ``window`` strided slices along the height, then the width.

    The forward result equals :func:`max_pool_reduce_window` bit for bit; its gradient is the same away from ties
    (at a tie it goes to one of the tied inputs by the order of the selects).
    """
    pads = pool_pads(x, window, stride, padding)
    check_pool_fits(x, window, pads)
    for axis, (lo, hi) in zip((1, 2), pads, strict=True):
        if lo or hi:
            pad = [(0, 0)] * x.ndim
            pad[axis] = (lo, hi)
            x = jnp.pad(x, pad, constant_values=-jnp.inf)
        out = (x.shape[axis] - window) // stride + 1
        parts = [jax.lax.slice_in_dim(x, i, i + (out - 1) * stride + 1, stride, axis=axis) for i in range(window)]
        y = parts[0]
        for p in parts[1:]:
            y = jnp.where(y >= p, y, p)  # max whose gradient is one select, not maximum's tie-splitting divide
        x = y
    return x
