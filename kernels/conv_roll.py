"""Fused Pallas kernels for the convolutional roll (cyclic and dihedral), with their gradient.

Reference: :func:`deepsea.ops.group_conv_roll` with ``implementation="xla"``.
Layout: ``x`` is ``(V*B, H, W, C)`` view-major; the result is ``(V*B, H, W, V*C)``
where view ``g``'s channel block ``h`` is view ``h.g`` transformed by ``h**-1``.

- Forward (:func:`_forward_kernel`): one program per (image, channel block) reads
  the block of all ``V`` views once and writes each view's tile to its ``V``
  transformed places.
- Backward (:func:`_backward_kernel`): the roll is a permutation, so its
  gradient gathers, for each input view ``k``, the ``V`` output blocks that came
  from it, transforms each back and sums them in one pass, in the input dtype
  and in the order ``h = V-1 .. 0``: the order in which JAX's autodiff of the
  reference accumulates them, so both gradients are bitwise equal.
- Block size (:func:`block_channels`): whole maps, a power-of-two number of
  channels per program within :data:`kernels._blocks.DEFAULT_BLOCK_BYTES`.
"""

from __future__ import annotations

import functools

import jax
from jax.experimental import pallas as pl

from deepsea.groups import Group, get_group
from deepsea_kernels._blocks import block_size, check_compilable, compiler_params, interpret_default, itemsize

__all__ = ["block_channels", "conv_roll"]


def block_channels(v: int, h: int, w: int, dtype: object) -> int:
    """Channels per program: input (V maps) and output (V*V maps) blocks of ``h x w`` pixels."""
    return block_size(channels=1 << 30, bytes_per_channel=v * (1 + v) * h * w * itemsize(dtype))


def _act(g: Group, i: int, tile: jax.Array) -> jax.Array:
    return g.act(i, tile, axes=(0, 1))  # tile: (H, W, Cb)


def _forward_kernel(x_ref, o_ref, *, group: Group):
    # x_ref: (V, 1, H, W, Cb); o_ref: (V, 1, H, W, V, Cb)
    g = group
    for k in range(g.order):
        tile = x_ref[k, 0]
        for h in range(g.order):
            hinv = int(g.inverse[h])
            o_ref[g.compose(hinv, k), 0, :, :, h, :] = _act(g, hinv, tile)


def _backward_kernel(dy_ref, dx_ref, *, group: Group):
    # dy_ref: (V, 1, H, W, V, Cb); dx_ref: (V, 1, H, W, Cb)
    g = group
    for k in range(g.order):
        acc = None
        for h in reversed(range(g.order)):
            view = g.compose(int(g.inverse[h]), k)
            term = _act(g, h, dy_ref[view, 0, :, :, h, :])
            acc = term if acc is None else acc + term
        dx_ref[k, 0] = acc


def _call(kernel, x: jax.Array, in_block, out_block, out_shape, grid, interpret: bool) -> jax.Array:
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct(out_shape, x.dtype),
        grid=grid,
        in_specs=[pl.BlockSpec(in_block, lambda b, c: (0, b, 0, 0) + (0,) * (len(in_block) - 5) + (c,))],
        out_specs=pl.BlockSpec(out_block, lambda b, c: (0, b, 0, 0) + (0,) * (len(out_block) - 5) + (c,)),
        interpret=interpret,
        compiler_params=None if interpret else compiler_params(),
    )(x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _conv_roll(x: jax.Array, group: Group, block: int, interpret: bool) -> jax.Array:
    v = group.order
    n, hh, ww, c = x.shape
    b = n // v
    grid = (b, pl.cdiv(c, block))
    y = _call(
        functools.partial(_forward_kernel, group=group),
        x.reshape(v, b, hh, ww, c),
        (v, 1, hh, ww, block),
        (v, 1, hh, ww, v, block),
        (v, b, hh, ww, v, c),
        grid,
        interpret,
    )
    return y.reshape(n, hh, ww, v * c)


def _conv_roll_fwd(x, group, block, interpret):
    return _conv_roll(x, group, block, interpret), None


def _conv_roll_bwd(group, block, interpret, _, dy):
    v = group.order
    n, hh, ww, vc = dy.shape
    b, c = n // v, vc // v
    dx = _call(
        functools.partial(_backward_kernel, group=group),
        dy.reshape(v, b, hh, ww, v, c),
        (v, 1, hh, ww, v, block),
        (v, 1, hh, ww, block),
        (v, b, hh, ww, c),
        (b, pl.cdiv(c, block)),
        interpret,
    )
    return (dx.reshape(n, hh, ww, c),)


_conv_roll.defvjp(_conv_roll_fwd, _conv_roll_bwd)


def conv_roll(x: jax.Array, group: str | Group, block: int | None = None, interpret: bool | None = None) -> jax.Array:
    """The Pallas conv roll ``(V*B,H,W,C) -> (V*B,H,W,V*C)``; differentiable (its own backward kernel).

    Shapes are checked by :func:`deepsea.ops.group_conv_roll`, which calls this with ``implementation="pallas"``.
    """
    g = get_group(group)
    block = block or block_channels(g.order, x.shape[1], x.shape[2], x.dtype)
    interpret = interpret_default() if interpret is None else interpret
    check_compilable("conv roll", interpret)
    return _conv_roll(x, g, int(block), interpret)
