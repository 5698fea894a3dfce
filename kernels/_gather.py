"""The two kernels behind both rolls, written as gathers and scatters of power-of-two element blocks.

Both rolls map element ``(view k, row r, pixel p, channel c)`` of the input
to ``(view h**-1 . k, row r, pixel dest[h][p], block h, channel c)`` of the
output, for every group element ``h``; the dense roll is the case of one pixel
with ``dest`` the identity.  Arrays are flattened per view, so a program owns
``block`` consecutive input elements (a power of two, as Pallas' Triton backend
requires; the last program's lanes wrap around to the start and recompute
elements another program writes too, with the same values, so no masks are
needed).

- :func:`forward_kernel` reads its input elements of every view once and
  scatters each to its ``V`` places.
- :func:`backward_kernel` gathers, for each input element, the ``V`` output
  cotangents that came from it and sums them in the order ``h = V-1 .. 0`` in
  the input dtype: the order in which JAX's autodiff of the reference
  accumulates them, so both gradients are bitwise equal.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from deepsea.groups import Group


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
    # x_ref: (V, length); [dest_ref: (V, pixels)]; o_ref: (V, V * length)
    *dest, o_ref = refs
    dest_ref = dest[0] if dest else None
    e, row, p, ch = _positions(block, length, pixels, channels)
    for k in range(group.order):
        vals = x_ref[_lanes(block, k), e]
        for h in range(group.order):
            idx = _out_index(dest_ref, h, row, p, ch, group=group, pixels=pixels, channels=channels, block=block)
            o_ref[_lanes(block, group.compose(int(group.inverse[h]), k)), idx] = vals


def backward_kernel(dy_ref, *refs, group: Group, length: int, pixels: int, channels: int, block: int):
    # dy_ref: (V, V * length); [dest_ref: (V, pixels)]; dx_ref: (V, length)
    *dest, dx_ref = refs
    dest_ref = dest[0] if dest else None
    e, row, p, ch = _positions(block, length, pixels, channels)
    for k in range(group.order):
        acc = None
        for h in reversed(range(group.order)):
            idx = _out_index(dest_ref, h, row, p, ch, group=group, pixels=pixels, channels=channels, block=block)
            term = dy_ref[_lanes(block, group.compose(int(group.inverse[h]), k)), idx]
            acc = term if acc is None else acc + term
        dx_ref[_lanes(block, k), e] = acc
