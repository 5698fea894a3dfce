"""XLA's compile seconds per program for the kind of program the test suite compiles most: a tiny rolled network's
initialisation and its loss gradient, under each set of XLA flags given (each in a fresh process, since XLA reads
its flags once).

    .venv/bin/python tools/compile_seconds.py ["FLAGS" ...] [--programs 8]

With no flags given: the suite's own (``tests/xla_flags.py``) against the same with the MLIR fusion emitters, the
command line's. Prints, per set of flags, the mean seconds per program of each kind. Run it alone on the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PROBE = r"""
import json, sys, time
import jax, jax.numpy as jnp
from deepsea import models

n = int(sys.argv[1])
inits, grads = [], []
for i in range(n):  # n different networks: nothing comes from a cache
    net = models.tiny_rollnet(symmetry="d4", stages=((4, 3), (8 + i,)), untied_biases=True)
    x = jnp.zeros((1, 23, 23, 1))
    shapes = jax.eval_shape(net.init, jax.random.key(0), x)
    loss = lambda p, x, net=net: jnp.sum(net.apply(p, x) ** 2)
    inits.append(jax.jit(net.init).lower(jax.random.key(0), x))
    grads.append(jax.jit(jax.grad(loss)).lower(shapes, x))
seconds = {}
for kind, lowered in (("init", inits), ("gradient", grads)):
    start = time.perf_counter()
    for program in lowered:
        program.compile()
    seconds[kind] = (time.perf_counter() - start) / n
print(json.dumps(seconds))
"""


def compile_seconds(flags: str, programs: int) -> dict[str, float]:
    """Mean compile seconds per program of each kind, in a fresh interpreter with ``XLA_FLAGS=flags``."""
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_ENABLE_COMPILATION_CACHE": "false"}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(programs)], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("flags", nargs="*", help="XLA_FLAGS values to compare (default: the suite's and the same "
                        "with the command line's fusion emitters)")  # fmt: skip
    parser.add_argument("--programs", type=int, default=8, help="networks compiled per kind (default 8)")
    args = parser.parse_args(argv)
    flag_sets = args.flags
    if not flag_sets:
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from xla_flags import SUITE_XLA_FLAGS

        flag_sets = [SUITE_XLA_FLAGS, SUITE_XLA_FLAGS.replace("use_fusion_emitters=false", "use_fusion_emitters=true")]
    for flags in flag_sets:
        start = time.perf_counter()
        seconds = compile_seconds(flags, args.programs)
        print(
            f"init {seconds['init']:.3f} s, gradient {seconds['gradient']:.3f} s per program "
            f"({time.perf_counter() - start:.0f} s in all)  XLA_FLAGS={flags!r}",
            flush=True,
        )


if __name__ == "__main__":
    main()
