"""oneDNN's time per convolution pass on a network's layer shapes, bfloat16 against float32 (issue 32: is there a
faster formulation of the kernel gradient where oneDNN picks jit_bf16?).

    .venv/bin/python tools/onednn_layer_times.py [--net ndsb_cpu|convroll4_cpu] [--batch 128] [--reps 20] [--tune]

Prints, per layer and pass, oneDNN's implementation and its milliseconds per call (primitive only; the first call's
code generation excluded), and GFLOP/s; with ``--tune`` (``DEEPSEA_ONEDNN_TUNE=1``) the implementation is the one
timed fastest and every candidate's time follows. Run it alone on the cores.
"""

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from deepsea.backends import onednn

NETS = {}
NETS["ndsb_cpu"] = [
    (47, 1, 16),
    (47, 16, 16),
    (23, 16, 32),
    (23, 32, 32),
    (11, 32, 64),
    (11, 64, 64),
    (5, 64, 128),
    (5, 128, 128),
]  # (size, input channels, output channels)
NETS["convroll4_cpu"] = [  # convroll4 at 47x47, width 0.5 (the rolls stack four views' channels)
    (47, 1, 16),
    (47, 16, 8),
    (23, 32, 16),
    (23, 32, 32),
    (11, 64, 32),
    (11, 64, 64),
    (5, 128, 64),
    (5, 128, 128),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--net", choices=sorted(NETS), default="ndsb_cpu")
    p.add_argument("--tune", action="store_true", help="choose each implementation by timing oneDNN's candidates")
    args = p.parse_args()
    os.environ["DEEPSEA_ONEDNN_TUNE"] = "1" if args.tune else "0"
    if not onednn.available():
        raise SystemExit(f"oneDNN is not available: {onednn.unavailable_reason()}")
    rng = np.random.default_rng(0)
    print(f"{'pass':55s} {'implementation':50s} {'ms':>7s} {'GFLOP/s':>8s}")
    for dtype in (jnp.bfloat16, jnp.float32):
        for size, c, f in NETS[args.net]:
            x = jnp.asarray(rng.normal(size=(args.batch, size, size, c)), dtype)
            k = jnp.asarray(rng.normal(size=(3, 3, c, f)) * 0.1, jnp.float32)
            g = jnp.asarray(rng.normal(size=(args.batch, size, size, f)), dtype)

            def passes(x, k, g):
                y, vjp = jax.vjp(onednn.conv, x, k)
                return y, vjp(g)

            fn = jax.jit(passes)
            jax.block_until_ready(fn(x, k, g))
            onednn.primitive_times(reset=True)
            for _ in range(args.reps):
                jax.block_until_ready(fn(x, k, g))
            flop = 2 * args.batch * size * size * c * f * 9
            for r in onednn.primitive_times(reset=True):
                ms = r["exec_ms"] / r["calls"]
                print(f"{r['key']:55s} {r['impl']:50s} {ms:7.3f} {flop / ms / 1e6:8.0f}")
                for name, cand_ms in r["candidates"].items():
                    print(f"{'':57s}{name:48s} {cand_ms:7.3f} {flop / cand_ms / 1e6:8.0f}")


if __name__ == "__main__":
    main()
