"""Shared pieces of the roll kernels: the interpret switch and the channel block-size choice."""

from __future__ import annotations

import math
import os

import jax
import numpy as np
from jax.experimental.pallas import triton as pltriton

# A block of every view of one image's maps, for `block` channels, is read (and the rolled block,
# V times larger, written) per program.  The budget keeps input + output blocks of a program under
# this many bytes: on a GPU they are staged through registers and shared memory.
DEFAULT_BLOCK_BYTES = 192 * 1024


def compiler_params() -> pltriton.CompilerParams:
    """Pins Pallas' Triton backend on GPUs (JAX 0.10.2 would otherwise pick it by a config flag; newer JAX
    moves GPU kernels to Mosaic GPU, which is why ``pyproject.toml`` pins JAX).  Ignored in interpret mode."""
    return pltriton.CompilerParams(num_warps=4, num_stages=1)


def check_compilable(op: str, interpret: bool) -> None:
    """Compiled (non-interpret) kernels are not yet verified on a GPU: refuse them with a clear message.

    ``DEEPSEA_PALLAS_COMPILE=1`` lifts the guard, for trying them on a GPU machine.  Known obstacle: the
    Triton lowering wants power-of-two block sizes and has no ``rev`` (flip), so the conv roll's
    whole-map blocks (47x47, 23x23, ...) need a tiled, index-arithmetic rewrite before they compile.
    """
    if interpret or os.environ.get("DEEPSEA_PALLAS_COMPILE") == "1":
        return
    raise NotImplementedError(
        f"the Pallas {op} kernel runs in interpret mode only in this release (its GPU lowering is not verified "
        "yet); use implementation='xla' (the default), or pass interpret=True, or set DEEPSEA_PALLAS_COMPILE=1 "
        "to try compiling it"
    )


def interpret_default() -> bool:
    """Interpret mode everywhere but on a GPU (Pallas' Triton backend needs one)."""
    return jax.default_backend() != "gpu"


def block_size(channels: int, bytes_per_channel: int, budget: int = DEFAULT_BLOCK_BYTES) -> int:
    """The channels per block: the largest power of two (Triton wants them) that keeps the block in
    ``budget`` bytes, at least 1 and no more than the next power of two above ``channels``.  The last
    block may be partial: Pallas pads its reads and drops its out-of-range writes, and a roll never
    mixes channels, so padding never reaches a valid output."""
    fit = max(1, budget // max(1, bytes_per_channel))
    return int(min(2 ** int(math.log2(fit)), 2 ** math.ceil(math.log2(max(1, channels)))))


def itemsize(dtype: object) -> int:
    return int(np.dtype(dtype).itemsize)
