"""Fused Pallas kernels for the convolutional roll (cyclic and dihedral), with their gradient.

- Reference: :func:`deepsea.ops.group_conv_roll` with ``implementation="xla"``.
  ``x`` is ``(V*B, H, W, C)`` view-major; the result is ``(V*B, H, W, V*C)``,
  where view ``g``'s channel block ``h`` is view ``h.g`` transformed by ``h**-1``.
- Kernels: :func:`deepsea_kernels._gather.forward_kernel` (each input element
  read once, written to its ``V`` transformed places) and ``backward_kernel``
  (the ``V`` inverse-transformed cotangents of each input element summed in one
  pass), here with :func:`destinations`, the pixel permutation of each ``h**-1``.
- Gradient: ``jax.custom_vjp`` (:func:`_conv_roll_bwd`), bitwise equal to the reference's.
- Block size: :func:`deepsea_kernels._blocks.block_elements`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from deepsea.groups import Group, get_group
from deepsea_kernels._blocks import block_elements, call_roll_kernel, interpret_default

__all__ = ["conv_roll", "destinations"]


@functools.lru_cache(maxsize=64)
def destinations(group: Group, height: int, width: int) -> np.ndarray:
    """``(V, H*W)`` int32: ``[h, p]`` is where input pixel ``p`` lands in ``group.act(h**-1, map)``."""
    tables = []
    for h in range(group.order):
        source = np.asarray(group.act(int(group.inverse[h]), np.arange(height * width).reshape(height, width), (0, 1)))
        tables.append(np.argsort(source.ravel()))  # source[q] = p  ->  destination[p] = q
    return np.stack(tables).astype(np.int32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _conv_roll(x: jax.Array, group: Group, block: int, interpret: bool) -> jax.Array:
    v = group.order
    n, h, w, c = x.shape
    length = n // v * h * w * c
    dest = jnp.asarray(destinations(group, h, w))
    y = call_roll_kernel(False, x.reshape(v, length), dest, group, length, h * w, c, block, interpret)
    return y.reshape(n, h, w, v * c)


def _conv_roll_fwd(x, group, block, interpret):
    return _conv_roll(x, group, block, interpret), None


def _conv_roll_bwd(group, block, interpret, _, dy):
    v = group.order
    n, h, w, vc = dy.shape
    c = vc // v
    length = n // v * h * w * c
    dest = jnp.asarray(destinations(group, h, w))
    dx = call_roll_kernel(True, dy.reshape(v, v * length), dest, group, length, h * w, c, block, interpret)
    return (dx.reshape(n, h, w, c),)


_conv_roll.defvjp(_conv_roll_fwd, _conv_roll_bwd)


def conv_roll(x: jax.Array, group: str | Group, block: int | None = None, interpret: bool | None = None) -> jax.Array:
    """The Pallas conv roll ``(V*B,H,W,C) -> (V*B,H,W,V*C)``; differentiable (its own backward kernel).

    Shapes are checked by :func:`deepsea.ops.group_conv_roll`, which calls this with ``implementation="pallas"``.
    ``block``: input elements per program (a power of two; default :func:`block_elements`).
    """
    g = get_group(group)
    interpret = interpret_default() if interpret is None else interpret
    block = block or block_elements(x.size // g.order, interpret)
    return _conv_roll(x, g, int(block), interpret)
