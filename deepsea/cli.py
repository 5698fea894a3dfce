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
    p = sub.add_parser("train", help="train an experiment (experiments/<name>.py or a path)")
    p.add_argument("experiment")
    p.add_argument("--data", default=None, help="labelled image folder (default: the experiment's, else synthetic)")
    p.add_argument("--workdir", default=None, help="run folder (default: runs/<experiment name>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--small", action="store_true", help="the experiment's small-run configuration")
    p.add_argument(
        "--distributed",
        action="store_true",
        help="multi-host: call jax.distributed.initialize() (coordinator from the environment, e.g. SLURM)",
    )
    p.set_defaults(func=_train)
    p = sub.add_parser("evaluate", help="log loss, accuracy and top-5 on a run's validation split")
    p.add_argument("--workdir", required=True)
    p.add_argument("--checkpoint", default="best", choices=["best", "latest"])
    p.set_defaults(func=_evaluate)
    p = sub.add_parser("predict", help="write a Kaggle NDSB submission CSV for a folder of images")
    p.add_argument("--workdir", required=True)
    p.add_argument("--images", required=True, help="flat folder of images (the NDSB test layout)")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--checkpoint", default="best", choices=["best", "latest"])
    p.set_defaults(func=_predict)
    p = sub.add_parser("params", help="print a model's parameter count per layer")
    p.add_argument("experiment")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--classes", type=int, default=121)
    p.set_defaults(func=_params)
    args = parser.parse_args(argv)
    from deepsea.data import BadImageError, FolderError

    try:
        args.func(args)
    except (FolderError, BadImageError, FileNotFoundError) as e:
        print(f"deepsea {args.command}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _make_synthetic(args: argparse.Namespace) -> None:
    from deepsea.data.synthetic import make_synthetic

    out = make_synthetic(args.out, per_class=args.per_class, seed=args.seed)
    print(f"wrote {out}")


def _config(args: argparse.Namespace):
    from deepsea.configs import apply_overrides, load_experiment

    config = load_experiment(args.experiment, small=getattr(args, "small", False))
    apply_overrides(config, args.set)
    if getattr(args, "data", None):
        config.data.path = args.data
    return config


def _train(args: argparse.Namespace) -> None:
    if args.distributed:
        import jax

        jax.distributed.initialize()
    from deepsea.train import TrainingDiverged, train

    config = _config(args)
    workdir = args.workdir or os.path.join("runs", config.name)
    print(f"training {config.name} in {workdir} on {config.data.path or 'the synthetic dataset'}")
    try:
        result = train(config, workdir)
    except TrainingDiverged as e:
        print(f"deepsea train: {e}", file=sys.stderr)
        raise SystemExit(3) from None
    best = result["best"]
    print(
        f"done: best validation log loss {best['log_loss']:.4f} (accuracy {best['accuracy']:.4f}, "
        f"top-5 {best['top5']:.4f}) at step {best['step']}; plots in {os.path.join(workdir, 'metrics.png')}"
    )


def _evaluate(args: argparse.Namespace) -> None:
    from deepsea.data import eval_batches, load_run_data, scan_labelled_folder
    from deepsea.data.pipeline import load_json
    from deepsea.train import evaluate, predict_probs, restore_run

    model, variables, pp, _classes, config = restore_run(args.workdir, args.checkpoint)
    split = load_json(os.path.join(args.workdir, "split.json"))
    folder = scan_labelled_folder(split["root"])
    _, val_idx, _ = load_run_data(args.workdir, folder)
    labels = folder.labels[val_idx]
    batches = eval_batches([folder.paths[i] for i in val_idx], labels, pp, config.train.eval_batch_size)
    res = evaluate(predict_probs(model, variables, batches), labels)
    print(
        f"{args.workdir} ({args.checkpoint}), {len(labels)} validation images: log loss {res['log_loss']:.4f}, "
        f"accuracy {res['accuracy']:.4f}, top-5 {res['top5']:.4f}"
    )


def _predict(args: argparse.Namespace) -> None:
    import csv

    from deepsea.data import eval_batches, scan_flat_folder
    from deepsea.train import predict_probs, restore_run

    model, variables, pp, classes, config = restore_run(args.workdir, args.checkpoint)
    folder = scan_flat_folder(args.images)
    probs = predict_probs(model, variables, eval_batches(folder.paths, None, pp, config.train.eval_batch_size))
    tmp = f"{args.out}.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", *classes])
        for name, row in zip(folder.names, probs, strict=True):
            w.writerow([name, *(f"{p:.6g}" for p in row / row.sum())])
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: {len(folder)} images x {len(classes)} classes")


def _params(args: argparse.Namespace) -> None:
    import jax
    import jax.numpy as jnp

    from deepsea.models import build_model, count_params

    config = _config(args)
    model = build_model(config.model, args.classes)
    x = jnp.zeros((1, config.data.size, config.data.size, 1))
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x, raw_size=jnp.ones((1, 2))))["params"]
    counts = count_params(params)
    for name, n in counts.items():
        leaves = jax.tree_util.tree_leaves_with_path(params[name])
        shapes = ", ".join(f"{jax.tree_util.keystr(p)}{tuple(v.shape)}" for p, v in leaves)
        print(f"{name:<12} {n:>12,}  {shapes}")
    print(f"{'total':<12} {sum(counts.values()):>12,}")


def _preview(args: argparse.Namespace) -> None:
    from deepsea.data import Preprocess, Rescale, scan_flat_folder, scan_labelled_folder
    from deepsea.data.preview import save_preview
    from deepsea.data.synthetic import default_synthetic_dir

    data = args.data or default_synthetic_dir()
    has_dirs = any(os.path.isdir(os.path.join(data, e)) for e in os.listdir(data)) if os.path.isdir(data) else True
    folder = scan_labelled_folder(data) if has_dirs else scan_flat_folder(data)
    pp = Preprocess(size=args.size, rescale=Rescale.parse(args.rescale))
    out = save_preview(folder, args.out, pp, n_images=args.images, n_augmented=args.augmented, seed=args.seed)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
