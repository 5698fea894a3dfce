"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import jax

__all__ = ["format_table", "fwd_bwd", "time_call"]


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


def format_table(rows: Sequence[dict[str, object]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A fixed-width text table; ``columns`` are ``(title, key, format spec)``, e.g. ``("fwd ms", "fwd", "9.3f")``."""

    def width(spec: str) -> int:
        return int("".join(c for c in spec.split(".")[0] if c.isdigit()) or 0)

    head = " ".join(
        f"{title:>{width(spec)}}" if i else f"{title:<{width(spec)}}" for i, (title, _, spec) in enumerate(columns)
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            " ".join(f"{r[key]!s:{spec}}" if spec.endswith("s") else f"{r[key]:{spec}}" for _, key, spec in columns)
        )
    return "\n".join(lines)
