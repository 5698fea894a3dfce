"""Times the Pallas roll kernels against the XLA reference at convroll4's sizes, forward and backward.

Run ``deepsea bench-kernels`` (or ``python -m deepsea.bench_kernels``).  On a GPU
the kernels are compiled (Pallas' Triton backend); elsewhere they run in
interpret mode, which checks them but says nothing about their GPU speed.
Every row also checks that both implementations give bitwise equal outputs
and gradients.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from deepsea.groups import get_group
from deepsea.tools import bench_ops, timing
from deepsea.tools.timing import fwd_bwd, time_call

__all__ = ["run"]


def _cases(batch: int, v: int) -> list[tuple[str, str, tuple[int, ...]]]:
    rows = v * batch
    cases = [
        (f"conv_roll {s}x{s}x{c}", "conv_roll", (rows, s, s, c)) for s, c in ((47, 16), (23, 32), (11, 64), (5, 128))
    ]
    return [*cases, ("roll (dense) 512", "roll", (rows, 512))]


def run(batch: int = 32, group: str = "c4", repeats: int = 5, dtype: str = "float32") -> list[dict[str, object]]:
    """One dict per op: forward and forward+backward milliseconds of both implementations."""
    g = get_group(group)
    dt = jnp.dtype(dtype)
    rng = np.random.default_rng(0)
    rows = []
    from deepsea_kernels import conv_roll as conv_roll_kernel
    from deepsea_kernels._blocks import interpret_default
    from deepsea_kernels.conv_roll import reference as conv_roll_reference
    from deepsea_kernels.roll import reference as roll_reference
    from deepsea_kernels.roll import roll as roll_kernel

    implementations = {
        "conv_roll": (conv_roll_reference, conv_roll_kernel),
        "roll": (roll_reference, roll_kernel),
    }

    for name, op, shape in _cases(batch, g.order):
        if op == "roll" and not interpret_default():
            continue  # the compiled dense roll kernel is disabled (kernels/roll.py)
        fn, kernel = implementations[op]
        x = jnp.asarray(rng.standard_normal(shape), dt)
        y_shape = jax.eval_shape(lambda z, fn=fn: fn(z, g), x).shape
        ct = jnp.asarray(rng.standard_normal(y_shape), dt)
        row: dict[str, object] = {"group": g.name, "op": name, "in_shape": list(shape), "dtype": dt.name}
        outs = {}
        for impl, impl_fn in (("xla", fn), ("pallas", kernel)):
            f = lambda z, impl_fn=impl_fn: impl_fn(z, g)  # noqa: E731
            fb = fwd_bwd(f, 1)
            outs[impl] = fb(x, ct)
            row[f"{impl}_fwd_ms"] = time_call(jax.jit(f), x, repeats=repeats) * 1e3
            row[f"{impl}_fwdbwd_ms"] = time_call(fb, x, ct, repeats=repeats) * 1e3
        same = all(
            bool(jnp.array_equal(a, b))
            for a, b in zip(jax.tree.leaves(outs["xla"]), jax.tree.leaves(outs["pallas"]), strict=True)
        )
        row["bitwise_equal"] = same
        row["ratio_fwd"] = row["pallas_fwd_ms"] / row["xla_fwd_ms"]  # type: ignore[operator]
        row["ratio_fwdbwd"] = row["pallas_fwdbwd_ms"] / row["xla_fwdbwd_ms"]  # type: ignore[operator]
        moved = (int(np.prod(shape)) + int(np.prod(y_shape))) * dt.itemsize
        row["xla_gb_per_s_fwd"] = moved / row["xla_fwd_ms"] / 1e6  # type: ignore[operator]
        rows.append(row)
    return rows


def format_table(rows: Sequence[dict[str, object]]) -> str:
    return timing.format_table(
        rows,
        [
            ("op", "op", "<22s"),
            ("xla fwd", "xla_fwd_ms", "9.3f"),
            ("xla f+b", "xla_fwdbwd_ms", "9.3f"),
            ("pallas fwd", "pallas_fwd_ms", "11.3f"),
            ("pallas f+b", "pallas_fwdbwd_ms", "11.3f"),
            ("fwd ratio", "ratio_fwd", "9.2f"),
            ("f+b ratio", "ratio_fwdbwd", "9.2f"),
            ("equal", "bitwise_equal", ">6s"),
        ],
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    bench_ops.add_arguments(p)  # the same options: --batch, --group, --repeats, --dtype, --json


def main_with_args(args: argparse.Namespace) -> None:
    from deepsea_kernels._blocks import interpret_default

    mode = "interpret" if interpret_default() else "compiled"
    print(
        f"# deepsea bench-kernels: group={args.group} batch={args.batch} dtype={args.dtype} "
        f"backend={jax.default_backend()} pallas={mode} jax={jax.__version__} (times in ms; ratio = pallas/xla)"
    )
    rows = run(args.batch, args.group, args.repeats, args.dtype)
    print(format_table(rows))
    if mode == "interpret":
        print("# interpret mode: the kernels are checked, not timed for a GPU; GPU timings need a GPU machine")
    if args.json:
        for r in rows:
            print(json.dumps(r | {"pallas_mode": mode}))
