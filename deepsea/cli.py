"""The ``deepsea`` command line: it parses arguments and prints; the work is in the library.

Nothing heavy is imported before a command runs, so ``deepsea --help`` and argument errors answer at once;
the tools (:mod:`deepsea.tools`) are imported only when their command runs.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Sequence

from deepsea.errors import UserError
from deepsea.paths import output_file, output_folder

__all__ = ["CPU_XLA_FLAGS", "main"]

CPU_XLA_FLAGS = "--xla_cpu_experimental_ynn_fusion_type= --xla_multiheap_size_constraint_per_heap=16777216"
"""XLA flags the command line sets unless ``XLA_FLAGS`` is already set or ``DEEPSEA_DEFAULT_XLA=0``: YNNPACK
fusions off, which made XLA:CPU's 3x3 convolutions faster, and a step's temporary buffers in blocks of about
16 MiB instead of one combined allocation.  XLA allocates that on its own threads, whose glibc arenas keep heaps of
at most 64 MiB: a larger block is mapped afresh, and zero-filled page by page, on every step, whatever
:func:`deepsea.allocator.keep_freed_memory` asks (``docs/results.md``).  Library imports never change flags; only
the command line does."""

TOOLS = {
    "demo": ("deepsea.tools.demo", "exact invariance of convroll4 on a drawn organism, under all 8 D4 elements"),
    "bench": ("deepsea.tools.bench", "time an experiment's training step: images/s, GFLOP/s, against PyTorch"),
    "profile": ("deepsea.tools.profile", "where a training step's time goes, per layer: oneDNN and XLA's work"),
    "bench-ops": ("deepsea.tools.bench_ops", "time each symmetry op beside the layer that follows it"),
    "bench-kernels": ("deepsea.tools.bench_kernels", "time the Pallas roll kernels against the XLA reference"),
    "bench-data": ("deepsea.tools.bench_data", "loader images/s per worker and the share of a step spent waiting"),
    "bench-abundance": (
        "deepsea.tools.bench_abundance",
        "the abundance corrections on shifted samples of a run's split",
    ),
    "gpu-check": ("deepsea.tools.gpu_check", "the prepared device call: kernels, step table, a budgeted convroll4 run"),
}


_ABUNDANCE_METHODS = ("cc", "pcc", "acc", "pacc", "em")  # deepsea.abundance.METHODS, without importing it here


class CommandError(UserError):
    """A command that cannot do what was asked; its message is printed without a traceback."""


def _set_xla_flags() -> None:
    if "XLA_FLAGS" not in os.environ and os.environ.get("DEEPSEA_DEFAULT_XLA", "1") != "0":
        os.environ["XLA_FLAGS"] = CPU_XLA_FLAGS


def _keep_freed_memory() -> None:
    """glibc keeps a step's freed buffers for the next one (:func:`deepsea.allocator.keep_freed_memory`), unless
    ``DEEPSEA_DEFAULT_MALLOC=0``."""
    if os.environ.get("DEEPSEA_DEFAULT_MALLOC", "1") != "0":
        from deepsea.allocator import keep_freed_memory

        keep_freed_memory()


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


def _at_least(low: int):
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            n = low - 1
        if n < low:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {value!r}")
        return n

    return parse


def _precision_arg(value: str) -> float:
    try:
        p = float(value)
    except ValueError:
        p = -1.0
    if not 0 < p <= 1:
        raise argparse.ArgumentTypeError(f"expected a precision in (0, 1], got {value!r}")
    return p


def _distributed_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("several processes (jax.distributed; every process runs the same command)")
    g.add_argument("--distributed", action="store_true", help="join the other processes (deepsea.distributed)")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT", help="the first process's address")
    g.add_argument("--num-processes", type=int, default=None, metavar="N")
    g.add_argument("--process-id", type=int, default=None, metavar="I", help="0 .. N-1")


def _init_distributed(args: argparse.Namespace) -> None:
    """Joins the other processes when asked (without the addresses, JAX finds them in a cluster's environment)."""
    given = (args.coordinator, args.num_processes, args.process_id)
    if not args.distributed:
        if any(v is not None for v in given):
            raise CommandError("--coordinator, --num-processes and --process-id need --distributed")
        return
    from deepsea.distributed import initialize

    initialize(*given)


def _experiment_args(p: argparse.ArgumentParser, data: bool = True) -> None:
    p.add_argument("experiment", help="experiments/<name>.py, a path, or a name in ./experiments")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--small", action="store_true", help="the experiment's small-run configuration")
    if data:
        p.add_argument(
            "--data",
            default=None,
            help="labelled image folder, tfds:DIR or ecotaxa:EXPORT.tsv (default: the experiment's, else synthetic)",
        )


def _prediction_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default="best", choices=["best", "latest"])
    p.add_argument(
        "--tta", type=_tta_arg, default=0, help="N quasi-random test-time transforms (seed: 70), or 'tencrop'"
    )
    p.add_argument("--combine", default="mean", choices=["mean", "logits", "geometric"])
    p.add_argument(
        "--precision",
        default=None,
        choices=["float32", "bfloat16"],
        help="predict in this precision (default: the run's model.precision)",
    )


def _orbit_average_arg(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--orbit-average", default=None, choices=["none", "c4", "d4"], help=help)


def _orbit_average(args: argparse.Namespace) -> str | None:
    """``--orbit-average`` as :func:`deepsea.runs.restore_run` takes it (``""``: none; ``None``: as trained)."""
    return None if args.orbit_average is None else "" if args.orbit_average == "none" else args.orbit_average


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepsea", description="Exact rotation-symmetric convnets for plankton.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train an experiment (experiments/<name>.py or a path)")
    _experiment_args(p)
    p.add_argument("--workdir", default=None, help="run folder (default: runs/<experiment name>)")
    _distributed_args(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("pretrain", help="pre-train a RollNet's convolutions as a tied autoencoder (no labels)")
    _experiment_args(p)
    p.add_argument("--workdir", required=True, help="folder for params.npz, metrics and reconstruction.png")
    p.add_argument("--images", default=None, help="unlabelled images to learn from (default: the experiment's data)")
    p.set_defaults(func=_pretrain)

    p = sub.add_parser("sweep", help="train every combination of a grid x seeds at equal budgets; summary and plots")
    _experiment_args(p)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="values to sweep (repeatable)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per combination (0 .. K-1)")
    p.add_argument(
        "--first-seed", type=int, default=0, help="first seed (S .. S+K-1): more seeds in a folder of their own"
    )
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--epochs", type=float, help="equal passes over the training images (what a net learns)")
    budget.add_argument("--budget-minutes", type=float, help="equal wall minutes on this machine (what a user gets)")
    budget.add_argument(
        "--steps",
        type=int,
        help="equal training steps: a time budget's steps measured once on quiet cores (deepsea bench), which "
        "then hold whatever else the machine does",
    )
    p.add_argument("--tta", default="", metavar="N[,N]", help="also evaluate with these TTA settings, e.g. 8,70")
    p.add_argument("--out", required=True, help="sweep folder: runs/, results.jsonl, summary.md, curves.png, bars.png")
    p.set_defaults(func=_sweep)

    p = sub.add_parser("frontier", help="networks at equal compute: log loss against training minutes, crossings")
    p.add_argument("experiment", help="an experiment module with frontier() listing the arms (network, sweep, minutes)")
    p.add_argument("--root", required=True, help="folder holding the sweeps the arms name")
    p.add_argument(
        "--out", required=True, help="Markdown page to write (its plot beside it, .png; its ledger of runs, .jsonl)"
    )
    p.add_argument("--title", default="Equal compute", help="the page's title")
    p.set_defaults(func=_frontier)

    p = sub.add_parser("claims", help="a results page: an experiment's claims against its sweeps, with verdicts")
    p.add_argument("experiment", help="experiment module whose claims() lists the claims")
    p.add_argument("--root", required=True, help="folder holding the sweeps (and ensemble scores) the claims name")
    p.add_argument(
        "--out", required=True, help="Markdown page to write (its forest plot beside it, .png; its ledger, .jsonl)"
    )
    p.add_argument("--title", default="Claims measured")
    p.set_defaults(func=_claims)

    p = sub.add_parser("bag", help="bagging: train K copies of an experiment on K different splits")
    _experiment_args(p)
    p.add_argument("-k", "--copies", type=int, default=3)
    p.add_argument("--workdir", default=None, help="prefix of the run folders (default: runs/<name>_bag); _0, _1, ...")
    p.set_defaults(func=_bag)

    p = sub.add_parser("evaluate", help="log loss, accuracy and top-5 on a run's validation split (and with TTA)")
    p.add_argument("--workdir", required=True, help="a run, an exported model or a fused run")
    p.add_argument(
        "--data", default=None, help="score on every image of this labelled folder instead (a held-aside test set)"
    )
    p.add_argument(
        "--per-class",
        action="store_true",
        help="also each class's recall (per_class.csv) and the mean over the rarest third of classes",
    )
    _prediction_args(p)
    _orbit_average_arg(p, "evaluate with another exact orbit average than the run's model.orbit_average")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("predict", help="predict a folder (tree) of images into a CSV, streamed and resumable")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--workdir", help="a trained run, an exported model or a fused run")
    which.add_argument("--model", help="the same as --workdir (a model folder written by deepsea export)")
    p.add_argument("--images", required=True, help="folder of images, searched recursively (the NDSB test layout)")
    p.add_argument("--out", required=True, help="CSV file to write")
    _prediction_args(p)
    p.add_argument("--skip-bad-images", action="store_true", help="skip (and list) unreadable images")
    p.add_argument("--top", type=_at_least(0), default=0, metavar="N", help="also the N most probable classes")
    p.add_argument("--ecotaxa", default="", metavar="TSV", help="also write the predictions as an EcoTaxa import TSV")
    p.add_argument("--chunk", type=_at_least(1), default=4096, help="images decoded and predicted at a time (memory)")
    _orbit_average_arg(p, "a run predicts with another exact orbit average than its model.orbit_average (c4: half "
                       "the copies of d4)")  # fmt: skip
    p.add_argument("--parquet", default="", metavar="FILE", help="also write the output as Parquet (needs pyarrow)")
    p.add_argument(
        "--ifcb-scores",
        default="",
        metavar="DIR",
        help="also write IFCB class-score files, <bin>_class.h5 per bin (the IFCB dashboard's v3 layout)",
    )
    p.add_argument(
        "--embeddings",
        default="",
        metavar="PARQUET",
        help="also write each image's penultimate-layer features (a run's) to Parquet, for clustering",
    )
    p.add_argument(
        "--pixel-size",
        type=float,
        default=None,
        metavar="UM",
        help="micrometres per pixel of these images (required when the run was trained with data.pixel_size)",
    )
    p.add_argument(
        "--thresholds",
        action="store_true",
        help="add a label column: the top class, or 'unclassified' below the run's thresholds (deepsea thresholds)",
    )
    _distributed_args(p)
    p.set_defaults(func=_predict)

    p = sub.add_parser(
        "abundance", help="class counts of samples with error bars, corrected for the shift in the class mix"
    )
    p.add_argument("--workdir", required=True, help="the run, exported model or fused run that predicted them")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--predictions", help="a CSV written by deepsea predict (the same --tta and --combine)")
    what.add_argument("--images", help="a folder of images to predict first (searched recursively)")
    p.add_argument("--out", required=True, help="CSV: a row per sample, class and method")
    p.add_argument("--plot", default="", metavar="PNG", help="also draw the most abundant classes with their intervals")
    p.add_argument("--by", default="", choices=["", "folder"], help="folder: a sub-folder per sample")
    p.add_argument("--groups", default="", metavar="CSV", help="image,sample rows: which sample each image is from")
    p.add_argument("--volume", type=float, default=None, help="the (single) sample's volume: also counts per volume")
    p.add_argument("--volumes", default="", metavar="CSV", help="sample,volume rows: also counts per volume")
    p.add_argument("--methods", default=",".join(_ABUNDANCE_METHODS), help="of cc, pcc, acc, pacc, em")
    p.add_argument("--bootstrap", type=_at_least(0), default=200, help="resamples for the intervals")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--data", default=None, help="learn the corrections on this labelled folder (default: the run's validation)"
    )
    p.add_argument("--pixel-size", type=float, default=None, metavar="UM", help="with --images: micrometres per pixel")
    _prediction_args(p)
    p.set_defaults(func=_abundance)

    p = sub.add_parser("review", help="a local page to check and correct predictions; labels kept in SQLite")
    p.add_argument("--predictions", required=True, help="a CSV written by deepsea predict")
    p.add_argument("--images", required=True, help="the folder it predicted (its image column is relative to it)")
    p.add_argument("--db", default="", help="the label store (default: <CSV>.labels.sqlite)")
    p.add_argument("--export", default="", metavar="DIR", help="where Export writes (default: <CSV>_reviewed/)")
    p.add_argument("--export-only", action="store_true", help="write the export and stop (no page)")
    p.add_argument("--port", type=int, default=0, help="the page's port on 127.0.0.1 (default: a free one)")
    p.set_defaults(func=_review)

    p = sub.add_parser("specialist", help="a specialist for a general run's most confused classes: prepare, or "
                       "score the general run merged with one")  # fmt: skip
    p.add_argument("--workdir", required=True, help="the general run")
    p.add_argument("--size", type=_at_least(2), default=10, help="classes in the confusable group (prepare)")
    p.add_argument("--out", default="", help="folder for the group, class map and teacher file (prepare)")
    p.add_argument("--merge", default="", help="a trained specialist run: score general and merged (no --out)")
    p.add_argument("--scores", default="", help="with --merge: append the scores as a JSON line to this file")
    p.set_defaults(func=_specialist)

    p = sub.add_parser("tto", help="test-time transform optimisation on a run's validation split, against plain")
    p.add_argument("--workdir", required=True, help="a trained run")
    p.add_argument("--steps", type=_at_least(0), default=10)
    p.add_argument("--lr", type=float, default=0.5, help="Adam's rate on the parameters (degrees, pixels, logs)")
    p.add_argument("--objective", default="max", choices=["max", "min"], help="the top probability's direction")
    p.add_argument("--starts", type=_at_least(0), default=0, help="also start from the first N TTA transforms")
    p.add_argument("--subset", type=_at_least(1), default=None, help="N validation images, evenly spaced over it")
    p.add_argument("--transform-net", type=_at_least(0), default=0, metavar="STEPS",
                   help="also train a network that predicts each image's transform for the run (frozen) for STEPS "
                        "steps on its training images, and score the run through it")  # fmt: skip
    p.add_argument("--net-lr", type=float, default=1e-3, help="the transform net's Adam rate")
    p.add_argument("--out", default="", help="append the scores as a JSON line to this file")
    p.set_defaults(func=_tto)

    p = sub.add_parser("export", help="write a run as a model folder that predicts without the training code")
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True, help="model folder to write (model.jax, params.npz, model.json)")
    p.add_argument("--checkpoint", default="best", choices=["best", "latest"])
    p.add_argument(
        "--precision",
        default="float32",
        choices=["float32", "bfloat16"],
        help="the exported network's precision (default float32: on CPUs without this package's oneDNN handlers, "
        "XLA's own bfloat16 convolutions are slow; with them, bfloat16 predicts fastest)",
    )
    p.add_argument(
        "--platforms", default=None, help="comma-separated: cpu, cuda, rocm, tpu (default cpu,cuda; --format jax)"
    )
    p.add_argument(
        "--format",
        default="jax",
        choices=["jax", "onnx"],
        help="jax: jax.export (model.jax, params.npz); onnx: model.onnx for onnxruntime (needs deepsea[onnx])",
    )
    p.add_argument("--overwrite", action="store_true", help="replace the exported model already in --out")
    _orbit_average_arg(p, "export the network with another exact orbit average than the run's model.orbit_average")
    p.set_defaults(func=_export)

    p = sub.add_parser("calibrate", help="fit temperature scaling on a run's validation split (reliability.png)")
    p.add_argument("--workdir", required=True, help="a run, an exported model or a fused run")
    p.add_argument("--data", default=None, help="fit on this labelled folder (models without a validation split)")
    _prediction_args(p)
    p.set_defaults(func=_calibrate)

    p = sub.add_parser("thresholds", help="per-class thresholds for a target precision; the rest is 'unclassified'")
    p.add_argument("--workdir", required=True, help="a run, an exported model or a fused run")
    p.add_argument("--data", default=None, help="choose on this labelled folder (models without a validation split)")
    p.add_argument("--target-precision", type=_precision_arg, required=True, metavar="P", help="e.g. 0.9")
    _prediction_args(p)
    p.set_defaults(func=_thresholds)

    p = sub.add_parser("ensemble", help="blend runs with weights fitted on their shared validation split")
    p.add_argument("runs", nargs="+", help="run folders; RUN_A+RUN_B+... joins bagged runs into one member")
    _prediction_args(p)
    p.add_argument(
        "--uniform",
        action="store_true",
        help="every run with equal weight, no selection (bagging; with --tta tencrop: m x 10 averaging)",
    )
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds for choosing the models")
    p.add_argument("--images", default=None, help="also write a blended submission for this folder")
    p.add_argument("--out", default="ensemble.csv")
    p.add_argument("--scores", default=None, metavar="FILE.json", help="also save the blend's validation scores")
    p.add_argument("--skip-bad-images", action="store_true", help="skip (and list) unreadable images")
    p.set_defaults(func=_ensemble)

    p = sub.add_parser(
        "pseudolabel", help="teachers' predictions for a folder: pseudo-labels (data.pseudo_labels) or distillation"
    )
    p.add_argument("runs", nargs="+", help="teacher run folders (several: blended)")
    p.add_argument("--images", required=True, help="image folder (searched recursively)")
    p.add_argument("--out", required=True, help=".npz file to write")
    _prediction_args(p)
    p.add_argument("--weights", default="fitted", choices=["fitted", "uniform"], help="how several teachers blend")
    p.set_defaults(func=_pseudolabel)

    p = sub.add_parser("features", help="size, moment, Zernike, Haralick and threshold features of a folder (cached)")
    p.add_argument("--data", required=True, help="image folder (searched recursively)")
    p.add_argument("--pixel-size", type=float, default=0.0, metavar="UM", help="micrometres per pixel (0: pixels)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    p.set_defaults(func=_features)

    p = sub.add_parser("fuse", help="late-fuse image features with frozen runs (a small net at the logits)")
    p.add_argument("runs", nargs="+", help="run folders sharing a validation split (several: blended)")
    p.add_argument("--out", required=True, help="fused run folder to write")
    _prediction_args(p)
    p.add_argument("--weights", default="fitted", choices=["fitted", "uniform"], help="how several runs blend")
    p.add_argument("--restarts", type=int, default=5, help="fusion networks trained and averaged")
    p.add_argument("--hidden", type=int, default=80, help="units of each of the two dense layers")
    p.add_argument("--steps", type=int, default=500, help="full-batch Adam steps per network")
    p.add_argument("--features", default="", metavar="GROUPS",
                   help="comma-separated feature groups to fuse (default: all; shape, hu, zernike, haralick, pftas, "
                        "lbp)")  # fmt: skip
    p.add_argument("--scores", default="", metavar="FILE.json",
                   help="also save the cross-validated scores (under 'validation') and the convnets' on the same "
                        "images")  # fmt: skip
    p.set_defaults(func=_fuse)

    p = sub.add_parser("params", help="print a model's parameter count per layer")
    _experiment_args(p, data=False)
    p.add_argument("--classes", type=int, default=121)
    p.set_defaults(func=_params)

    p = sub.add_parser("info", help="versions, devices, CPU features and active backends (for bug reports)")
    p.set_defaults(func=_info)

    p = sub.add_parser("make-synthetic", help="write the generated plankton-like dataset to a folder")
    p.add_argument("out", help="folder to write <class>/<id>.jpg into")
    p.add_argument("--per-class", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--colour", action="store_true", help="RGB images; some classes differ only in colour")
    p.set_defaults(func=_make_synthetic)

    p = sub.add_parser(
        "holdout", help="set a labelled part of a dataset aside (links): train/, aside/ and unlabelled aside_images/"
    )
    p.add_argument("data", help="labelled folder <class>/<image>")
    p.add_argument("--out", required=True, help="folder to create")
    p.add_argument("--fraction", type=float, default=0.1, help="share of every class set aside")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_holdout)

    p = sub.add_parser("preview", help="write a PNG grid of preprocessed and augmented images")
    p.add_argument("--data", default=None, help="labelled or flat image folder (default: synthetic)")
    p.add_argument("--out", default="preview.png")
    p.add_argument("--size", type=int, default=95)
    p.add_argument("--rescale", default="max_side:85", help="max_side:N, factor:F or none")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--augmented", type=int, default=6)
    p.add_argument("--channels", type=int, default=1, choices=[1, 3], help="1: grayscale, 3: RGB")
    p.add_argument("--background", default="white", choices=["white", "black"])
    p.add_argument("--jitter", default="", metavar="B,C,S,H", help="colour jitter ranges, e.g. 0.4,0.4,0.4,0.1")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_preview)

    for name, (module, help_text) in TOOLS.items():
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.set_defaults(func=_tool(name, module), tool=module)
    return parser


def _tool(name: str, module: str) -> Callable[[argparse.Namespace], None]:
    def run(args: argparse.Namespace) -> None:
        tool = importlib.import_module(module)
        p = argparse.ArgumentParser(prog=f"deepsea {name}", description=TOOLS[name][1])
        tool.add_arguments(p)
        tool.main_with_args(p.parse_args(args.rest))

    return run


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    # a tool parses its own arguments when it runs, so its options need not be known (or imported) here
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "tool", None) is None and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    _set_xla_flags()  # before the first computation initialises the backend
    _keep_freed_memory()  # before the first step allocates its buffers
    try:
        args.func(args)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as e:
        if not _is_user_error(e) or os.environ.get("DEEPSEA_TRACEBACK") == "1":
            raise
        print(f"deepsea {args.command}: error: {_first_line(e)}", file=sys.stderr)
        raise SystemExit(2) from None


def _first_line(e: Exception) -> str:
    """The message without the notes JAX appends to exceptions raised under tracing."""
    return str(e).split("\n--------------------")[0].strip()


def _is_user_error(e: Exception) -> bool:
    """Bad input (:class:`deepsea.errors.UserError`: a file, folder, config, run or setting, named) and files that
    are missing, in the way or not writable: printed as one line (``DEEPSEA_TRACEBACK=1`` shows the traceback).
    Anything else, a plain ``ValueError`` included, is a bug and shows its traceback."""
    return isinstance(e, UserError | FileNotFoundError | NotADirectoryError | IsADirectoryError | PermissionError)


def _config(args: argparse.Namespace):
    from deepsea.configs import load_experiment_with

    return load_experiment_with(args.experiment, args.set, args.small, getattr(args, "data", None))


def _print_best(best, workdir: str) -> None:
    print(f"done: best validation {best} at step {best.step}; plots in {os.path.join(workdir, 'metrics.png')}")


def _train(args: argparse.Namespace) -> None:
    _init_distributed(args)
    from deepsea.train import train

    config = _config(args)
    workdir = args.workdir or os.path.join("runs", config.name)
    output_folder(workdir, "--workdir")
    print(f"training {config.name} in {workdir} on {config.data.path or 'the synthetic dataset'}")
    _print_best(train(config, workdir).best, workdir)


def _pretrain(args: argparse.Namespace) -> None:
    from deepsea.pretrain import pretrain

    config = _config(args)
    output_folder(args.workdir, "--workdir")
    res = pretrain(config, args.workdir, args.images)
    print(
        f"pre-trained {config.name}'s convolutions for {res.steps} steps (reconstruction error {res.final_mse:.4f}); "
        f"wrote {os.path.join(args.workdir, 'params.npz')} and reconstruction.png; fine-tune with "
        f"--set train.pretrained={args.workdir}"
    )


def _sweep(args: argparse.Namespace) -> None:
    from deepsea.sweep import run_sweep

    output_folder(args.out, "--out")
    try:
        tta = [_tta_arg(t.strip()) for t in args.tta.split(",") if t.strip()]
    except argparse.ArgumentTypeError as e:
        raise CommandError(f"--tta: {e}") from None
    records = run_sweep(
        args.experiment,
        args.grid,
        args.out,
        args.seeds,
        args.epochs,
        args.budget_minutes,
        tta,
        args.set,
        args.small,
        args.data,
        steps=args.steps,
        first_seed=args.first_seed,
    )
    with open(os.path.join(args.out, "summary.md")) as f:
        print(f.read())
    print(f"{len(records)} runs in {args.out} (results.jsonl, summary.md, curves.png, bars.png)")


def _frontier(args: argparse.Namespace) -> None:
    from deepsea.configs import load_experiment_module
    from deepsea.frontier import write_frontier_page

    module = load_experiment_module(args.experiment)
    if not hasattr(module, "frontier"):
        raise CommandError(f"{args.experiment} has no frontier() listing the networks and budgets to compare")
    if not os.path.isdir(args.root):
        raise CommandError(f"no sweep folder {args.root}")
    output_file(args.out, "--out")
    intro = inspect.cleandoc(module.__doc__ or "").split("\n\n")[0].replace("\n", " ")  # the protocol
    print(write_frontier_page(args.root, module.frontier(), args.out, args.title, intro))
    print(f"wrote {args.out} and {os.path.splitext(args.out)[0]}.png")


def _claims(args: argparse.Namespace) -> None:
    from deepsea.claims import write_claims_page
    from deepsea.configs import load_experiment_module

    module = load_experiment_module(args.experiment)
    if not hasattr(module, "claims"):
        raise CommandError(f"{args.experiment} has no claims() listing the claims to measure")
    if not os.path.isdir(args.root):
        raise CommandError(f"no sweep folder {args.root}")
    intro = inspect.cleandoc(module.__doc__ or "").split("\n\n")[0].replace("\n", " ")  # the protocol
    text = write_claims_page(args.root, module.claims(), args.out, args.title, intro)
    print(text)
    print(f"wrote {args.out} and {os.path.splitext(args.out)[0]}.png")


def _bag(args: argparse.Namespace) -> None:
    from deepsea.train import bag

    prefix = args.workdir or os.path.join("runs", f"{_config(args).name}_bag")
    runs = bag(lambda: _config(args), args.copies, prefix, report=print)
    print(f"average them on new images: deepsea ensemble {' '.join(runs)} --uniform --images DIR --out bag.csv")


def _load_predictor(path: str, args: argparse.Namespace, orbit_average: str | None = None):
    """Any kind of model folder (a run, an exported model, a fused run) as a predictor; a choice its kind fixed
    (an exported model's precision, say) is a one-line error."""
    from deepsea.load import load_predictor

    try:
        return load_predictor(path, args.checkpoint, args.precision, orbit_average)
    except (FileNotFoundError, ValueError) as e:
        raise CommandError(str(e)) from None


def _abundance(args: argparse.Namespace) -> None:
    import numpy as np

    from deepsea.abundance import Quantifier, abundance, group_samples, read_volumes, write_abundances
    from deepsea.predictor import predictor_probs, with_pixel_size
    from deepsea.runs import NoValidationSplit, scoring_set

    output_file(args.out, "--out")
    if args.plot:
        output_file(args.plot, "--plot")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    predictor = _load_predictor(args.workdir, args)
    if args.predictions:
        from deepsea.submission import read_submission

        if args.pixel_size is not None:
            raise CommandError("--pixel-size applies to --images (predicted here), not to --predictions")
        names, classes, probs = read_submission(args.predictions)
        if tuple(classes) != tuple(predictor.classes):
            raise CommandError(
                f"{args.predictions} has other classes than {args.workdir} ({len(classes)} vs "
                f"{len(predictor.classes)}): give the predictions that model made"
            )
    else:
        from deepsea.data.sources import list_images

        names = list_images(args.images)
        if not names:
            raise CommandError(f"{args.images} has no images")
        paths = [os.path.join(args.images, n) for n in names]
        probs = predictor_probs(with_pixel_size(predictor, args.pixel_size), paths, args.tta, args.combine)
    samples = group_samples(names, args.by, args.groups)
    volumes = read_volumes(args.volumes) if args.volumes else {}
    if args.volume is not None:
        if len(samples) > 1:
            raise CommandError(f"--volume is one sample's; these images are {len(samples)} samples: use --volumes")
        volumes = dict.fromkeys(samples, args.volume)
    unmeasured = sorted(set(samples) - set(volumes)) if volumes else []
    if unmeasured:
        raise CommandError(f"{args.volumes} gives no volume for sample(s) {unmeasured[:5]}")
    try:
        labelled = scoring_set(predictor, args.data)
    except NoValidationSplit as e:
        raise CommandError(str(e)) from None
    val_probs = predictor_probs(predictor, list(labelled.paths), args.tta, args.combine)
    q = Quantifier.fit(val_probs, labelled.labels, predictor.classes)
    results = [
        abundance(
            q, val_probs, labelled.labels, np.asarray(probs)[idx], sample, methods, args.bootstrap, args.confidence,
            args.seed, volumes.get(sample),
        )
        for sample, idx in samples.items()
    ]  # fmt: skip
    write_abundances(results, args.out)
    for a in results:
        order = np.argsort(-a.counts.mean(0))[:5]
        print(f"{a.sample}: {a.images} images; most abundant ({', '.join(a.methods)}):")
        for i in order:
            cells = ", ".join(
                f"{a.counts[m, i]:.1f} [{a.low[m, i]:.1f}, {a.high[m, i]:.1f}]" for m in range(len(methods))
            )
            print(f"  {a.classes[i]}: {cells}")
    if args.plot:
        from deepsea.plots import plot_abundances

        print(f"wrote {plot_abundances(results, args.plot)}")
    print(f"wrote {args.out}: {len(results)} sample(s) x {len(predictor.classes)} classes x {len(methods)} methods")


def _review(args: argparse.Namespace) -> None:
    from deepsea.review import export_reviewed, load_review_set, open_labels, serve

    review = load_review_set(args.predictions, args.images)
    stem = os.path.splitext(args.predictions)[0]
    db = args.db or f"{stem}.labels.sqlite"
    export = args.export or f"{stem}_reviewed"
    if review.missing:
        print(f"warning: {len(review.missing)} image(s) of {args.predictions} are not under {args.images}, "
              f"e.g. {review.missing[0]}")  # fmt: skip
    if args.export_only:
        res = export_reviewed(review, open_labels(db, review), export)
        print(f"exported {res['images']} labelled images: {res['folder']} (deepsea train --data) and {res['tsv']}")
        return
    server = serve(review, db, export, args.port, ready=lambda url: print(f"review page: {url} (Ctrl-C stops)"))
    print(f"{len(review.names)} images, {len(review.classes)} classes; labels in {db}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def _specialist(args: argparse.Namespace) -> None:
    import json

    import numpy as np

    from deepsea import rundir
    from deepsea.evaluation import evaluate_probs
    from deepsea.predictor import predictor_probs
    from deepsea.runs import restore_run, training_set, validation_set
    from deepsea.specialists import collapse, confusable_group, load_group, merge, save_group

    if bool(args.out) == bool(args.merge):
        raise CommandError("give --out (prepare a specialist) or --merge SPECIALIST_RUN (score it), one of them")
    general = restore_run(args.workdir)
    val = validation_set(args.workdir)
    probs = predictor_probs(general, list(val.paths), 0, calibrated=False)
    if args.merge:
        spec_run = restore_run(args.merge)
        group_file = os.path.join(os.path.dirname(os.path.abspath(args.merge)), "group.json")
        if not os.path.exists(group_file):
            raise CommandError(f"no group.json beside {args.merge} (deepsea specialist --out writes it)")
        group = load_group(group_file, general.classes)
        spec = predictor_probs(spec_run, list(val.paths), 0, calibrated=False)
        merged = merge(probs, spec, general.classes, spec_run.classes, group)
        before, after = evaluate_probs(probs, val.labels), evaluate_probs(merged, val.labels)
        in_group = np.isin(val.labels, group)
        inside = (evaluate_probs(probs[in_group], val.labels[in_group]),
                  evaluate_probs(merged[in_group], val.labels[in_group]))  # fmt: skip
        print(f"{len(val.paths)} validation images of {args.workdir}; group of {len(group)} classes "
              f"({int(in_group.sum())} of its images)")  # fmt: skip
        print(f"general: {before}\nmerged with {args.merge}: {after}")
        print(f"on the group's images: general {inside[0]}; merged {inside[1]}")
        if args.scores:
            with open(output_file(args.scores, "--scores"), "a") as f:
                f.write(json.dumps({"general": args.workdir, "specialist": args.merge, "group": len(group),
                                    "general_scores": before.to_dict(), "merged": after.to_dict(),
                                    "group_general": inside[0].to_dict(),
                                    "group_merged": inside[1].to_dict()}) + "\n")  # fmt: skip
        return
    group = confusable_group(probs, val.labels, args.size)
    files = save_group(output_folder(args.out, "--out"), args.workdir, general.classes, group)
    train_paths, _ = training_set(args.workdir)
    train_probs = predictor_probs(general, train_paths, 0, calibrated=False)
    collapsed, spec_classes = collapse(train_probs, general.classes, group)
    from deepsea.teachers import TeacherPredictions, save_teacher_predictions

    split_root = rundir.load_json(os.path.join(args.workdir, "split.json"))["root"]
    root = os.path.abspath(split_root)
    teacher = os.path.join(args.out, "teacher.npz")
    save_teacher_predictions(teacher, TeacherPredictions(
        root, tuple(os.path.relpath(os.path.abspath(p), root) for p in train_paths), spec_classes, collapsed,
        {"runs": [os.path.abspath(args.workdir)], "collapsed_to": list(spec_classes)},
    ))  # fmt: skip
    print(f"confusable group of {len(group)}: {', '.join(general.classes[g] for g in group)}")
    print(f"wrote {files['group']}, {files['class_map']}, {teacher}")
    experiment = general.config.get("experiment_file", "EXPERIMENT.py")
    print(f"train the specialist with:\n  deepsea train {experiment} --data {split_root} "
          f"--workdir {os.path.join(args.out, 'run')} --set data.class_map={files['class_map']} "
          f"--set data.distill={teacher} --set data.split_from={args.workdir}")  # fmt: skip


def _tto(args: argparse.Namespace) -> None:
    import json

    import numpy as np

    from deepsea.data.transforms import AugmentParams, tta_params
    from deepsea.evaluation import evaluate_probs
    from deepsea.predictor import predictor_probs
    from deepsea.runs import restore_run, validation_set
    from deepsea.tto import TTOSettings, optimised_probs

    run = restore_run(args.workdir)
    val = validation_set(args.workdir)
    pick = np.linspace(0, len(val.paths) - 1, min(args.subset or len(val.paths), len(val.paths))).round().astype(int)
    paths, labels = [val.paths[i] for i in pick], val.labels[pick]  # every class's share, not the first classes
    starts = [AugmentParams(), *tta_params(args.starts, run.tta_ranges)] if args.starts else [AugmentParams()]
    settings = TTOSettings(args.steps, args.lr, args.objective, run.batch_size)
    plain = evaluate_probs(predictor_probs(run, paths, 0, calibrated=False), labels)
    tto = evaluate_probs(optimised_probs(run, paths, settings, starts), labels)
    print(f"{len(paths)} validation images of {args.workdir}")
    print(f"plain: {plain}")
    print(f"TTO ({args.objective}, {args.steps} steps at {args.lr}, {len(starts)} start(s)): {tto}")
    record = {"workdir": args.workdir, "images": len(paths), "steps": args.steps, "lr": args.lr,
              "objective": args.objective, "starts": len(starts), "plain": plain.to_dict(),
              "tto": tto.to_dict()}  # fmt: skip
    if args.transform_net:
        from deepsea.runs import training_set
        from deepsea.tto import train_transform_net, transform_net_probs

        train_paths, train_labels = training_set(args.workdir)
        net, params, losses = train_transform_net(
            run, train_paths, train_labels, args.transform_net, run.batch_size, args.net_lr
        )
        scored = evaluate_probs(transform_net_probs(run, net, params, paths, run.batch_size), labels)
        tail = losses[-min(50, len(losses)) :]
        print(f"transform net ({args.transform_net} steps at {args.net_lr}; training loss {np.mean(losses[:10]):.4f} "
              f"in its first steps, {np.mean(tail):.4f} in its last): {scored}")  # fmt: skip
        record.update(transform_net_steps=args.transform_net, net_lr=args.net_lr, transform_net=scored.to_dict())
    if args.out:
        with open(output_file(args.out, "--out"), "a") as f:
            f.write(json.dumps(record) + "\n")


def _evaluate(args: argparse.Namespace) -> None:
    from deepsea.evaluation import evaluate_run
    from deepsea.plots import save_confusion_png
    from deepsea.runs import NoValidationSplit

    predictor = _load_predictor(args.workdir, args, _orbit_average(args))
    try:
        result = evaluate_run(predictor, args.tta, args.combine, data=args.data)
    except NoValidationSplit as e:
        raise CommandError(str(e)) from None
    step = getattr(predictor, "step", None)
    where = f"({predictor.key}{'' if step is None else f', step {step}'})"
    if result.labels is None:
        print(f"{args.workdir} {where}: scores on the validation split it was fitted on (cross-validated)")
    else:
        what = "validation images" if args.data is None else f"images of {args.data}"
        print(f"{args.workdir} {where}, {len(result.labels)} {what}")
    _print_scores(result.rows)
    if result.probs is not None:
        name = "confusion.png" if args.data is None else "confusion_data.png"
        png = save_confusion_png(result.probs, result.labels, list(predictor.classes), os.path.join(args.workdir, name))
        print(f"wrote {png}")
    if args.per_class:
        if predictor.validation_split is None or result.probs is None:
            raise CommandError(f"--per-class needs a run's training split (class counts); {args.workdir} has none")
        _report_per_class(args.workdir, result.probs, result.labels)


def _print_scores(rows, labels=None) -> None:
    """A table of :class:`~deepsea.evaluation.Evaluation` rows (labelled by ``labels`` or their own)."""
    print(f"{'':<26} {'log loss':>9} {'accuracy':>9} {'top-5':>7}")
    for i, ev in enumerate(rows):
        label = ev.label if labels is None else labels[i]
        print(f"{label:<26} {ev.log_loss:9.4f} {ev.accuracy:9.4f} {ev.top5:7.4f}")


def _report_per_class(workdir: str, probs, labels) -> None:
    import numpy as np

    from deepsea.evaluation import per_class_recall

    res = per_class_recall(workdir, probs, labels)
    path = res.write_csv(os.path.join(workdir, "per_class.csv"))
    print(
        f"mean per-class recall {np.nanmean(res.recall):.4f}; rarest third ({len(res.rare)} classes, by training "
        f"images) {np.nanmean(res.recall[res.rare]):.4f}; wrote {path}"
    )


def _report_skipped(skipped) -> None:
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s); they are not in the submission", file=sys.stderr)


def _predict(args: argparse.Namespace) -> None:
    from deepsea.predictor import chosen_thresholds, with_pixel_size
    from deepsea.stream import predict_tree

    _init_distributed(args)
    for flag, path in (("--out", args.out), ("--ecotaxa", args.ecotaxa), ("--parquet", args.parquet),
                       ("--embeddings", args.embeddings)):  # fmt: skip
        if path:
            output_file(path, flag)
    if args.ifcb_scores:
        output_folder(args.ifcb_scores, "--ifcb-scores")
    source = args.model or args.workdir
    run = _load_predictor(source, args, _orbit_average(args))
    if args.top > len(run.classes):
        raise CommandError(f"--top {args.top}: {source} has {len(run.classes)} classes")
    if run.fixed_tta is not None and args.tta != run.fixed_tta:
        raise CommandError(f"{source} predicts with the TTA its members were fused with: --tta {run.fixed_tta}")
    thresholds = chosen_thresholds(run, args.tta, args.combine) if args.thresholds else None
    run = with_pixel_size(run, args.pixel_size)
    res = predict_tree(
        run, args.images, args.out, args.tta, args.combine, args.skip_bad_images, args.top, thresholds, args.chunk
    )
    _report_skipped(res.skipped)
    if res.resumed_from:
        print(f"resumed after {res.resumed_from} images already in {args.out}")
    if thresholds is not None:
        share = res.labelled / max(1, res.images)
        print(f"{share:.1%} of the images labelled at target precision {thresholds.target_precision}")
    if args.ecotaxa:
        from deepsea.stream import csv_to_ecotaxa

        csv_to_ecotaxa(args.out, args.ecotaxa, run.classes)
        print(f"wrote {args.ecotaxa} (EcoTaxa import: status 'predicted', score object_deepsea_score)")
    if args.parquet:
        from deepsea.stream import csv_to_parquet

        try:
            print(f"wrote {csv_to_parquet(args.out, args.parquet)}")
        except ImportError as e:
            raise CommandError(str(e)) from None
    if args.ifcb_scores:
        from deepsea.stream import csv_to_ifcb_scores

        try:
            files = csv_to_ifcb_scores(args.out, args.ifcb_scores, run.classes, os.path.abspath(source))
        except ImportError as e:
            raise CommandError(str(e)) from None
        print(f"wrote {len(files)} IFCB class-score file(s) in {args.ifcb_scores}")
    if args.embeddings:
        from deepsea.stream import embed_csv_images

        try:
            n = embed_csv_images(run, args.out, args.images, args.embeddings, args.chunk)
        except ImportError as e:
            raise CommandError(str(e)) from None
        print(f"wrote {args.embeddings}: the embeddings of {n} images")
    print(
        f"wrote {args.out}: {res.images} images x {len(run.classes)} classes ({args.tta or 'no'} TTA transforms), "
        f"{res.images_per_s:.0f} images/s"
    )


def _export(args: argparse.Namespace) -> None:
    from deepsea.export import export_run
    from deepsea.runs import restore_run

    if args.format == "onnx" and args.platforms is not None:
        raise CommandError("--platforms is for --format jax: an ONNX model runs wherever onnxruntime does")
    platforms = tuple(p.strip() for p in (args.platforms or "cpu,cuda").split(",") if p.strip())
    unknown = sorted(set(platforms) - {"cpu", "cuda", "rocm", "tpu"})
    if unknown or not platforms:
        raise CommandError(f"--platforms: unknown platform(s) {unknown or args.platforms!r}; cpu, cuda, rocm or tpu")
    if os.path.isfile(os.path.join(args.out, "model.json")) and not args.overwrite:
        raise CommandError(f"{args.out} holds an exported model already: --overwrite replaces it, or use another --out")
    output_folder(args.out, "--out")
    run = restore_run(args.workdir, args.checkpoint, _orbit_average(args), precision=args.precision)
    if args.format == "onnx":
        from deepsea.export import export_onnx

        if args.precision != "float32":
            raise CommandError("--format onnx exports float32 only")
        export_onnx(run, args.out)
        platforms = ("onnxruntime",)
    else:
        export_run(run, args.out, platforms)
        if os.path.exists(os.path.join(args.out, "model_onednn.jax")):
            platforms = (*platforms, "the CPU with oneDNN")
    from deepsea.export import fitted_extras

    extras, stale = fitted_extras(run)
    if stale:
        print(
            f"note: the {' and '.join(stale)} of {args.workdir} were fitted on predictions of another checkpoint "
            f"or precision than {run.key}: predict --model will not apply them (fit them with the same --checkpoint "
            "and --precision, then export again)",
            file=sys.stderr,
        )
    print(
        f"wrote {args.out}: {run.config.model.get('name', 'model')} at step {run.step} ({run.key}), "
        f"{len(run.classes)} classes, {args.precision}, for {', '.join(platforms)}"
        + (f", with its {' and '.join(extras)}" if extras else "")
        + f"; predict with: deepsea predict --model {args.out} --images DIR --out FILE.csv"
    )


def _holdout(args: argparse.Namespace) -> None:
    from deepsea.data.folders import hold_out

    if os.path.lexists(args.out):  # checked before its parent is made: hold_out writes a new folder
        raise CommandError(f"--out {args.out!r} exists: holdout writes a new folder")
    output_file(args.out, "--out")  # its parent made and written to, as for a file
    res = hold_out(args.data, args.out, args.fraction, args.seed)
    print(
        f"wrote {args.out}: train/ ({res.train} images), aside/ ({res.aside} images, labelled, for scoring: "
        f"deepsea evaluate --data) and aside_images/ (the same images unlabelled, for deepsea pseudolabel)"
    )


def _features(args: argparse.Namespace) -> None:
    from deepsea.data.sources import list_images
    from deepsea.features import folder_features

    rel = list_images(args.data)
    table = folder_features(args.data, [os.path.join(args.data, r) for r in rel], args.pixel_size, args.workers)
    print(f"{len(rel)} images x {len(table.names)} features, cached in {table.cache}")
    print(f"{'feature':<20} {'mean':>12} {'std':>12}")
    for name, m, sd in zip(table.names, table.values.mean(0), table.values.std(0), strict=True):
        if not name[-1].isdigit():  # the size and shape features; the numbered families are in the cache
            print(f"{name:<20} {m:12.4g} {sd:12.4g}")


def _fuse(args: argparse.Namespace) -> None:
    from deepsea import rundir
    from deepsea.fitting import fuse_runs
    from deepsea.fusion import FusionSettings

    for flag, value in (("--steps", args.steps), ("--restarts", args.restarts), ("--hidden", args.hidden)):
        if value < 1:  # --steps 0 wrote a fusion network that had learnt nothing
            raise CommandError(f"{flag} must be at least 1, got {value}")
    output_folder(args.out, "--out")
    settings = FusionSettings(hidden=args.hidden, restarts=args.restarts, steps=args.steps)
    groups = [g.strip() for g in args.features.split(",") if g.strip()] if args.features else None
    scores = output_file(args.scores, "--scores") if args.scores else ""
    res = fuse_runs(
        args.runs, args.out, args.tta, args.combine, args.weights, args.checkpoint, args.precision, settings,
        features=groups,
    )  # fmt: skip
    _print_scores([res.convnets, res.cv])
    if scores:
        rundir.save_json(scores, {"validation": res.cv.to_dict(), "convnets": res.convnets.to_dict(),
                                  "features": groups or "all", "fused": os.path.abspath(args.out)})  # fmt: skip
    print(f"wrote {args.out} (fused.json, params.npz): deepsea evaluate --workdir {args.out} --data LABELLED_DIR")


def _pseudolabel(args: argparse.Namespace) -> None:
    import numpy as np

    from deepsea.teachers import save_teacher_predictions, teacher_predictions

    if not args.out.endswith(".npz"):
        raise CommandError(f"--out must be an .npz file, got {args.out!r}")
    output_file(args.out, "--out")
    tp = teacher_predictions(
        args.runs, args.images, args.tta, args.combine, args.weights, args.checkpoint, args.precision
    )
    save_teacher_predictions(args.out, tp)
    confident = float(np.mean(tp.probs.max(1) >= 0.9))
    weights = ", ".join(f"{w:.2f}" for w in tp.teachers["weights"])
    print(
        f"wrote {args.out}: {len(tp.images)} images x {len(tp.classes)} classes from {len(tp.teachers['runs'])} "
        f"teacher(s) (weights {weights}, TTA {args.tta}); {confident:.1%} with a top probability >= 0.9"
    )


def _calibrate(args: argparse.Namespace) -> None:
    from deepsea.fitting import calibrate_run
    from deepsea.runs import NoValidationSplit

    run = _load_predictor(args.workdir, args)
    try:
        res = calibrate_run(run, args.tta, args.combine, data=args.data)
    except NoValidationSplit as e:
        raise CommandError(str(e)) from None
    cal = res.calibration
    kind = "temperature" + (" and per-class bias" if cal.bias is not None else "")
    cv = ", ".join(f"{k} {v:.4f}" for k, v in res.cv_log_loss.items())
    print(f"{args.workdir}: {kind}, T = {cal.temperature:.3f} (5-fold cross-validated log loss: {cv})")
    print(f"{'':<8} {'log loss':>9} {'ECE':>7} {'accuracy':>9}")
    for ev, ece in ((res.before, res.ece_before), (res.after, res.ece_after)):
        print(f"{ev.label:<8} {ev.log_loss:9.4f} {ece:7.4f} {ev.accuracy:9.4f}")
    print(f"wrote {os.path.join(args.workdir, 'calibration.json')} and {res.png}")


def _thresholds(args: argparse.Namespace) -> None:
    import numpy as np

    from deepsea.fitting import threshold_run

    run = _load_predictor(args.workdir, args)
    try:
        res = threshold_run(run, args.target_precision, args.tta, args.combine, data=args.data)
    except ValueError as e:
        raise CommandError(str(e)) from None
    never = int(np.sum(~np.isfinite(res.thresholds.values)))
    print(
        f"{args.workdir}: at target precision {args.target_precision}, {res.classified:.1%} of the validation images "
        f"are labelled, with precision {res.precision:.4f}; {never} of {len(run.classes)} classes never are"
    )
    print(
        f"cross-validated (thresholds from the other 4 of 5 folds): {res.cv_classified:.1%} labelled, precision "
        f"{res.cv_precision:.4f}"
    )
    print(f"wrote {os.path.join(args.workdir, 'thresholds.json')}")


def _ensemble(args: argparse.Namespace) -> None:
    import numpy as np

    from deepsea.ensemble import ensemble_runs
    from deepsea.submission import write_submission

    for flag, path in (("--out", args.out if args.images else ""), ("--scores", args.scores)):
        if path:
            output_file(path, flag)
    res = ensemble_runs(
        args.runs,
        args.checkpoint,
        args.tta,
        args.combine,
        args.uniform,
        args.folds,
        args.images,
        args.skip_bad_images,
        args.precision,
    )
    if res.single_log_loss is not None:
        for w, loss in zip(res.workdirs, res.single_log_loss, strict=True):
            print(f"{w:<40} validation log loss {loss:.4f}")
        cv = "" if res.cv_log_loss is None else f" (cross-validated log loss {res.cv_log_loss:.4f})"
        print(
            f"blend of {[res.workdirs[i] for i in res.chosen]} with weights {np.round(res.weights, 3).tolist()}: "
            f"validation {res.validation}{cv}"
        )
    if args.scores:
        print(f"wrote {res.save_scores(args.scores, uniform=args.uniform, tta=args.tta)}")
    if res.test is not None:
        _report_skipped(res.test.skipped)
        write_submission(args.out, res.test.names, res.test.classes, res.test.probs)
        print(f"wrote {args.out}")


def _params(args: argparse.Namespace) -> None:
    import jax

    from deepsea.cost import flops_per_image
    from deepsea.models import count_params, network_layers
    from deepsea.step import create_train_state

    config = _config(args)
    state = create_train_state(config, args.classes, abstract=True).state
    params = network_layers(state.params)
    counts = count_params(params)
    for name, n in counts.items():
        leaves = jax.tree_util.tree_leaves_with_path(params[name])
        shapes = ", ".join(f"{jax.tree_util.keystr(p)}{tuple(v.shape)}" for p, v in leaves)
        print(f"{name:<12} {n:>12,}  {shapes}")
    print(f"{'total':<12} {sum(counts.values()):>12,}")
    cost = flops_per_image(config, args.classes)
    print(
        f"MFLOP per image: {cost.train_forward_flops / 1e6:,.2f} training forward, "
        f"{cost.train_step_flops / 1e6:,.2f} training step (3 x forward), {cost.predict_flops / 1e6:,.2f} prediction"
    )


def _info(args: argparse.Namespace) -> None:
    from deepsea.info import collect, format_info

    print(format_info(collect()))


def _make_synthetic(args: argparse.Namespace) -> None:
    from deepsea.data.synthetic import make_synthetic

    print(f"wrote {make_synthetic(args.out, per_class=args.per_class, seed=args.seed, colour=args.colour)}")


def _preview(args: argparse.Namespace) -> None:
    import dataclasses

    from deepsea.data import TRAIN_RANGES, Preprocess, Rescale, scan_flat_folder, scan_labelled_folder
    from deepsea.data.sources import default_synthetic_dir
    from deepsea.plots import save_preview

    data = args.data or default_synthetic_dir()
    if not os.path.isdir(data):
        raise CommandError(f"image folder {data!r} does not exist or is not a folder")
    has_dirs = any(os.path.isdir(os.path.join(data, e)) for e in os.listdir(data))
    folder = scan_labelled_folder(data) if has_dirs else scan_flat_folder(data)
    try:
        pp = Preprocess(
            size=args.size,
            rescale=Rescale.parse(args.rescale),
            channels=args.channels,
            background=args.background,
            gray_to_rgb=True,
        )
        jitter = [float(v) for v in args.jitter.split(",")] if args.jitter else [0.0] * 4
        if len(jitter) != 4:
            raise UserError(f"--jitter takes 4 values (brightness,contrast,saturation,hue), got {args.jitter!r}")
        names = ("brightness", "contrast", "saturation", "hue")
        ranges = dataclasses.replace(TRAIN_RANGES, **dict(zip(names, jitter, strict=True)))
    except ValueError as e:
        raise CommandError(str(e)) from None
    out = save_preview(folder, args.out, pp, ranges, n_images=args.images, n_augmented=args.augmented, seed=args.seed)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
