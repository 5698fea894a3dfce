"""Times an experiment's real training step: images/s, GFLOP/s, the symmetry ops' share, compile time.

``deepsea bench EXPERIMENT [--set key=value ...]`` builds the experiment's
model, optimiser and jitted training step (:func:`deepsea.train.make_train_step`,
the one ``deepsea train`` runs) at its batch and input size, on random data,
and prints one JSON line per round.  FLOPs are counted analytically from the
forward pass's convolutions and matrix products (training = 3 x forward).
The symmetry share is the forward+backward time of every slice, roll and pool
of the model, each timed alone at its shape in the network, over the step time.

``--torch PYTHON`` also runs the PyTorch reference of convroll4
(``../shared/bench/torch_convroll.py``, at the experiment's size, width and
batch) with that interpreter, interleaved round by round with ours, and prints
the ratio of the medians.  Only compare like with like: the reference is the
published convroll4 (no batch norm, no size features).

  deepsea bench experiments/convroll4.py --set data.size=47 --set model.width=0.5 --torch /path/to/torch/python

``--compare KEY=VALUE[,KEY=VALUE]`` (repeatable) also builds the step with those overrides and times it in the
same process between our rounds: an A/B that the machine's drift between processes does not blur.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deepsea import layers
from deepsea.configs import load_experiment_with
from deepsea.cost import count_flops, flops_per_image, match_width
from deepsea.models import build_model
from deepsea.step import create_train_state, example_inputs, forward, make_train_step
from deepsea.tools.timing import time_call

__all__ = ["add_step_arguments", "count_flops", "match_step_time", "run_ours", "run_torch", "symmetry_op_times"]

DEFAULT_TORCH_SCRIPT = os.path.join("..", "shared", "bench", "torch_convroll.py")
_SYMMETRY_LAYERS = (layers.Slice, layers.Roll, layers.ConvRoll, layers.Pool)


def symmetry_op_times(model: nn.Module, variables: Any, batch: dict[str, np.ndarray], repeats: int = 5) -> list[dict]:
    """Forward+backward time of every slice/roll/pool layer of ``model``, each alone at its input shape."""
    calls: list[tuple[nn.Module, tuple[int, ...], Any]] = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, _SYMMETRY_LAYERS) and context.method_name == "__call__":
            calls.append((context.module.clone(parent=None), args[0].shape, args[0].dtype))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        # the training-mode forward: what the timed step runs (an OrbitAverage evaluates 8 copies only in eval mode)
        jax.eval_shape(lambda v, b: forward(model, v, b, True, jax.random.key(0)), variables, batch)
    rows = []
    rng = np.random.default_rng(0)
    for module, shape, dtype in calls:
        x = jnp.asarray(rng.standard_normal(shape), dtype)
        fn = lambda x, m=module: m.apply({}, x)  # noqa: E731
        ct = jnp.asarray(rng.standard_normal(jax.eval_shape(fn, x).shape), dtype)

        @jax.jit
        def fwd_bwd(x, ct, fn=fn):
            y, vjp = jax.vjp(fn, x)
            return y, vjp(ct)

        seconds = time_call(fwd_bwd, x, ct, repeats=repeats)
        rows.append({"layer": type(module).__name__, "in_shape": list(shape), "fwdbwd_ms": seconds * 1e3})
    return rows


class _OurStep:
    """The experiment's compiled training step on a fixed random batch, ready to be timed repeatedly."""

    def __init__(self, cfg: Any, batch_size: int, num_classes: int = 121):
        self.cfg = cfg
        self.batch_size = batch_size
        setup = create_train_state(cfg, num_classes)
        self.model = setup.model
        self.batch_np = example_inputs(cfg, batch_size, seed=0)
        self.batch_np["label"] = np.random.default_rng(0).integers(0, num_classes, batch_size).astype(np.int32)
        self.batch = {k: jnp.asarray(v) for k, v in self.batch_np.items()}
        self.state = setup.state
        variables = self.state.variables()
        # shapes only: the step donates the buffers
        self.variable_shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables)
        self.step_fn = make_train_step(setup.model, setup.optimizer, setup.schedule)
        self.rng = jax.random.key(1)
        self.params = sum(int(x.size) for x in jax.tree.leaves(self.state.params))

        # FLOPs of the step's forward with XLA's convolutions (counted from conv_general_dilated)
        reference = build_model({**dict(cfg.model.items()), "conv_impl": "xla"}, num_classes)
        fwd = lambda v, b: forward(reference, v, b, True, jax.random.key(0))[0]  # noqa: E731
        self.train_flops = 3 * count_flops(fwd, variables, self.batch)
        self.cost = flops_per_image(cfg, num_classes)
        t0 = time.perf_counter()
        self.state, metrics = self.step_fn(self.state, self.batch, self.rng)
        jax.block_until_ready(metrics)
        self.compile_s = time.perf_counter() - t0

    def time_steps(self, steps: int) -> float:
        times = []
        for i in range(steps + 2):
            t0 = time.perf_counter()
            self.state, metrics = self.step_fn(self.state, self.batch, self.rng)
            jax.block_until_ready(metrics)
            if i >= 2:
                times.append(time.perf_counter() - t0)
        return statistics.median(times)


def run_ours(step: _OurStep, steps: int) -> dict[str, Any]:
    """One round: the median step time of our training step, as a JSON-able record."""
    seconds = step.time_steps(steps)
    cfg = step.cfg
    return {
        "impl": "deepsea",
        "experiment": cfg.name,
        "model": cfg.model.name,
        "symmetry": cfg.model.symmetry,
        "roll_impl": cfg.model.roll_impl,
        "max_pool_impl": cfg.model.max_pool_impl,
        "precision": cfg.model.precision,
        "size": cfg.data.size,
        "width": cfg.model.width,
        "batch": step.batch_size,
        "params": step.params,
        "compile_s": round(step.compile_s, 2),
        "step_s": round(seconds, 4),
        "images_per_s": round(step.batch_size / seconds, 1),
        "gflop_per_step": round(step.train_flops / 1e9, 2),
        "gflop_per_s": round(step.train_flops / seconds / 1e9, 1),
        **step.cost.to_dict(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def run_torch(
    python: str, script: str, size: int, width: float, batch: int, steps: int, bf16: bool = False
) -> dict[str, Any]:
    """One round of the PyTorch reference (its last stdout line is JSON); ``bf16``: with bfloat16 autocast, the
    fair reference for our bfloat16 step."""
    cmd = [python, script, "--size", str(size), "--width", str(width), "--batch", str(batch), "--steps", str(steps)]
    cmd += ["--bf16"] if bf16 else []
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def add_step_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments that pick a training step: the experiment, ``--set`` overrides, ``--small``, ``--batch``."""
    p.add_argument("experiment", help="experiments/<name>.py or a path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--small", action="store_true", help="the experiment's small-run configuration")
    p.add_argument("--batch", type=int, default=0, help="images per step (default: the experiment's)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_step_arguments(p)
    p.add_argument("--steps", type=int, default=10, help="timed steps per round (median)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, interleaved with the reference")
    p.add_argument("--torch", default="", metavar="PYTHON", help="a Python with torch: also time the reference")
    p.add_argument("--torch-script", default=DEFAULT_TORCH_SCRIPT)
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="also time the step with these overrides, in the same process, interleaved round by round",
    )
    p.add_argument(
        "--match-flops",
        default="",
        metavar="OTHER",
        help="search model.width so that a training step's FLOPs per image equal OTHER experiment's",
    )
    p.add_argument(
        "--match-time",
        default="",
        metavar="OTHER",
        help="search model.width so that the measured step time per image equals OTHER experiment's (the FLOPs "
        "match first, then timed steps near it)",
    )
    p.add_argument("--match-rounds", type=int, default=3, help="--match-time: timed pairs per width (median ratio)")
    p.add_argument("--no-ops", action="store_true", help="skip timing the symmetry ops")
    p.add_argument("--out", default="", help="append the JSON lines to this file")
    p.add_argument("--plot", default="", metavar="PNG", help="draw images/s per round (ours, variants, PyTorch)")


def _width_of(args: argparse.Namespace, width: float) -> Any:
    return load_experiment_with(args.experiment, [*args.set, f"model.width={width}"], args.small)


def match_flops(args: argparse.Namespace, other: Any) -> tuple[float, float]:
    """The width of ``args.experiment`` whose training FLOPs per image match ``other``'s config; printed as JSON."""
    target = flops_per_image(other).train_forward_flops
    cost = lambda w: flops_per_image(_width_of(args, w)).train_forward_flops  # noqa: E731
    width, flops = match_width(cost, target, rel_tol=0.005, max_evals=30)
    print(json.dumps({"match": "flops", "other": other.name, "other_mflop_per_image": round(target / 1e6, 2),
                      "width": width, "mflop_per_image": round(flops / 1e6, 2),
                      "ratio": round(flops / target, 4)}), flush=True)  # fmt: skip
    return width, flops


def match_step_time(args: argparse.Namespace, other: Any) -> float:
    """The width of ``args.experiment`` whose measured step time per image matches ``other``'s config: starts
    from the FLOPs match and searches timed steps in ``[width / 3, width * 1.5]``.  Each candidate is timed
    ``--match-rounds`` times, each right after the reference, and the search matches the median of their ratios to
    1, so neither the machine's drift nor one noisy round moves the answer; every timing is printed."""
    flops_width, _ = match_flops(args, other)
    batch_other = args.batch or other.train.batch_size
    ref = _OurStep(other, batch_other)

    def cost(w: float) -> float:
        cfg = _width_of(args, w)
        batch = args.batch or cfg.train.batch_size
        step = _OurStep(cfg, batch)
        ratios = []
        for r in range(args.match_rounds):
            ref_s = ref.time_steps(args.steps) / batch_other
            ours_s = step.time_steps(args.steps) / batch
            ratios.append(ours_s / ref_s)
            print(json.dumps({"match": "time", "width": w, "round": r, "images_per_s": round(1 / ours_s, 1),
                              "other_images_per_s": round(1 / ref_s, 1), "ratio_to_other": round(ref_s / ours_s, 3)}),
                  flush=True)  # fmt: skip
        return statistics.median(ratios)

    width, ratio = match_width(cost, 1.0, flops_width / 3, flops_width * 1.5, rel_tol=0.03)
    print(json.dumps({"match": "time", "other": other.name, "width": width, "speed_ratio_to_other": round(1 / ratio, 3),
                      "set": f"model.width={width}"}), flush=True)  # fmt: skip
    return width


def main_with_args(args: argparse.Namespace) -> None:
    if args.match_flops or args.match_time:
        other = load_experiment_with(args.match_flops or args.match_time, [], args.small)
        width = match_flops(args, other)[0] if args.match_flops else match_step_time(args, other)
        args.set = [*args.set, f"model.width={width}"]
    cfg = load_experiment_with(args.experiment, args.set, args.small)
    batch = args.batch or cfg.train.batch_size
    step = _OurStep(cfg, batch)
    variants = [
        (spec, _OurStep(load_experiment_with(args.experiment, [*args.set, *spec.split(",")], args.small), batch))
        for spec in args.compare
    ]
    lines: list[dict[str, Any]] = []
    ours, theirs = [], []
    variant_times: dict[str, list[float]] = {spec: [] for spec, _ in variants}
    for r in range(args.rounds):
        rec = run_ours(step, args.steps) | {"round": r}
        ours.append(rec["step_s"])
        lines.append(rec)
        print(json.dumps(rec), flush=True)
        for spec, other in variants:
            rec = run_ours(other, args.steps) | {"round": r, "variant": spec}
            variant_times[spec].append(rec["step_s"])
            lines.append(rec)
            print(json.dumps(rec), flush=True)
        if args.torch:
            bf16 = cfg.model.precision == "bfloat16"
            t = run_torch(args.torch, args.torch_script, cfg.data.size, cfg.model.width, batch, args.steps, bf16)
            t["round"] = r
            theirs.append(t["step_s"])
            lines.append(t)
            print(json.dumps(t), flush=True)
    summary: dict[str, Any] = {
        "summary": True,
        "experiment": cfg.name,
        "size": cfg.data.size,
        "width": cfg.model.width,
        "batch": batch,
        "images_per_s": round(batch / statistics.median(ours), 1),
        "gflop_per_s": round(step.train_flops / statistics.median(ours) / 1e9, 1),
        "compile_s": round(step.compile_s, 2),
    }
    if variants:
        summary["variants"] = {
            spec: {
                "images_per_s": round(batch / statistics.median(t), 1),
                "speedup_of_base": round(statistics.median(t) / statistics.median(ours), 3),
            }
            for spec, t in variant_times.items()
        }
    if theirs:
        summary["torch_images_per_s"] = round(batch / statistics.median(theirs), 1)
        summary["ratio_vs_torch"] = round(statistics.median(theirs) / statistics.median(ours), 3)
    if not args.no_ops and cfg.model.symmetry:
        ops_rows = symmetry_op_times(step.model, step.variable_shapes, step.batch_np)
        sym_ms = sum(r["fwdbwd_ms"] for r in ops_rows)
        summary["symmetry_ms"] = round(sym_ms, 2)
        summary["symmetry_share"] = round(sym_ms / 1e3 / statistics.median(ours), 4)
        summary["symmetry_ops"] = ops_rows
    lines.append(summary)
    print(json.dumps(summary), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            for rec in lines:
                f.write(json.dumps(rec) + "\n")
    if args.plot:
        from deepsea.plots import plot_rounds

        plot_rounds(lines, args.plot)
        print(f"plot: {args.plot}", flush=True)
