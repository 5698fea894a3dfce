"""Exact group-equivariant operations on NHWC arrays: slice, roll and pool.

Views are stacked view-major on the batch axis: an array of ``V * B`` rows holds
view ``v`` of image ``b`` at row ``v * B + b``, where the views are numbered as
the elements of the group (:mod:`deepsea.groups`).

All operations are reshapes, flips, transposes and concatenations, so they are
exact (bit for bit) for every dtype, differentiable, and ``jit``/``vmap``-able.
Pooling sums the views in sorted order, which makes the mean and RMS bitwise
invariant to any permutation of the views, not merely invariant up to rounding.

The key identity: for view ``g`` and block ``h``, :func:`group_conv_roll`
takes the maps of view ``h . g`` and transforms them by ``h**-1``.  Applied to
the output of :func:`group_slice`, every block of view ``g`` is then exactly
``g`` applied to the input, and transforming the input by any ``a`` permutes
the rolled views as ``g -> g . a``.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp

from deepsea import onednn
from deepsea.groups import C4, D4, Group, get_group

__all__ = [
    "Implementation",
    "MaxPoolImplementation",
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
    "max_pool",
    "permute_views",
    "pooling_is_symmetric",
]

PoolMode = Literal["mean", "max", "rms"]

DEFAULT_RMS_EPS = 1e-12


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


def group_slice(x: jax.Array, group: str | Group) -> jax.Array:
    """Stacks the ``V`` transformed copies of ``x``: ``(B,H,W,C) -> (V*B,H,W,C)``.

    View ``v`` (rows ``v*B`` to ``v*B + B - 1``) is ``group.act(v, x)``.
    """
    g = get_group(group)
    _check_nhwc(x, f"{g.name}_slice")
    return jnp.concatenate([g.act(v, x, axes=(1, 2)) for v in range(g.order)], axis=0)


def permute_views(x: jax.Array, group: str | Group, a: int) -> jax.Array:
    """The action of element ``a`` on stacked views: view ``g`` of the result is view ``g . a`` of ``x``.

    This is how every op here transforms when its input image is transformed
    by ``a``.  It is a permutation of rows, so it is exact.
    """
    g = get_group(group)
    y = _split_views(x, g, "permute_views")
    y = jnp.stack([y[g.compose(v, a)] for v in range(g.order)])
    return y.reshape(x.shape)


Implementation = Literal["xla", "pallas"]
MaxPoolImplementation = Literal["auto", "slices", "reduce_window", "onednn"]


def _roll(x: jax.Array, g: Group, transform: bool, what: str) -> jax.Array:
    y = _split_views(x, g, what)
    blocks = []
    for h in range(g.order):
        block = jnp.stack([y[g.compose(h, v)] for v in range(g.order)])
        if transform:
            # y has axes (V, B, H, W, C): the spatial axes are 2 and 3.
            block = g.act(int(g.inverse[h]), block, axes=(2, 3))
        blocks.append(block)
    out = jnp.concatenate(blocks, axis=-1)
    return out.reshape((*x.shape[:-1], g.order * x.shape[-1]))


def _check_implementation(implementation: str) -> None:
    if implementation not in ("xla", "pallas"):
        raise ValueError(f"unknown implementation {implementation!r}; expected 'xla' or 'pallas'")


def group_roll(x: jax.Array, group: str | Group, implementation: Implementation = "xla") -> jax.Array:
    """Dense roll: ``(V*B, ..., F) -> (V*B, ..., V*F)``.

    For view ``g``, channel block ``h`` holds the features of view ``h . g``
    (for C4: view ``i``, block ``k`` holds view ``(i + k) mod 4``).  Nothing is
    transformed spatially; use :func:`group_conv_roll` for feature maps.
    ``implementation``: ``"xla"`` (transposes; the default) or ``"pallas"``
    (the fused kernels of ``kernels/roll.py``; interpret mode off-GPU).  Both
    give bitwise equal results and gradients (tested for float32, bfloat16, float16).
    """
    g = get_group(group)
    what = f"{g.name}_roll"
    _check_implementation(implementation)
    _split_views(x, g, what)
    if implementation == "pallas":
        from deepsea_kernels import roll

        return roll(x, g)
    return _roll(x, g, False, what)


def group_conv_roll(x: jax.Array, group: str | Group, implementation: Implementation = "xla") -> jax.Array:
    """Convolutional roll: ``(V*B,H,W,C) -> (V*B,H,W,V*C)``, maps aligned to each view's frame.

    For view ``g``, channel block ``h`` holds the maps of view ``h . g``
    transformed by ``h**-1``; for C4, view ``i``'s block ``k`` is view
    ``(i + k) mod 4`` rotated by ``-k * 90`` degrees.  Maps must be square.
    ``implementation``: ``"xla"`` (the default) or ``"pallas"``
    (``kernels/conv_roll.py``); both give bitwise equal results and gradients.
    """
    g = get_group(group)
    what = f"{g.name}_conv_roll"
    _check_nhwc(x, what)
    _check_implementation(implementation)
    _split_views(x, g, what)
    if implementation == "pallas":
        from deepsea_kernels import conv_roll

        return conv_roll(x, g)
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
    RMS is accumulated in at least float32 and returned in the input dtype.
    """
    g = get_group(group)
    y = _split_views(x, g, f"{g.name}_pool")
    if mode == "max":
        return _view_max(y)
    if mode == "mean":
        return _view_sum(y) / jnp.asarray(g.order, x.dtype)
    if mode == "rms":
        acc = jnp.promote_types(x.dtype, jnp.float32)
        y = y.astype(acc)
        ms = _view_sum(y * y) / jnp.asarray(g.order, acc)
        return jnp.sqrt(ms + jnp.asarray(eps, acc)).astype(x.dtype)
    raise ValueError(f"unknown pooling mode {mode!r}; expected 'mean', 'max' or 'rms'")


def cyclic_slice(x: jax.Array) -> jax.Array:
    """``(B,H,W,C) -> (4B,H,W,C)``: view ``k`` is ``x`` rotated by ``k * 90`` degrees."""
    return group_slice(x, C4)


def dihedral_slice(x: jax.Array) -> jax.Array:
    """``(B,H,W,C) -> (8B,H,W,C)``: the 4 rotations of ``x``, then the 4 rotations of its mirror."""
    return group_slice(x, D4)


def cyclic_roll(x: jax.Array, implementation: Implementation = "xla") -> jax.Array:
    """``(4B,F) -> (4B,4F)``: for view ``i``, block ``k`` holds view ``(i + k) mod 4``."""
    return group_roll(x, C4, implementation)


def dihedral_roll(x: jax.Array, implementation: Implementation = "xla") -> jax.Array:
    """``(8B,F) -> (8B,8F)``: for view ``g``, block ``h`` holds view ``h . g``."""
    return group_roll(x, D4, implementation)


def cyclic_conv_roll(x: jax.Array, implementation: Implementation = "xla") -> jax.Array:
    """``(4B,H,W,C) -> (4B,H,W,4C)``, each block rotated into the view's frame."""
    return group_conv_roll(x, C4, implementation)


def dihedral_conv_roll(x: jax.Array, implementation: Implementation = "xla") -> jax.Array:
    """``(8B,H,W,C) -> (8B,H,W,8C)``: block ``h`` of view ``g`` is view ``h . g`` transformed by ``h**-1``."""
    return group_conv_roll(x, D4, implementation)


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
    lo, hi = _pad_amounts(size, window, stride, padding)
    out = (size + lo + hi - window) // stride + 1
    if out < 1:
        raise ValueError(f"a {window}-wide window does not fit a map of {size} pixels")
    last_end = -lo + (out - 1) * stride + window - 1
    return lo == last_end - (size - 1)


def _pad_amounts(size: int, window: int, stride: int, padding: str | tuple[int, int]) -> tuple[int, int]:
    if not isinstance(padding, str):
        return padding
    if padding.upper() == "VALID":
        return 0, 0
    if padding.upper() == "SAME":
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + window - size, 0)
        return total // 2, total - total // 2
    raise ValueError(f"unknown padding {padding!r}")


def max_pool(
    x: jax.Array,
    window: int = 3,
    stride: int = 2,
    padding: str | tuple[int, int] = "VALID",
    implementation: MaxPoolImplementation = "auto",
) -> jax.Array:
    """Max pooling of ``(N, H, W, C)`` maps over ``window x window`` windows every ``stride`` pixels.

    ``"onednn"`` is oneDNN's max pooling and its gradient (:func:`deepsea.onednn.max_pool`): the value and
    gradient of ``"reduce_window"``, the convroll4 training step 1.14x as fast as with ``"slices"`` on 2 CPU
    cores (``deepsea bench experiments/convroll4.py --compare model.max_pool_impl=slices``).  ``"auto"`` (the
    default) is ``"onednn"`` for float32 maps where :func:`deepsea.onednn.available`, else ``"slices"``.

    ``"slices"`` takes the maximum of ``window`` strided slices
    along the height, then along the width.  The forward result equals
    ``"reduce_window"`` (``lax.reduce_window``, what ``flax.linen.max_pool``
    runs) bit for bit; its gradient is the same away from ties (at a tie it is
    split between the tied inputs instead of given to the first).  On the CPU
    the backward pass is 3-7x faster than ``reduce_window``'s select-and-scatter
    (forward+backward on 128x47x47x8: 8.7 vs 30.1 ms; the CPU-sized convroll4
    training step 9% faster: ``deepsea bench ... --set model.max_pool_impl=reduce_window``).
    """
    if implementation == "auto":
        implementation = "onednn" if x.dtype == jnp.float32 and x.ndim == 4 and onednn.available() else "slices"
    if implementation == "onednn":
        pads = tuple(_pad_amounts(x.shape[1 + i], window, stride, padding) for i in range(2))
        if min(x.shape[1 + i] + sum(pads[i]) for i in range(2)) < window:
            raise ValueError(f"a {window}-wide window does not fit a map of {x.shape[1]}x{x.shape[2]} pixels")
        return onednn.max_pool(x, (window, window), (stride, stride), pads)
    if implementation == "reduce_window":
        pads = [
            (0, 0),
            _pad_amounts(x.shape[1], window, stride, padding),
            _pad_amounts(x.shape[2], window, stride, padding),
            (0, 0),
        ]
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1), pads)
    if implementation != "slices":
        raise ValueError(
            f"unknown max_pool implementation {implementation!r}; "
            "expected 'auto', 'slices', 'reduce_window' or 'onednn'"
        )
    for axis in (1, 2):
        lo, hi = _pad_amounts(x.shape[axis], window, stride, padding)
        if lo or hi:
            pad = [(0, 0)] * x.ndim
            pad[axis] = (lo, hi)
            x = jnp.pad(x, pad, constant_values=-jnp.inf)
        out = (x.shape[axis] - window) // stride + 1
        if out < 1:
            raise ValueError(f"a {window}-wide window does not fit a map of {x.shape[axis]} pixels")
        parts = [jax.lax.slice_in_dim(x, i, i + (out - 1) * stride + 1, stride, axis=axis) for i in range(window)]
        y = parts[0]
        for p in parts[1:]:
            y = jnp.where(y >= p, y, p)  # max whose gradient is one select, not maximum's tie-splitting divide
        x = y
    return x
