"""Fused Pallas kernels for the dense roll (cyclic and dihedral), with their gradient.

- Reference: :func:`deepsea.ops.group_roll` with ``implementation="xla"``.
  ``x`` is ``(V*B, ..., F)`` view-major; the result is ``(V*B, ..., V*F)``,
  where view ``g``'s feature block ``h`` is view ``h.g`` (nothing is transformed).
- Kernels: :func:`deepsea_kernels._gather.forward_kernel` (each input element
  read once, written to its ``V`` places) and ``backward_kernel`` (the ``V``
  cotangents of each input element summed in one pass), with every leading
  axis as rows and no pixel permutation.
- Gradient: ``jax.custom_vjp`` (:func:`_roll_bwd`), bitwise equal to the reference's.
- Block size: :func:`deepsea_kernels._blocks.block_elements`.
- Status: interpret mode only.  Compiled on an H100 it is bitwise equal to the
  reference when run alone, but in a whole C4 network a gradient upstream of it
  came out wrong, so compiled use raises until that is understood.
"""

from __future__ import annotations

import functools

import jax

from deepsea.groups import Group, get_group
from deepsea_kernels._blocks import block_elements, call_roll_kernel, interpret_default

__all__ = ["roll"]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _roll(x: jax.Array, group: Group, block: int, interpret: bool) -> jax.Array:
    v, f = group.order, x.shape[-1]
    length = x.size // v
    y = call_roll_kernel(False, x.reshape(v, length), None, group, length, 1, f, block, interpret)
    return y.reshape(*x.shape[:-1], v * f)


def _roll_fwd(x, group, block, interpret):
    return _roll(x, group, block, interpret), None


def _roll_bwd(group, block, interpret, _, dy):
    v, f = group.order, dy.shape[-1] // group.order
    length = dy.size // v // v
    dx = call_roll_kernel(True, dy.reshape(v, v * length), None, group, length, 1, f, block, interpret)
    return (dx.reshape(*dy.shape[:-1], f),)


_roll.defvjp(_roll_fwd, _roll_bwd)


def roll(x: jax.Array, group: str | Group, block: int | None = None, interpret: bool | None = None) -> jax.Array:
    """The Pallas dense roll ``(V*B,...,F) -> (V*B,...,V*F)``; differentiable (its own backward kernel).

    Shapes are checked by :func:`deepsea.ops.group_roll`, which calls this with ``implementation="pallas"``.
    ``block``: input elements per program (a power of two; default :func:`block_elements`).
    """
    g = get_group(group)
    interpret = interpret_default() if interpret is None else interpret
    if not interpret:
        raise NotImplementedError(
            "the compiled Pallas dense roll is disabled: alone it is bitwise equal to the reference on an H100, "
            "but inside convroll4 (C4, dense_roll=True) the bias gradient of the maxout layer before it came out "
            "wrong (70% off; JAX 0.11.2, not yet understood). Use implementation='xla' (the default) for the "
            "dense roll, or interpret=True; the conv roll kernel is not affected"
        )
    block = block or block_elements(x.size // g.order, interpret)
    return _roll(x, g, int(block), interpret)
