"""The ``deepsea`` command line: ``deepsea demo``, ``deepsea bench-ops``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

__all__ = ["CPU_XLA_FLAGS", "main"]

CPU_XLA_FLAGS = "--xla_cpu_experimental_ynn_fusion_type="
"""XLA flags the command line sets on the CPU unless ``XLA_FLAGS`` is already set.

YNNPACK fusions off: 3x3 convolutions' forward+backward ran 2-4x faster at the
convroll4 sizes (``deepsea bench-ops`` with and without it).  Library imports
never change flags; only the command line does.
"""


def _set_xla_flags() -> None:
    if "XLA_FLAGS" not in os.environ and os.environ.get("DEEPSEA_DEFAULT_XLA", "1") != "0":
        os.environ["XLA_FLAGS"] = CPU_XLA_FLAGS


def main(argv: Sequence[str] | None = None) -> None:
    _set_xla_flags()  # before the first computation initialises the backend
    from deepsea import bench_ops, demo

    parser = argparse.ArgumentParser(prog="deepsea", description="Exact rotation-symmetric convnets.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help=demo.__doc__.splitlines()[0])
    demo.add_arguments(p)
    p.set_defaults(func=demo.main_with_args)
    p = sub.add_parser("bench-ops", help=bench_ops.__doc__.splitlines()[0])
    bench_ops.add_arguments(p)
    p.set_defaults(func=bench_ops.main_with_args)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
