"""The convolutional roll (cyclic and dihedral) as fused Pallas kernels: reference, kernels, gradient.

- Reference: :func:`reference`, :func:`deepsea.ops.group_conv_roll`.  ``x`` is ``(V*B, H, W, C)`` view-major; the
  result is ``(V*B, H, W, V*C)``, where view ``g``'s channel block ``h`` is view ``h.g`` transformed by ``h**-1``.
- Kernels: :func:`forward_kernel` reads each block of input elements of every view once and scatters each to its
  ``V`` transformed places; :func:`backward_kernel` gathers the ``V`` inverse-transformed cotangents of each input
  element and sums them in one pass.  Both move element ``(view k, row r, pixel p, channel c)`` of the input to
  ``(view h**-1 . k, row r, pixel dest[h][p], block h, channel c)``, with :func:`destinations` the pixel
  permutation of each ``h**-1``; the dense roll (``roll.py``) is the case of one pixel and no table.
  A program owns ``block`` consecutive input elements of every view (a power of two, as Pallas' Triton backend
  requires; the last program's lanes wrap around to the start and recompute elements another program writes too,
  with the same values, so no masks are needed).
- Gradient: ``jax.custom_vjp``; the backward kernel sums the cotangents in the order ``h = V-1 .. 0``, the order in
  which JAX's autodiff of the float32 reference accumulates them (16-bit floats: in float32, rounded once, as the
  reference's own gradient does), so both gradients are bitwise equal.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from deepsea.groups import Group, get_group
from deepsea.ops import group_conv_roll as reference
from deepsea_kernels._blocks import block_elements, call_roll_kernel, interpret_default

__all__ = ["backward_kernel", "conv_roll", "destinations", "forward_kernel", "reference"]


@functools.lru_cache(maxsize=64)
def destinations(group: Group, height: int, width: int) -> np.ndarray:
    """``(V, H*W)`` int32: ``[h, p]`` is where input pixel ``p`` lands in ``group.act(h**-1, map)``."""
    tables = []
    for h in range(group.order):
        source = np.asarray(group.act(int(group.inverse[h]), np.arange(height * width).reshape(height, width), (0, 1)))
        tables.append(np.argsort(source.ravel()))  # source[q] = p  ->  destination[p] = q
    return np.stack(tables).astype(np.int32)


def _lanes(block: int, value: int) -> jax.Array:
    return jnp.full((block,), value, jnp.int32)


def _positions(block: int, length: int, pixels: int, channels: int):
    """This program's flat input positions (wrapping at ``length``) as (row, pixel, channel)."""
    e = (pl.program_id(0) * block + jax.lax.broadcasted_iota(jnp.int32, (block,), 0)) % length
    return e, e // (pixels * channels), (e // channels) % pixels, e % channels


def _out_index(dest_ref, h, row, p, ch, *, group: Group, pixels: int, channels: int, block: int) -> jax.Array:
    q = p if dest_ref is None else dest_ref[_lanes(block, h), p]
    return ((row * pixels + q) * group.order + h) * channels + ch


def forward_kernel(x_ref, *refs, group: Group, length: int, pixels: int, channels: int, block: int):
    """``x_ref (V, length)``, [``dest_ref (V, pixels)``] -> ``o_ref (V, V * length)``."""
    *dest, o_ref = refs
    dest_ref = dest[0] if dest else None
    e, row, p, ch = _positions(block, length, pixels, channels)
    for k in range(group.order):
        vals = x_ref[_lanes(block, k), e]
        for h in range(group.order):
            idx = _out_index(dest_ref, h, row, p, ch, group=group, pixels=pixels, channels=channels, block=block)
            o_ref[_lanes(block, group.compose(int(group.inverse[h]), k)), idx] = vals


def backward_kernel(dy_ref, *refs, group: Group, length: int, pixels: int, channels: int, block: int):
    """``dy_ref (V, V * length)``, [``dest_ref (V, pixels)``] -> ``dx_ref (V, length)``."""
    *dest, dx_ref = refs
    dest_ref = dest[0] if dest else None
    e, row, p, ch = _positions(block, length, pixels, channels)
    acc_dtype = jnp.float32 if dx_ref.dtype.itemsize == 2 else dx_ref.dtype  # as deepsea.ops' 16-bit gradients
    for k in range(group.order):
        acc = None
        for h in reversed(range(group.order)):
            idx = _out_index(dest_ref, h, row, p, ch, group=group, pixels=pixels, channels=channels, block=block)
            term = dy_ref[_lanes(block, group.compose(int(group.inverse[h]), k)), idx].astype(acc_dtype)
            acc = term if acc is None else acc + term
        dx_ref[_lanes(block, k), e] = acc.astype(dx_ref.dtype)


def _call(backward: bool, x: jax.Array, group: Group, h: int, w: int, c: int, block: int, interpret: bool):
    length = x.size // group.order // (group.order if backward else 1)
    dest = jnp.asarray(destinations(group, h, w))
    kernel = backward_kernel if backward else forward_kernel
    return call_roll_kernel(kernel, backward, x, dest, group, length, h * w, c, block, interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _conv_roll(x: jax.Array, group: Group, block: int, interpret: bool) -> jax.Array:
    n, h, w, c = x.shape
    y = _call(False, x.reshape(group.order, -1), group, h, w, c, block, interpret)
    return y.reshape(n, h, w, group.order * c)


def _conv_roll_fwd(x, group, block, interpret):
    return _conv_roll(x, group, block, interpret), None


def _conv_roll_bwd(group, block, interpret, _, dy):
    n, h, w, vc = dy.shape
    c = vc // group.order
    dx = _call(True, dy.reshape(group.order, -1), group, h, w, c, block, interpret)
    return (dx.reshape(n, h, w, c),)


_conv_roll.defvjp(_conv_roll_fwd, _conv_roll_bwd)


def conv_roll(x: jax.Array, group: str | Group, block: int | None = None, interpret: bool | None = None) -> jax.Array:
    """The fused conv roll ``(V*B,H,W,C) -> (V*B,H,W,V*C)``, bitwise equal to :func:`reference`, value and gradient.

    ``block``: input elements per program (a power of two; default :func:`deepsea_kernels._blocks.block_elements`).
    ``interpret``: Pallas' interpret mode (default: everywhere but on a GPU).
    """
    g = get_group(group)
    jax.eval_shape(functools.partial(reference, group=g), x)  # the reference's checks, with its error messages
    interpret = interpret_default() if interpret is None else interpret
    block = block or block_elements(x.size // g.order, interpret)
    return _conv_roll(x, g, int(block), interpret)
