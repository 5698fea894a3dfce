"""The dense roll (cyclic and dihedral) as fused Pallas kernels: reference, kernels, gradient.

- Reference: :func:`reference`, :func:`deepsea.ops.group_roll`.  ``x`` is ``(V*B, ..., F)`` view-major; the result
  is ``(V*B, ..., V*F)``, where view ``g``'s feature block ``h`` is view ``h.g`` (nothing is transformed).
- Kernels: :func:`deepsea_kernels.conv_roll.forward_kernel` and ``backward_kernel`` with every leading axis as rows,
  one pixel and no pixel table (the dense roll is the conv roll of 1x1 maps).
- Gradient: ``jax.custom_vjp``, bitwise equal to the reference's.
- Status: **interpret mode only**.  Compiled on an H100 it is bitwise equal to the reference when run alone, but
  in a whole C4 network a gradient upstream of it came out wrong, so :func:`roll` refuses compiled use until that
  is understood; the package does not export it.
"""

from __future__ import annotations

import functools

import jax

from deepsea.groups import Group, get_group
from deepsea.ops import group_roll as reference
from deepsea_kernels._blocks import block_elements, call_roll_kernel, interpret_default
from deepsea_kernels.conv_roll import backward_kernel, forward_kernel

__all__ = ["reference", "roll"]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _roll(x: jax.Array, group: Group, block: int, interpret: bool) -> jax.Array:
    v, f = group.order, x.shape[-1]
    length = x.size // v
    y = call_roll_kernel(forward_kernel, False, x.reshape(v, length), None, group, length, 1, f, block, interpret)
    return y.reshape(*x.shape[:-1], v * f)


def _roll_fwd(x, group, block, interpret):
    return _roll(x, group, block, interpret), None


def _roll_bwd(group, block, interpret, _, dy):
    v, f = group.order, dy.shape[-1] // group.order
    length = dy.size // v // v
    dx = call_roll_kernel(backward_kernel, True, dy.reshape(v, v * length), None, group, length, 1, f, block, interpret)
    return (dx.reshape(*dy.shape[:-1], f),)


_roll.defvjp(_roll_fwd, _roll_bwd)


def roll(x: jax.Array, group: str | Group, block: int | None = None, interpret: bool | None = None) -> jax.Array:
    """The fused dense roll ``(V*B,...,F) -> (V*B,...,V*F)`` in interpret mode, bitwise equal to :func:`reference`.

    Raises NotImplementedError for compiled use (``interpret=False``, or the default on a GPU): see the status.
    """
    g = get_group(group)
    jax.eval_shape(functools.partial(reference, group=g), x)  # the reference's checks, with its error messages
    interpret = interpret_default() if interpret is None else interpret
    if not interpret:
        raise NotImplementedError(
            "the compiled Pallas dense roll is disabled: inside a C4 network with a dense roll, a gradient upstream "
            "of it came out wrong on a GPU (cause not yet known). Use implementation='xla' (the default) for the "
            "dense roll, or interpret=True; the conv roll kernel is not affected"
        )
    block = block or block_elements(x.size // g.order, interpret)
    return _roll(x, g, int(block), interpret)
