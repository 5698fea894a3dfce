"""Shared pieces of the roll kernels: the interpret switch, the block size, the Triton parameters, the call."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from deepsea.groups import Group

GPU_BLOCK = 1024
"""Elements per program on a GPU: a power of two (Triton's requirement), 8 per thread of 4 warps."""

MAX_INTERPRET_BLOCK = 1 << 22
"""In interpret mode every program copies its whole (full-array) blocks, so one big block is fastest."""


def interpret_default() -> bool:
    """Interpret mode everywhere but on a GPU (Pallas' Triton backend needs one)."""
    return jax.default_backend() != "gpu"


def block_elements(length: int, interpret: bool) -> int:
    """Input elements per program: :data:`GPU_BLOCK` compiled; in interpret mode the next power of two
    above ``length`` (one program), capped at :data:`MAX_INTERPRET_BLOCK`."""
    if not interpret:
        return GPU_BLOCK
    return int(min(MAX_INTERPRET_BLOCK, 2 ** math.ceil(math.log2(max(1, length)))))


def compiler_params() -> pltriton.CompilerParams:
    """Pins Pallas' Triton backend on GPUs (JAX 0.10.2 would otherwise pick it by a config flag; newer JAX
    moves GPU kernels to Mosaic GPU, which is why ``pyproject.toml`` pins JAX)."""
    return pltriton.CompilerParams(num_warps=4, num_stages=1)


def call_roll_kernel(
    kernel: Callable[..., None],
    backward: bool,
    x: jax.Array,
    dest: jax.Array | None,
    group: Group,
    length: int,
    pixels: int,
    channels: int,
    block: int,
    interpret: bool,
) -> jax.Array:
    """Runs ``kernel``: forward (``x``: ``(V, length)`` -> ``(V, V * length)``) or backward (the reverse)."""
    v = group.order
    out_len = length if backward else v * length
    inputs = [x] if dest is None else [x, dest]
    whole = lambda a: pl.BlockSpec(a.shape, lambda t: (0,) * a.ndim)  # noqa: E731  (refs are pointers on a GPU)
    return pl.pallas_call(
        functools.partial(kernel, group=group, length=length, pixels=pixels, channels=channels, block=block),
        out_shape=jax.ShapeDtypeStruct((v, out_len), x.dtype),
        grid=(pl.cdiv(length, block),),
        in_specs=[whole(a) for a in inputs],
        out_specs=pl.BlockSpec((v, out_len), lambda t: (0, 0)),
        interpret=interpret,
        compiler_params=None if interpret else compiler_params(),
    )(*inputs)
