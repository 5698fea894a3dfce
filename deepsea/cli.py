"""The ``deepsea`` command line: training, evaluation, prediction, ensembles, benchmarks and tools."""

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
    from deepsea import bench, bench_data, bench_kernels, bench_ops, demo

    parser = argparse.ArgumentParser(prog="deepsea", description="Exact rotation-symmetric convnets.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help=demo.__doc__.splitlines()[0])
    demo.add_arguments(p)
    p.set_defaults(func=demo.main_with_args)
    p = sub.add_parser("bench", help=bench.__doc__.splitlines()[0])
    bench.add_arguments(p)
    p.set_defaults(func=bench.main_with_args)
    p = sub.add_parser("bench-ops", help=bench_ops.__doc__.splitlines()[0])
    bench_ops.add_arguments(p)
    p.set_defaults(func=bench_ops.main_with_args)
    p = sub.add_parser("bench-kernels", help=bench_kernels.__doc__.splitlines()[0])
    bench_kernels.add_arguments(p)
    p.set_defaults(func=bench_kernels.main_with_args)
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
    p = sub.add_parser("bag", help="bagging: train K copies of an experiment on K different splits")
    p.add_argument("experiment")
    p.add_argument("-k", "--copies", type=int, default=3)
    p.add_argument("--data", default=None, help="labelled image folder (default: the experiment's, else synthetic)")
    p.add_argument("--workdir", default=None, help="prefix of the run folders (default: runs/<name>_bag); _0, _1, ...")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--small", action="store_true", help="the experiment's small-run configuration")
    p.set_defaults(func=_bag)
    p = sub.add_parser("evaluate", help="log loss, accuracy and top-5 on a run's validation split (and with TTA)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--checkpoint", default="best", choices=["best", "latest"])
    p.add_argument(
        "--tta", type=_tta_arg, default=0, help="also evaluate with N quasi-random test-time transforms, or 'tencrop'"
    )
    p.add_argument("--combine", default="mean", choices=["mean", "logits", "geometric"])
    p.add_argument(
        "--orbit-average",
        default=None,
        choices=["none", "c4", "d4"],
        help="evaluate with another exact orbit average than the run's model.orbit_average (an ablation)",
    )
    p.set_defaults(func=_evaluate)
    p = sub.add_parser("predict", help="write a Kaggle NDSB submission CSV for a folder of images")
    p.add_argument("--workdir", required=True)
    p.add_argument("--images", required=True, help="flat folder of images (the NDSB test layout)")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--checkpoint", default="best", choices=["best", "latest"])
    p.add_argument(
        "--tta",
        type=_tta_arg,
        default=0,
        help="average over N quasi-random test-time transforms (seed: 70), or 'tencrop'",
    )
    p.add_argument("--combine", default="mean", choices=["mean", "logits", "geometric"])
    p.add_argument("--skip-bad-images", action="store_true", help="skip (and list) unreadable images")
    p.set_defaults(func=_predict)
    p = sub.add_parser("ensemble", help="blend runs with weights fitted on their shared validation split")
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--checkpoint", default="best", choices=["best", "latest"])
    p.add_argument("--tta", type=_tta_arg, default=0, help="N quasi-random test-time transforms, or 'tencrop'")
    p.add_argument("--combine", default="mean", choices=["mean", "logits", "geometric"])
    p.add_argument("--uniform", action="store_true", help="equal weights (bagging: runs on different splits)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds for choosing the models")
    p.add_argument("--images", default=None, help="also write a blended submission for this folder")
    p.add_argument("--out", default="ensemble.csv")
    p.add_argument("--skip-bad-images", action="store_true", help="skip (and list) unreadable images")
    p.set_defaults(func=_ensemble)
    p = sub.add_parser("params", help="print a model's parameter count per layer")
    p.add_argument("experiment")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--classes", type=int, default=121)
    p.set_defaults(func=_params)
    args = parser.parse_args(argv)
    from deepsea.data import BadImageError, FolderError, RunDataMismatch

    try:
        args.func(args)
    except (FolderError, BadImageError, RunDataMismatch, FileNotFoundError) as e:
        print(f"deepsea {args.command}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _tta_arg(value: str) -> int | str:
    if value == "tencrop":
        return value
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a number of transforms >= 0 or 'tencrop', got {value!r}")
    return n


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


def _bag(args: argparse.Namespace) -> None:
    """Trains copy i with split seed and seed ``base + i`` into ``<prefix>_i`` (each resumes if killed)."""
    from deepsea.train import TrainingDiverged, train

    if args.copies < 1:
        raise SystemExit("deepsea bag: --copies must be at least 1")
    base = _config(args)
    prefix = args.workdir or os.path.join("runs", f"{base.name}_bag")
    runs = []
    for i in range(args.copies):
        config = _config(args)
        config.data.split_seed = base.data.split_seed + i
        config.seed = base.seed + i
        workdir = f"{prefix}_{i}"
        print(f"bag {i + 1}/{args.copies}: {config.name} with split seed {config.data.split_seed} in {workdir}")
        try:
            best = train(config, workdir)["best"]
        except TrainingDiverged as e:
            print(f"deepsea bag: {e}", file=sys.stderr)
            raise SystemExit(3) from None
        print(f"  best validation log loss {best['log_loss']:.4f} (accuracy {best['accuracy']:.4f}) on its own split")
        runs.append(workdir)
    print(f"average them on new images: deepsea ensemble {' '.join(runs)} --uniform --images DIR --out bag.csv")


def _run_validation(workdir: str) -> tuple[list[str], object, list[str]]:
    """A run's validation images and labels, read back against its data folder (classes must match)."""
    from deepsea.data import load_run_data, scan_labelled_folder
    from deepsea.data.pipeline import load_json

    split = load_json(os.path.join(workdir, "split.json"))
    folder = scan_labelled_folder(split["root"])
    _, val_idx, _ = load_run_data(workdir, folder)
    return [folder.paths[i] for i in val_idx], folder.labels[val_idx], list(folder.classes)


def _tta_ranges(config):
    """The default TTA ranges, capped at the run's training augmentation (``tta_ranges_for``)."""
    from deepsea.predict import tta_ranges_for
    from deepsea.train import augment_ranges

    return tta_ranges_for(augment_ranges(config.aug))


def _evaluate(args: argparse.Namespace) -> None:
    from deepsea.metrics import save_confusion_png
    from deepsea.predict import cached_tta_probs, combine_probs
    from deepsea.train import evaluate, restore_run

    orbit = None if args.orbit_average is None else "" if args.orbit_average == "none" else args.orbit_average
    model, variables, pp, classes, config = restore_run(args.workdir, args.checkpoint, orbit)
    paths, labels, _ = _run_validation(args.workdir)
    key = f"{args.checkpoint}:{config.restored_step}" + ("" if orbit is None else f":orbit={orbit or 'none'}")
    print(
        f"{args.workdir} ({args.checkpoint} checkpoint, step {config.restored_step}), {len(labels)} validation images"
    )
    print(f"{'transforms':<12} {'log loss':>9} {'accuracy':>9} {'top-5':>7}")
    for n in [0] + ([args.tta] if args.tta else []):
        per = cached_tta_probs(
            args.workdir,
            key,
            model,
            variables,
            paths,
            pp,
            n,
            config.train.eval_batch_size,
            ranges=_tta_ranges(config),
        )
        probs = combine_probs(per, args.combine)
        res = evaluate(probs, labels)
        label = "plain" if n == 0 else "TenCrop" if n == "tencrop" else f"TTA {n}"
        print(f"{label:<12} {res['log_loss']:9.4f} {res['accuracy']:9.4f} {res['top5']:7.4f}")
    png = save_confusion_png(probs, labels, classes, os.path.join(args.workdir, "confusion.png"))
    print(f"wrote {png}")


def _predict(args: argparse.Namespace) -> None:
    from deepsea.predict import cached_tta_probs, combine_probs, write_submission
    from deepsea.train import restore_run

    model, variables, pp, classes, config = restore_run(args.workdir, args.checkpoint)
    folder = _checked_flat_folder(args.images, args.skip_bad_images)
    per = cached_tta_probs(
        args.workdir,
        f"{args.checkpoint}:{config.restored_step}",
        model,
        variables,
        list(folder.paths),
        pp,
        args.tta,
        config.train.eval_batch_size,
        ranges=_tta_ranges(config),
    )
    write_submission(args.out, folder.names, classes, combine_probs(per, args.combine))
    print(f"wrote {args.out}: {len(folder)} images x {len(classes)} classes ({args.tta or 'no'} TTA transforms)")


def _checked_flat_folder(images: str, skip_bad: bool):
    """The images to predict, decoded once first: a bad file is an error naming it, or skipped and listed."""
    from deepsea.data import check_images, scan_flat_folder

    folder, _, skipped = check_images(scan_flat_folder(images), skip_bad=skip_bad)
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s); they are not in the submission", file=sys.stderr)
    return folder


def _ensemble(args: argparse.Namespace) -> None:
    import numpy as np

    from deepsea.ensemble import blend, cross_validated_selection
    from deepsea.predict import cached_tta_probs, combine_probs, write_submission
    from deepsea.train import restore_run

    runs = []
    for workdir in args.runs:
        model, variables, pp, classes, config = restore_run(workdir, args.checkpoint)
        runs.append((workdir, model, variables, pp, classes, f"{args.checkpoint}:{config.restored_step}", config))
    if any(r[4] != runs[0][4] for r in runs):
        raise SystemExit("deepsea ensemble: the runs were trained on different class lists")
    vals = [_run_validation(r[0]) for r in runs]
    same_split = all(v[0] == vals[0][0] for v in vals)
    if not same_split and not args.uniform:
        raise SystemExit(
            "deepsea ensemble: the runs have different validation splits, so blend weights cannot be fitted; "
            "use --uniform to average them (bagging)"
        )
    weights = np.full(len(runs), 1 / len(runs))
    chosen = list(range(len(runs)))
    if same_split:
        paths, labels, _ = vals[0]
        probs = np.stack(
            [
                combine_probs(
                    cached_tta_probs(w, ck, m, v, paths, pp, args.tta, c.train.eval_batch_size, ranges=_tta_ranges(c)),
                    args.combine,
                )
                for w, m, v, pp, _, ck, c in runs
            ]
        )
        result = cross_validated_selection(probs, labels, folds=args.folds, uniform=args.uniform)
        for (w, *_), loss in zip(runs, result.single_log_loss, strict=True):
            print(f"{w:<40} validation log loss {loss:.4f}")
        chosen, weights = list(result.models), result.weights
        blended = blend(probs[chosen], weights)
        from deepsea.metrics import accuracy, log_loss

        print(
            f"blend of {[runs[i][0] for i in chosen]} with weights {np.round(weights, 3).tolist()}: "
            f"validation log loss {log_loss(blended, labels):.4f} (cross-validated {result.cv_log_loss:.4f}), "
            f"accuracy {accuracy(blended, labels):.4f}"
        )
    if args.images:
        folder = _checked_flat_folder(args.images, args.skip_bad_images)
        test = np.stack(
            [
                combine_probs(
                    cached_tta_probs(
                        w, ck, m, v, list(folder.paths), pp, args.tta, c.train.eval_batch_size, ranges=_tta_ranges(c)
                    ),
                    args.combine,
                )
                for w, m, v, pp, _, ck, c in (runs[i] for i in chosen)
            ]
        )
        write_submission(args.out, folder.names, runs[0][4], blend(test, weights))
        print(f"wrote {args.out}")


def _params(args: argparse.Namespace) -> None:
    import jax
    import jax.numpy as jnp

    from deepsea.models import build_model, count_params, network_layers

    config = _config(args)
    model = build_model(config.model, args.classes)
    x = jnp.zeros((1, config.data.size, config.data.size, 1))
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x, raw_size=jnp.ones((1, 2))))["params"]
    params = network_layers(params)
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
