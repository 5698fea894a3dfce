"""oneDNN max pooling (3x3, stride 2, forward and gradient, bfloat16) on maps of few channels, as they are and with
k images side by side in the channels (issue 27: the thin first stages of rolled networks).

    .venv/bin/python tools/onednn_pool_times.py [--reps 15]

Prints milliseconds per call (median) for each map shape and fold k; k = 1 is the maps as they are, and the row
marked ``max_pool`` is what :func:`deepsea.backends.onednn.max_pool` chooses. Run it alone on the cores.
"""

import argparse

import jax
import jax.numpy as jnp

from deepsea.allocator import keep_freed_memory
from deepsea.backends import onednn
from deepsea.tools.timing import time_call

SHAPES = [(512, 47, 47, 4), (512, 47, 47, 6), (512, 47, 47, 7), (512, 23, 23, 13), (128, 47, 47, 16)]
FOLDS = (1, 4, 8, 16)
POOL = ((3, 3), (2, 2), ((0, 0), (0, 0)))


def _folded(x: jax.Array, k: int) -> jax.Array:
    n, h, w, c = x.shape
    y = onednn._max_pool(x.reshape(n // k, k, h, w, c).transpose(0, 2, 3, 1, 4).reshape(n // k, h, w, k * c), *POOL)
    ho, wo = y.shape[1:3]
    return y.reshape(n // k, ho, wo, k, c).transpose(0, 3, 1, 2, 4).reshape(n, ho, wo, c)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args()
    keep_freed_memory()
    if not onednn.available():
        raise SystemExit(f"oneDNN is not available: {onednn.unavailable_reason()}")
    for shape in SHAPES:
        x = jax.random.normal(jax.random.key(0), shape, jnp.bfloat16)
        chosen = onednn._pool_batch_fold(shape[0], shape[3])
        for k in sorted({*FOLDS, chosen}):
            if shape[0] % k or (k > 1 and k * shape[3] > 256):
                continue
            pool = lambda x, k=k: _folded(x, k)  # noqa: E731
            g = jnp.ones(jax.eval_shape(pool, x).shape, x.dtype)
            both = jax.jit(lambda x, g, pool=pool: jax.vjp(pool, x)[1](g)[0])
            mark = "  <- max_pool" if k == chosen else ""
            forward = 1e3 * time_call(jax.jit(pool), x, repeats=args.reps)
            forward_gradient = 1e3 * time_call(both, x, g, repeats=args.reps)
            print(
                f"{'x'.join(map(str, shape)):>16} k={k:<2} forward {forward:6.2f} ms  "
                f"forward+gradient {forward_gradient:6.2f} ms{mark}",
                flush=True,
            )


if __name__ == "__main__":
    main()
