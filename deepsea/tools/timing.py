"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax

__all__ = ["fwd_bwd", "time_call"]


def time_call(fn: Callable[..., object], *args: object, repeats: int) -> float:
    """Median wall time of ``fn(*args)`` in seconds, after compiling and one warm-up call."""
    jax.block_until_ready(fn(*args))
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fwd_bwd(fn: Callable[..., jax.Array], n_args: int) -> Callable[..., object]:
    """``(*args, cotangent) -> (fn(*args[:n_args]), vjp(cotangent))``, jitted."""

    def step(*args):
        y, vjp = jax.vjp(fn, *args[:n_args])
        return y, vjp(args[n_args].astype(y.dtype))

    return jax.jit(step)
