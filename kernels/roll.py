"""Fused Pallas kernels for the dense roll (cyclic and dihedral), with their gradient.

Reference: :func:`deepsea.ops.group_roll` with ``implementation="xla"``.
Layout: ``x`` is ``(V*B, ..., F)`` view-major; the result is ``(V*B, ..., V*F)``
where view ``g``'s feature block ``h`` is view ``h.g`` (no spatial transform).

- Forward (:func:`_forward_kernel`): one program per (row block, feature block)
  reads the block of all ``V`` views once and writes it to its ``V`` places.
- Backward (:func:`_backward_kernel`): for each input view, the ``V`` output
  blocks that came from it summed in one pass, in the input dtype and in the
  order ``h = V-1 .. 0`` in which JAX's autodiff of the reference accumulates
  them, so both gradients are bitwise equal.
- Block size (:func:`block_shape`): up to 128 features and a power-of-two
  number of rows within :data:`kernels._blocks.DEFAULT_BLOCK_BYTES`.
"""

from __future__ import annotations

import functools
import math

import jax
from jax.experimental import pallas as pl

from deepsea.groups import Group, get_group
from deepsea_kernels._blocks import block_size, check_compilable, compiler_params, interpret_default, itemsize

__all__ = ["block_shape", "roll"]

MAX_BLOCK_FEATURES = 128


def block_shape(v: int, rows: int, features: int, dtype: object) -> tuple[int, int]:
    """(rows, features) per program: input (V rows) and output (V*V) blocks."""
    fb = block_size(features, 1, budget=MAX_BLOCK_FEATURES)
    rb = block_size(rows, v * (1 + v) * fb * itemsize(dtype))
    return rb, fb


def _forward_kernel(x_ref, o_ref, *, group: Group):
    # x_ref: (V, Rb, Fb); o_ref: (V, Rb, V, Fb)
    g = group
    for k in range(g.order):
        tile = x_ref[k]
        for h in range(g.order):
            o_ref[g.compose(int(g.inverse[h]), k), :, h, :] = tile


def _backward_kernel(dy_ref, dx_ref, *, group: Group):
    # dy_ref: (V, Rb, V, Fb); dx_ref: (V, Rb, Fb)
    g = group
    for k in range(g.order):
        acc = None
        for h in reversed(range(g.order)):
            term = dy_ref[g.compose(int(g.inverse[h]), k), :, h, :]
            acc = term if acc is None else acc + term
        dx_ref[k] = acc


def _call(kernel, x, in_block, out_block, out_shape, grid, interpret):
    def index(r, f, ndim):
        return (0, r) + (0,) * (ndim - 3) + (f,)

    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct(out_shape, x.dtype),
        grid=grid,
        in_specs=[pl.BlockSpec(in_block, lambda r, f: index(r, f, len(in_block)))],
        out_specs=pl.BlockSpec(out_block, lambda r, f: index(r, f, len(out_block))),
        interpret=interpret,
        compiler_params=None if interpret else compiler_params(),
    )(x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _roll(x: jax.Array, group: Group, block: tuple[int, int], interpret: bool) -> jax.Array:
    v = group.order
    rows, f = x.shape[0] // v * math.prod(x.shape[1:-1]), x.shape[-1]
    rb, fb = block
    y = _call(
        functools.partial(_forward_kernel, group=group),
        x.reshape(v, rows, f),
        (v, rb, fb),
        (v, rb, v, fb),
        (v, rows, v, f),
        (pl.cdiv(rows, rb), pl.cdiv(f, fb)),
        interpret,
    )
    return y.reshape(*x.shape[:-1], v * f)


def _roll_fwd(x, group, block, interpret):
    return _roll(x, group, block, interpret), None


def _roll_bwd(group, block, interpret, _, dy):
    v = group.order
    f = dy.shape[-1] // v
    rows = dy.shape[0] // v * math.prod(dy.shape[1:-1])
    rb, fb = block
    dx = _call(
        functools.partial(_backward_kernel, group=group),
        dy.reshape(v, rows, v, f),
        (v, rb, v, fb),
        (v, rb, fb),
        (v, rows, f),
        (pl.cdiv(rows, rb), pl.cdiv(f, fb)),
        interpret,
    )
    return (dx.reshape(*dy.shape[:-1], f),)


_roll.defvjp(_roll_fwd, _roll_bwd)


def roll(
    x: jax.Array, group: str | Group, block: tuple[int, int] | None = None, interpret: bool | None = None
) -> jax.Array:
    """The Pallas dense roll ``(V*B,...,F) -> (V*B,...,V*F)``; differentiable (its own backward kernel).

    Shapes are checked by :func:`deepsea.ops.group_roll`, which calls this with ``implementation="pallas"``.
    """
    g = get_group(group)
    rows = x.shape[0] // g.order * math.prod(x.shape[1:-1])
    block = block or block_shape(g.order, rows, x.shape[-1], x.dtype)
    interpret = interpret_default() if interpret is None else interpret
    check_compilable("dense roll", interpret)
    return _roll(x, g, (int(block[0]), int(block[1])), interpret)
