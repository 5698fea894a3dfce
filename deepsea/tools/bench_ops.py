"""Times each symmetry op at the sizes of the published convroll4 beside the layer that follows it.

Run ``deepsea bench-ops`` (or ``python -m deepsea.bench_ops``).  For every op
it prints the forward and forward+backward time, the same for the 3x3
convolution (or dense layer) that follows it in the network, and the ratio
op/layer: the share the symmetry costs at that point of the network.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from deepsea import ops
from deepsea.groups import get_group
from deepsea.tools import timing
from deepsea.tools.timing import fwd_bwd, time_call

__all__ = ["OpCase", "convroll4_cases", "run"]


@dataclasses.dataclass(frozen=True)
class OpCase:
    """One op at one place in the network, and the layer that consumes its output."""

    name: str
    op: Callable[[jax.Array], jax.Array]
    in_shape: tuple[int, ...]
    next_layer: str
    next_fn: Callable[[jax.Array, jax.Array], jax.Array]
    next_w_shape: tuple[int, ...]


def _conv(x: jax.Array, w: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _dense(x: jax.Array, w: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1) @ w


def convroll4_cases(batch: int = 32, group: str = "c4") -> list[OpCase]:
    """The ops of convroll4 (input 95, stages 95/47/23/11/5, channels 16/32/64/128 before each roll)."""
    g = get_group(group)
    v = g.order
    rows = v * batch
    cases = [
        OpCase(
            "slice 95x95x1",
            lambda x: ops.group_slice(x, g),
            (batch, 95, 95, 1),
            "conv 3x3 1->32 @95",
            _conv,
            (3, 3, 1, 32),
        )
    ]
    for size, c, nxt in ((47, 16, 64), (23, 32, 128), (11, 64, 256)):
        cases.append(
            OpCase(
                f"conv_roll {size}x{size}x{c}",
                lambda x: ops.group_conv_roll(x, g),
                (rows, size, size, c),
                f"conv 3x3 {v * c}->{nxt} @{size}",
                _conv,
                (3, 3, v * c, nxt),
            )
        )
    cases += [
        OpCase(
            "conv_roll 5x5x128",
            lambda x: ops.group_conv_roll(x, g),
            (rows, 5, 5, 128),
            f"maxout dense {25 * v * 128}->1024",
            _dense,
            (25 * v * 128, 1024),
        ),
        OpCase(
            "roll (dense) 512",
            lambda x: ops.group_roll(x, g),
            (rows, 512),
            f"maxout dense {v * 512}->1024",
            _dense,
            (v * 512, 1024),
        ),
        OpCase(
            "pool rms 512",
            lambda x: ops.group_pool(x, g, "rms"),
            (rows, 512),
            "maxout dense 512->1024",
            _dense,
            (512, 1024),
        ),
    ]
    return cases


def run(
    batch: int = 32, group: str = "c4", repeats: int = 10, dtype: str = "float32", seed: int = 0
) -> list[dict[str, object]]:
    """Times every case; returns one dict per op (times in milliseconds)."""
    rng = np.random.default_rng(seed)
    dt = jnp.dtype(dtype)
    rows = []
    for case in convroll4_cases(batch, group):
        x = jnp.asarray(rng.standard_normal(case.in_shape), dt)
        y = jax.eval_shape(case.op, x)
        ct = jnp.asarray(rng.standard_normal(y.shape), dt)
        w = jnp.asarray(rng.standard_normal(case.next_w_shape) * 0.05, dt)
        xn = jnp.asarray(rng.standard_normal(y.shape), dt)
        yn = jax.eval_shape(case.next_fn, xn, w)
        ctn = jnp.asarray(rng.standard_normal(yn.shape), dt)
        op_f = time_call(jax.jit(case.op), x, repeats=repeats)
        op_fb = time_call(fwd_bwd(case.op, 1), x, ct, repeats=repeats)
        nx_f = time_call(jax.jit(case.next_fn), xn, w, repeats=repeats)
        nx_fb = time_call(fwd_bwd(case.next_fn, 2), xn, w, ctn, repeats=repeats)
        rows.append(
            {
                "group": get_group(group).name,
                "op": case.name,
                "in_shape": list(case.in_shape),
                "out_shape": list(y.shape),
                "dtype": dt.name,
                "op_fwd_ms": op_f * 1e3,
                "op_fwdbwd_ms": op_fb * 1e3,
                "next_layer": case.next_layer,
                "next_fwd_ms": nx_f * 1e3,
                "next_fwdbwd_ms": nx_fb * 1e3,
                "ratio_fwd": op_f / nx_f,
                "ratio_fwdbwd": op_fb / nx_fb,
                "op_images_per_s_fwdbwd": batch / op_fb,
                "op_gb_per_s_fwd": (np.prod(y.shape) + np.prod(case.in_shape)) * dt.itemsize / op_f / 1e9,
            }
        )
    return rows


def format_table(rows: Sequence[dict[str, object]]) -> str:
    return timing.format_table(
        rows,
        [
            ("op", "op", "<22s"),
            ("fwd ms", "op_fwd_ms", "8.3f"),
            ("f+b ms", "op_fwdbwd_ms", "8.3f"),
            ("GB/s", "op_gb_per_s_fwd", "6.2f"),
            ("next layer", "next_layer", ">28s"),
            ("fwd ms", "next_fwd_ms", "8.3f"),
            ("f+b ms", "next_fwdbwd_ms", "8.3f"),
            ("fwd ratio", "ratio_fwd", "9.3f"),
            ("f+b ratio", "ratio_fwdbwd", "9.3f"),
        ],
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, default=32, help="images per batch (each with V views)")
    p.add_argument("--group", default="c4", help="c4 or d4")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--json", action="store_true", help="also print one JSON line per op")


def main_with_args(args: argparse.Namespace) -> None:
    print(
        f"# deepsea bench-ops: group={args.group} batch={args.batch} dtype={args.dtype} "
        f"backend={jax.default_backend()} jax={jax.__version__}"
    )
    rows = run(args.batch, args.group, args.repeats, args.dtype)
    print(format_table(rows))
    total_op = sum(r["op_fwdbwd_ms"] for r in rows)  # type: ignore[misc]
    total_next = sum(r["next_fwdbwd_ms"] for r in rows)  # type: ignore[misc]
    print(
        f"# all ops fwd+bwd: {total_op:.2f} ms = {total_op / total_next:.3f} x the layers after them "
        f"({args.batch / (total_op / 1e3):.0f} images/s through the ops alone)"
    )
    if args.json:
        for r in rows:
            print(json.dumps(r))
