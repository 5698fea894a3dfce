"""The ``deepsea`` command line: ``demo``, ``bench-ops``, ``bench-data``, ``make-synthetic``, ``preview``."""

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
    from deepsea import bench_data, bench_ops, demo

    parser = argparse.ArgumentParser(prog="deepsea", description="Exact rotation-symmetric convnets.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help=demo.__doc__.splitlines()[0])
    demo.add_arguments(p)
    p.set_defaults(func=demo.main_with_args)
    p = sub.add_parser("bench-ops", help=bench_ops.__doc__.splitlines()[0])
    bench_ops.add_arguments(p)
    p.set_defaults(func=bench_ops.main_with_args)
    p = sub.add_parser("bench-data", help=bench_data.__doc__.splitlines()[0])
    bench_data.add_arguments(p)
    p.set_defaults(func=bench_data.main_with_args)
    p = sub.add_parser("make-synthetic", help="write the generated plankton-like dataset to a folder")
    p.add_argument("out", help="folder to write <class>/<id>.jpg into")
    p.add_argument("--per-class", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_make_synthetic)
    p = sub.add_parser("preview", help="write a PNG grid of preprocessed and augmented images")
    p.add_argument("--data", default=None, help="labelled or flat image folder (default: synthetic)")
    p.add_argument("--out", default="preview.png")
    p.add_argument("--size", type=int, default=95)
    p.add_argument("--rescale", default="max_side:85", help="max_side:N, factor:F or none")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--augmented", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_preview)
    args = parser.parse_args(argv)
    from deepsea.data import BadImageError, FolderError

    try:
        args.func(args)
    except (FolderError, BadImageError) as e:
        print(f"deepsea {args.command}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _make_synthetic(args: argparse.Namespace) -> None:
    from deepsea.data.synthetic import make_synthetic

    out = make_synthetic(args.out, per_class=args.per_class, seed=args.seed)
    print(f"wrote {out}")


def parse_rescale(text: str):
    """``max_side:85``, ``factor:0.2`` or ``none`` -> :class:`~deepsea.data.Rescale`."""
    from deepsea.data import Rescale

    kind, _, value = text.partition(":")
    if kind == "none":
        return Rescale("none")
    try:
        return Rescale(kind, float(value))  # type: ignore[arg-type]
    except ValueError as e:
        raise SystemExit(f"bad --rescale {text!r}: {e}; expected max_side:N, factor:F or none") from None


def _preview(args: argparse.Namespace) -> None:
    from deepsea.data import Preprocess, scan_flat_folder, scan_labelled_folder
    from deepsea.data.preview import save_preview
    from deepsea.data.synthetic import default_synthetic_dir

    data = args.data or default_synthetic_dir()
    has_dirs = (
        any(os.path.isdir(os.path.join(data, e)) for e in os.listdir(data)) if os.path.isdir(data) else True
    )
    folder = scan_labelled_folder(data) if has_dirs else scan_flat_folder(data)
    pp = Preprocess(size=args.size, rescale=parse_rescale(args.rescale))
    out = save_preview(folder, args.out, pp, n_images=args.images, n_augmented=args.augmented, seed=args.seed)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
