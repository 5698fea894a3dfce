"""Exact group-equivariant operations on NHWC arrays: slice, roll and pool.

Views are stacked view-major on the batch axis: an array of ``V * B`` rows holds
view ``v`` of image ``b`` at row ``v * B + b``, where the views are numbered as
the elements of the group (:mod:`deepsea.groups`).

All operations are reshapes, flips, transposes and concatenations, so they are
exact (bit for bit) for every dtype, differentiable, and ``jit``/``vmap``-able.
Pooling sums the views in sorted order, which makes the mean and RMS bitwise
invariant to any permutation of the views, not merely invariant up to rounding.
16-bit floats (bfloat16, float16) are rolled as their bit patterns, and their
roll gradients sum the copies in float32 and round once.

The key identity: for view ``g`` and block ``h``, :func:`group_conv_roll`
takes the maps of view ``h . g`` and transforms them by ``h**-1``.  Applied to
the output of :func:`group_slice`, every block of view ``g`` is then exactly
``g`` applied to the input, and transforming the input by any ``a`` permutes
the rolled views as ``g -> g . a``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from deepsea.groups import C4, D4, Group, get_group

__all__ = [
    "PoolMode",
    "cyclic_conv_roll",
    "cyclic_pool",
    "cyclic_roll",
    "cyclic_slice",
    "dihedral_conv_roll",
    "dihedral_pool",
    "dihedral_roll",
    "dihedral_slice",
    "group_conv_roll",
    "group_pool",
    "group_roll",
    "group_slice",
    "pad_amounts",
    "permute_views",
    "pool_stack",
    "pooling_is_symmetric",
    "stack_views",
    "unfold_views",
    "view_kernels",
]

PoolMode = Literal["mean", "max", "rms"]

DEFAULT_RMS_EPS = 1e-12


def stack_views(parts: Sequence[jax.Array]) -> jax.Array:
    """``V`` arrays ``(B, ...)`` -> ``(V*B, ...)``, view-major (the layout every op here takes): a stack and a
    reshape, which exporters with a symbolic batch size (jax2onnx) follow where they mis-shape a concatenation."""
    first = parts[0]
    return jnp.stack(parts, axis=0).reshape((len(parts) * first.shape[0], *first.shape[1:]))


def _split_views(x: jax.Array, group: Group, what: str) -> jax.Array:
    """(V*B, ...) -> (V, B, ...) with a clear error when V does not divide the batch."""
    v = group.order
    if x.ndim < 2:
        raise ValueError(f"{what} expects at least 2 dimensions (V*B, ...); got shape {x.shape}")
    if x.shape[0] % v:
        raise ValueError(
            f"{what}: the batch axis ({x.shape[0]}) is not a multiple of the {v} views "
            f"of {group.name.upper()}; expected views stacked view-major as (V*B, ...)"
        )
    return x.reshape((v, x.shape[0] // v, *x.shape[1:]))


def _check_nhwc(x: jax.Array, what: str, square: bool = True) -> None:
    if x.ndim != 4:
        raise ValueError(f"{what} expects an NHWC array; got shape {x.shape}")
    if square and x.shape[1] != x.shape[2]:
        raise ValueError(
            f"{what} needs square maps so that 90-degree rotations keep the grid; "
            f"got {x.shape[1]}x{x.shape[2]} (shape {x.shape})"
        )


def view_kernels(kernel: jax.Array, group: str | Group) -> list[jax.Array]:
    """A convolution kernel ``(kh, kw, C, F)`` as each view sees the untransformed input: ``conv(g . x, k)`` is
    ``g . conv(x, g**-1 . k)`` for a square kernel of odd size with "SAME" padding and stride 1, so view ``v``'s
    maps are those of kernel ``v`` of this list on the input itself, transformed by ``g_v``."""
    g = get_group(group)
    if kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 == 0:
        raise ValueError(f"view kernels need a square kernel of odd size, got {kernel.shape[:2]}")
    return [g.act(int(g.inverse[v]), kernel, axes=(0, 1)) for v in range(g.order)]


def unfold_views(x: jax.Array, group: str | Group) -> jax.Array:
    """``(B,H,W,V*C) -> (V*B,H,W,C)``: block ``v`` of the channels (maps computed with :func:`view_kernels`) is
    transformed by ``g_v`` and becomes view ``v``; the result is what :func:`group_slice` and the convolutions
    would have given, to the convolutions' rounding."""
    g = get_group(group)
    _check_nhwc(x, f"{g.name}_unfold_views")
    if x.shape[-1] % g.order:
        raise ValueError(f"unfold_views: {x.shape[-1]} channels do not split into {g.order} views")
    c = x.shape[-1] // g.order
    return stack_views([g.act(v, x[..., v * c : (v + 1) * c], axes=(1, 2)) for v in range(g.order)])


def group_slice(x: jax.Array, group: str | Group) -> jax.Array:
    """Stacks the ``V`` transformed copies of ``x``: ``(B,H,W,C) -> (V*B,H,W,C)``.

    View ``v`` (rows ``v*B`` to ``v*B + B - 1``) is ``group.act(v, x)``.
    """
    g = get_group(group)
    _check_nhwc(x, f"{g.name}_slice")
    if _is_half(x):
        return _slice_half(x, g)
    return _slice_values(x, g)


def _slice_values(x: jax.Array, g: Group) -> jax.Array:
    return stack_views([g.act(v, x, axes=(1, 2)) for v in range(g.order)])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _slice_half(x: jax.Array, g: Group) -> jax.Array:
    return _on_bits(lambda u: _slice_values(u, g), x)


def _slice_half_fwd(x: jax.Array, g: Group) -> tuple[jax.Array, None]:
    return _slice_half(x, g), None


def _slice_half_bwd(g: Group, _: None, ct: jax.Array) -> tuple[jax.Array]:
    y = _split_views(ct, g, f"{g.name}_slice")
    terms = _on_bits(lambda u: jnp.stack([g.act(int(g.inverse[v]), u[v], axes=(1, 2)) for v in range(g.order)]), y)
    return (_sum_terms(terms),)


_slice_half.defvjp(_slice_half_fwd, _slice_half_bwd)


def permute_views(x: jax.Array, group: str | Group, a: int) -> jax.Array:
    """The action of element ``a`` on stacked views: view ``g`` of the result is view ``g . a`` of ``x``.

    This is how every op here transforms when its input image is transformed
    by ``a``.  It is a permutation of rows, so it is exact.  Works on numpy and JAX arrays.
    """
    g = get_group(group)
    y = _split_views(x, g, "permute_views")
    xp: Any = np if isinstance(x, np.ndarray) else jnp
    y = xp.stack([y[g.compose(v, a)] for v in range(g.order)])
    return y.reshape(x.shape)


def _roll_values(x: jax.Array, g: Group, transform: bool) -> jax.Array:
    y = x.reshape((g.order, x.shape[0] // g.order, *x.shape[1:]))
    blocks = []
    for h in range(g.order):
        block = jnp.stack([y[g.compose(h, v)] for v in range(g.order)])
        if transform:
            # y has axes (V, B, H, W, C): the spatial axes are 2 and 3.
            block = g.act(int(g.inverse[h]), block, axes=(2, 3))
        blocks.append(block)
    out = jnp.concatenate(blocks, axis=-1)
    return out.reshape((*x.shape[:-1], g.order * x.shape[-1]))


def _unroll_terms(ct: jax.Array, g: Group, transform: bool) -> jax.Array:
    """The roll's transpose before its sum: ``(V*B, ..., V*F) -> (V, V*B, ..., F)``.

    Term ``h`` of view ``u`` is block ``h`` of view ``h**-1 . u`` (transformed back by ``h``): the one
    place where the roll copied view ``u``'s features into block ``h``.
    """
    v = g.order
    f = ct.shape[-1] // v
    y = ct.reshape((v, ct.shape[0] // v, *ct.shape[1:-1], v, f))
    terms = []
    for h in range(v):
        hinv = int(g.inverse[h])
        term = jnp.stack([y[g.compose(hinv, u), ..., h, :] for u in range(v)])
        if transform:
            term = g.act(h, term, axes=(2, 3))
        terms.append(term)
    return jnp.stack(terms).reshape((v, *ct.shape[:-1], f))


def _on_bits(f, x: jax.Array) -> jax.Array:
    """``f`` (a pure permutation of elements) applied to the bit patterns of the 16-bit floats ``x``: XLA:CPU
    moves 16-bit floats element by element through float conversions, and 16-bit integers as they are."""
    u = jax.lax.bitcast_convert_type(x, jnp.uint16)
    return jax.lax.bitcast_convert_type(f(u), x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _roll_half(x: jax.Array, g: Group, transform: bool) -> jax.Array:
    """The roll of a 16-bit float array, moved as bits; its gradient sums the roll's copies in float32."""
    return _on_bits(lambda u: _roll_values(u, g, transform), x)


def _roll_half_fwd(x: jax.Array, g: Group, transform: bool) -> tuple[jax.Array, None]:
    return _roll_half(x, g, transform), None


def _sum_terms(terms: jax.Array) -> jax.Array:
    """``(V, ...)`` 16-bit terms summed in float32 in the fixed order ``V-1, ..., 0`` (the order the Pallas
    kernels' gradients use too), rounded once to the terms' dtype."""
    acc = terms[-1].astype(jnp.float32)
    for i in reversed(range(terms.shape[0] - 1)):
        acc = acc + terms[i].astype(jnp.float32)
    return acc.astype(terms.dtype)


def _roll_half_bwd(g: Group, transform: bool, _: None, ct: jax.Array) -> tuple[jax.Array]:
    return (_sum_terms(_on_bits(lambda u: _unroll_terms(u, g, transform), ct)),)


_roll_half.defvjp(_roll_half_fwd, _roll_half_bwd)


def _is_half(x: jax.Array) -> bool:
    return jnp.issubdtype(x.dtype, jnp.floating) and x.dtype.itemsize == 2


def _roll(x: jax.Array, g: Group, transform: bool, what: str) -> jax.Array:
    _split_views(x, g, what)
    if _is_half(x):
        return _roll_half(x, g, transform)
    return _roll_values(x, g, transform)


def group_roll(x: jax.Array, group: str | Group) -> jax.Array:
    """Dense roll: ``(V*B, ..., F) -> (V*B, ..., V*F)``.

    For view ``g``, channel block ``h`` holds the features of view ``h . g``
    (for C4: view ``i``, block ``k`` holds view ``(i + k) mod 4``).  Nothing is
    transformed spatially; use :func:`group_conv_roll` for feature maps.
    This is the reference; ``deepsea_kernels.roll`` is a fused Pallas kernel of it.
    """
    g = get_group(group)
    return _roll(x, g, False, f"{g.name}_roll")


def group_conv_roll(x: jax.Array, group: str | Group) -> jax.Array:
    """Convolutional roll: ``(V*B,H,W,C) -> (V*B,H,W,V*C)``, maps aligned to each view's frame.

    For view ``g``, channel block ``h`` holds the maps of view ``h . g``
    transformed by ``h**-1``; for C4, view ``i``'s block ``k`` is view
    ``(i + k) mod 4`` rotated by ``-k * 90`` degrees.  Maps must be square.
    This is the reference; ``deepsea_kernels.conv_roll`` is a fused Pallas kernel of it.
    """
    g = get_group(group)
    what = f"{g.name}_conv_roll"
    _check_nhwc(x, what)
    return _roll(x, g, True, what)


def _view_max(y: jax.Array) -> jax.Array:
    return jnp.max(y, axis=0)


def _sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Batcher's odd-even merge sort: compare-exchange pairs ``(i, j)`` sorting ``n = 2**k`` values."""
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return tuple(pairs)


def _view_sum(y: jax.Array) -> jax.Array:
    """Sums ``y`` of shape (V, ...) over views, bit-identically for every order of the views.

    Floating-point addition is not associative, and XLA contracts a producer's
    multiply into the first add (a fused multiply-add rounds its operands
    differently when they are swapped), so a plain sum of permuted views can
    differ in the last bit.  Sorting the V values of each feature first, with
    a sorting network of elementwise min/max, makes the sum a function of the
    set of values alone (any permutation of the views gives the same bits),
    and leaves no multiply next to an add for the compiler to contract.  It
    fuses into one elementwise pass.
    """
    vals = [y[i] for i in range(y.shape[0])]
    for i, j in _sorting_network(len(vals)):
        vals[i], vals[j] = jnp.minimum(vals[i], vals[j]), jnp.maximum(vals[i], vals[j])
    total = vals[0]
    for v in vals[1:]:
        total = total + v
    return total


def group_pool(
    x: jax.Array,
    group: str | Group,
    mode: PoolMode = "mean",
    eps: float = DEFAULT_RMS_EPS,
) -> jax.Array:
    """Pools over views: ``(V*B, ...) -> (B, ...)``.

    ``mode`` is ``"mean"``, ``"max"`` or ``"rms"`` (``sqrt(mean(x**2) + eps)``).
    The result is bitwise invariant to permuting the views by any group element.
    The mean and RMS are accumulated in at least float32 and returned in the input dtype.
    """
    g = get_group(group)
    return pool_stack(_split_views(x, g, f"{g.name}_pool"), mode, eps)


def pool_stack(y: jax.Array, mode: PoolMode = "mean", eps: float = DEFAULT_RMS_EPS) -> jax.Array:
    """Pools a stack ``(V, ...) -> (...)`` over its first axis as :func:`group_pool` pools views: the mean and RMS
    accumulated in at least float32, returned in the input dtype, bitwise invariant to any order of the ``V``
    entries (``V`` a power of two: the sorting network's)."""
    n = y.shape[0]
    if n & (n - 1) or n == 0:
        raise ValueError(f"pooling sorts the {n} entries with a network for powers of two; got {n}")
    if mode == "max":
        return _view_max(y)
    if mode == "mean":
        acc = jnp.promote_types(y.dtype, jnp.float32)
        return (_view_sum(y.astype(acc)) / jnp.asarray(n, acc)).astype(y.dtype)
    if mode == "rms":
        acc = jnp.promote_types(y.dtype, jnp.float32)
        z = y.astype(acc)
        ms = _view_sum(z * z) / jnp.asarray(n, acc)
        return jnp.sqrt(ms + jnp.asarray(eps, acc)).astype(y.dtype)
    raise ValueError(f"unknown pooling mode {mode!r}; expected 'mean', 'max' or 'rms'")


def cyclic_slice(x: jax.Array) -> jax.Array:
    """``(B,H,W,C) -> (4B,H,W,C)``: view ``k`` is ``x`` rotated by ``k * 90`` degrees."""
    return group_slice(x, C4)


def dihedral_slice(x: jax.Array) -> jax.Array:
    """``(B,H,W,C) -> (8B,H,W,C)``: the 4 rotations of ``x``, then the 4 rotations of its mirror."""
    return group_slice(x, D4)


def cyclic_roll(x: jax.Array) -> jax.Array:
    """``(4B,F) -> (4B,4F)``: for view ``i``, block ``k`` holds view ``(i + k) mod 4``."""
    return group_roll(x, C4)


def dihedral_roll(x: jax.Array) -> jax.Array:
    """``(8B,F) -> (8B,8F)``: for view ``g``, block ``h`` holds view ``h . g``."""
    return group_roll(x, D4)


def cyclic_conv_roll(x: jax.Array) -> jax.Array:
    """``(4B,H,W,C) -> (4B,H,W,4C)``, each block rotated into the view's frame."""
    return group_conv_roll(x, C4)


def dihedral_conv_roll(x: jax.Array) -> jax.Array:
    """``(8B,H,W,C) -> (8B,H,W,8C)``: block ``h`` of view ``g`` is view ``h . g`` transformed by ``h**-1``."""
    return group_conv_roll(x, D4)


def cyclic_pool(x: jax.Array, mode: PoolMode = "mean", eps: float = DEFAULT_RMS_EPS) -> jax.Array:
    """``(4B, ...) -> (B, ...)``, pooling the 4 views with ``mode``."""
    return group_pool(x, C4, mode, eps)


def dihedral_pool(x: jax.Array, mode: PoolMode = "mean", eps: float = DEFAULT_RMS_EPS) -> jax.Array:
    """``(8B, ...) -> (B, ...)``, pooling the 8 views with ``mode``."""
    return group_pool(x, D4, mode, eps)


def pooling_is_symmetric(
    size: int,
    window: int,
    stride: int,
    padding: str | tuple[int, int] = "VALID",
) -> bool:
    """Whether a pooling (or strided convolution) grid on ``size`` pixels is mirror-symmetric.

    Rotating or mirroring the input permutes the pooling windows only when the
    first window starts as far outside the map as the last one ends; otherwise
    the rotated views' maps are misaligned by a pixel and a conv roll stacks
    maps that do not correspond.  ``padding`` is ``"VALID"``, ``"SAME"`` (XLA's
    convention) or explicit ``(low, high)``.  For 3x3 stride-2 VALID pooling the
    symmetric sizes are the odd ones.
    """
    lo, hi = pad_amounts(size, window, stride, padding)
    out = (size + lo + hi - window) // stride + 1
    if out < 1:
        raise ValueError(f"a {window}-wide window does not fit a map of {size} pixels")
    last_end = -lo + (out - 1) * stride + window - 1
    return lo == last_end - (size - 1)


def pad_amounts(size: int, window: int, stride: int, padding: str | tuple[int, int]) -> tuple[int, int]:
    """The ``(low, high)`` padding of one axis for ``"VALID"``, ``"SAME"`` (XLA's convention) or explicit pads."""
    if not isinstance(padding, str):
        return padding
    if padding.upper() == "VALID":
        return 0, 0
    if padding.upper() == "SAME":
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + window - size, 0)
        return total // 2, total - total // 2
    raise ValueError(f"unknown padding {padding!r}")
