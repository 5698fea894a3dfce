"""Where an experiment's training step spends its time, layer by layer.

``deepsea profile EXPERIMENT [--set key=value ...]`` builds the step that ``deepsea bench`` times (the one
``deepsea train`` runs), traces a few steps with JAX's profiler and attributes every operation of the compiled step
to the model's layer it came from (the layer names in XLA's op metadata) and to a kind of work:

- oneDNN's primitives, called from XLA (:mod:`deepsea.backends.onednn`): forward, input gradient, kernel gradient,
  pooling; each call's own timer splits the kernel's reorders (to and from oneDNN's blocked layout) from the
  primitive, and names oneDNN's implementation (e.g. ``jit_bf16`` or ``brgconv``);
- XLA's own work between them: casts, layout moves (transposes, copies, the rolls' bit-pattern moves),
  reductions (bias gradients, the loss), elementwise work (activation derivatives, dropout, the optimizer) and
  matrix products (dense layers).

Times are per step and summed over XLA's threads (two operations that overlap both count), so the total can
exceed the step's wall time, which is printed beside it (measured without the profiler).

  deepsea profile experiments/convroll4.py --set data.size=47 --set model.width=0.5 --set model.precision=bfloat16

``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`` in the environment makes oneDNN pick the kernels of a CPU without AMX.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import json
import re
import tempfile
import time
from typing import Any

import jax

from deepsea.backends import onednn
from deepsea.configs import load_experiment_with
from deepsea.tools.bench import _OurStep, add_step_arguments

__all__ = ["CATEGORIES", "HloOp", "attribute", "compiled_ops", "profile_step"]

CATEGORIES = (
    "onednn_fwd",
    "onednn_input_grad",
    "onednn_kernel_grad",
    "onednn_pool",
    "xla_cast",
    "xla_layout",
    "xla_reduce",
    "xla_elementwise",
    "xla_matmul",
    "xla_other",
)
"""The kinds of work a step's time is split into (columns of the table)."""

_ONEDNN_TARGETS = (  # custom-call target prefixes, longest first
    ("deepsea_conv_bwd_weights", "onednn_kernel_grad"),
    ("deepsea_conv_bwd_data", "onednn_input_grad"),
    ("deepsea_conv_fwd", "onednn_fwd"),
    ("deepsea_max_pool", "onednn_pool"),
)
_LAYOUT_OPS = {"transpose", "copy", "rev", "bitcast_convert_type", "concatenate", "slice", "dynamic-slice",
               "dynamic_slice", "gather", "pad", "reshape", "broadcast_in_dim", "dynamic-update-slice",
               "dynamic_update_slice", "scatter-add", "scatter_add", "bitcast"}  # fmt: skip
_REDUCE_OPS = {"reduce_sum", "reduce_max", "reduce_min", "reduce", "argmax", "reduce-window", "select-and-scatter"}


@dataclasses.dataclass(frozen=True)
class HloOp:
    """One instruction of the compiled step: its opcode, custom-call target, and the op name of the JAX operation
    it came from (``jit(step)/transpose(jvp(Model))/conv2_0/...``)."""

    name: str
    opcode: str
    target: str
    op_name: str
    operands: tuple[str, ...] = ()


_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+) = (?P<rest>.*)$")


def _closing(text: str, start: int) -> int:
    """The index of the parenthesis that closes the one at ``text[start]`` (the end of ``text`` if none does)."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
    return len(text)


def _opcode(rest: str) -> tuple[str, tuple[str, ...]]:
    """The opcode after an instruction's result shape (a tuple shape may contain spaces and parentheses), and the
    names of its operands."""
    if rest.startswith("("):
        rest = rest[_closing(rest, 0) + 1 :]
    else:
        rest = rest.split(" ", 1)[1] if " " in rest else ""
    m = re.match(r"\s*([\w\-]+)\(", rest)
    if not m:
        return "", ()
    return m.group(1), tuple(re.findall(r"%([\w.\-]+)", rest[m.end() : _closing(rest, m.end() - 1)]))


def compiled_ops(hlo_text: str) -> dict[str, HloOp]:
    """The instructions of a compiled module's text (``compiled.as_text()``), by name; fused computations' inner
    instructions are left out (their fusion is what runs)."""
    ops: dict[str, HloOp] = {}
    fused = False
    for line in hlo_text.splitlines():
        if line and not line[0].isspace():  # a computation's header
            fused = line.startswith("%fused") or "fused_computation" in line.split("(")[0]
            continue
        m = _INSTRUCTION.match(line)
        if fused or not m:
            continue
        rest = m.group("rest")
        target = re.search(r'custom_call_target="([^"]*)"', rest)
        op_name = re.search(r'op_name="((?:[^"\\]|\\.)*)"', rest)
        opcode, operands = _opcode(rest)
        ops[m.group("name")] = HloOp(
            m.group("name"), opcode, target.group(1) if target else "", op_name.group(1) if op_name else "", operands
        )
    return _inherit_names(ops)


def _inherit_names(ops: dict[str, HloOp]) -> dict[str, HloOp]:
    """Gives instructions without an op name (XLA drops the metadata of some fusions, such as a custom gradient's
    activation derivative) the op name of the nearest consumer that has one, else of an operand, so that such a
    fusion counts with the layer whose gradient calls consume it."""
    users: dict[str, list[str]] = collections.defaultdict(list)
    for op in ops.values():
        for operand in op.operands:
            users[operand].append(op.name)
    named = {n: op.op_name for n, op in ops.items() if op.op_name}
    for _ in range(8):  # a few hops through copies and bitcasts
        changed = False
        for n, op in ops.items():
            if n in named:
                continue
            near = [named[u] for u in users.get(n, ()) if u in named] or [named[o] for o in op.operands if o in named]
            if near:
                named[n] = near[0]
                changed = True
        if not changed:
            break
    return {n: dataclasses.replace(op, op_name=named.get(n, op.op_name)) for n, op in ops.items()}


def _module_path(op_name: str) -> tuple[tuple[str, ...] | None, str]:
    """``(("conv2_0",), "backward")`` from ``jit(step)/transpose(jvp(Model))/conv2_0/...``: the modules an operation
    sits in (None outside the model: loss, optimizer) and its pass."""
    m = re.search(r"(transpose\()?jvp\((\w+)\)\)?/(.*)", op_name)
    if not m:
        return None, "backward" if "transpose(" in op_name else "forward"
    parts = [p for p in m.group(3).split("/") if p and not p.startswith(("jit(", "cond", "branch_"))]
    return tuple(parts[:-1]), "backward" if m.group(1) else "forward"


def _layer_names(paths: list[tuple[str, ...] | None]) -> list[str]:
    """Each path's layer: its first module below those every layer shares (a wrapper such as an orbit average's
    ``inner`` network); ``(model)`` for the operations of the model or the wrapper themselves, ``(loss,
    optimizer)`` outside the model."""
    nested = [p for p in paths if p]
    shared = nested[0] if nested else ()
    for path in nested[1:]:
        n = next((i for i, (a, b) in enumerate(zip(shared, path, strict=False)) if a != b), min(len(shared), len(path)))
        shared = shared[:n]
    while shared and len({p[len(shared)] for p in nested if len(p) > len(shared)}) < 2:
        shared = shared[:-1]  # a wrapper is looked through only where it holds several layers
    return ["(loss, optimizer)" if p is None else p[len(shared)] if len(p) > len(shared) else "(model)" for p in paths]


def _category(op: HloOp) -> str:
    for prefix, category in _ONEDNN_TARGETS:
        if op.target.startswith(prefix):
            return category
    primitive = op.op_name.rsplit("/", 1)[-1]
    if op.opcode == "convert" or primitive == "convert_element_type":
        return "xla_cast"
    if op.opcode in ("dot", "convolution") or primitive in ("dot_general", "conv_general_dilated"):
        return "xla_matmul"
    if op.opcode in _LAYOUT_OPS or primitive in _LAYOUT_OPS:
        return "xla_layout"
    if op.opcode in _REDUCE_OPS or primitive in _REDUCE_OPS:
        return "xla_reduce"
    if op.opcode in ("fusion", "add", "multiply", "select", "maximum", "compare", "divide", "subtract", "exponential"):
        return "xla_elementwise"
    return "xla_other"


def attribute(ops: dict[str, HloOp], op_ms: dict[str, float]) -> list[dict[str, Any]]:
    """Rows of ``layer``, ``pass`` and milliseconds per category (plus ``total``), from each instruction's time;
    instructions the profile names but the module text does not (runtime bookkeeping) go to ``(runtime)``."""
    table: dict[tuple[str, str], dict[str, float]] = collections.defaultdict(lambda: dict.fromkeys(CATEGORIES, 0.0))
    order: list[tuple[str, str]] = []
    found = [(name, ms, ops.get(name)) for name, ms in op_ms.items()]
    paths = [_module_path(op.op_name) if op else (None, "forward") for _, _, op in found]
    layers = _layer_names([path for path, _ in paths])
    for (_, ms, op), (_, pass_), layer in zip(found, paths, layers, strict=True):
        key = (layer, pass_) if op else ("(runtime)", "forward")
        if key not in table:
            order.append(key)
        table[key][_category(op) if op else "xla_other"] += ms
    rows = []
    for layer, pass_ in order:
        row = {"layer": layer, "pass": pass_, **{c: round(v, 3) for c, v in table[(layer, pass_)].items()}}
        row["total"] = round(sum(table[(layer, pass_)].values()), 3)
        rows.append(row)
    return rows


def _trace_op_ms(step: _OurStep, steps: int, module: str) -> dict[str, float]:
    """Milliseconds per step of each instruction of the step's ``module``, summed over threads, from a profile."""
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d)
        try:
            step.time_steps(steps)  # 2 warm-up steps + `steps` timed ones, all traced
        finally:
            jax.profiler.stop_trace()
        (path,) = glob.glob(f"{d}/**/*.xplane.pb", recursive=True)
        data = jax.profiler.ProfileData.from_file(path)
    total_ns: dict[str, float] = collections.defaultdict(float)
    runs: set[int] = set()
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                if "hlo_op" in stats and stats.get("hlo_module") == module:
                    total_ns[stats["hlo_op"]] += event.duration_ns
                    runs.add(stats.get("run_id", 0))
    n = max(len(runs), 1)
    return {name: ns / 1e6 / n for name, ns in total_ns.items()}


def profile_step(cfg: Any, batch: int, steps: int = 5) -> dict[str, Any]:
    """The per-layer profile of ``cfg``'s training step: ``rows`` (see :func:`attribute`), ``onednn`` (one row per
    primitive and shape, per step: implementation, reorder and primitive ms), the step's wall time without the
    profiler (``step_ms``) and the traced operations' total (``traced_ms``)."""
    step = _OurStep(cfg, batch)
    hlo = step.step_fn.lower(step.state, step.batch, step.rng).compile().as_text()
    ops = compiled_ops(hlo)
    module = re.match(r"HloModule ([^\s,]+)", hlo)
    if module is None:
        raise ValueError("the compiled step's text does not start with its HloModule name")
    step_ms = step.time_steps(steps) * 1e3
    onednn.primitive_times(reset=True)
    op_ms = _trace_op_ms(step, steps, module.group(1))
    calls = steps + 2
    prims = [
        {**r, "calls": r["calls"] / calls, "reorder_ms": r["reorder_ms"] / calls, "exec_ms": r["exec_ms"] / calls}
        for r in onednn.primitive_times(reset=True)
    ]
    rows = attribute(ops, op_ms)
    return {
        "experiment": cfg.name,
        "precision": cfg.model.precision,
        "batch": batch,
        "step_ms": round(step_ms, 2),
        "images_per_s": round(batch / step_ms * 1e3, 1),
        "traced_ms": round(sum(r["total"] for r in rows), 2),
        "rows": rows,
        "onednn": prims,
    }


def _totals(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {c: round(sum(r[c] for r in rows), 2) for c in (*CATEGORIES, "total")}


def format_profile(result: dict[str, Any]) -> str:
    """The profile as Markdown: the per-layer table (forward and backward rows), totals, and oneDNN's rows."""
    short = {c: c.replace("onednn_", "dnn ").replace("xla_", "xla ").replace("_grad", " grad") for c in CATEGORIES}
    head = "| layer | pass | " + " | ".join(short[c] for c in CATEGORIES) + " | total |"
    lines = [
        f"{result['experiment']} ({result['precision']}, batch {result['batch']}): step {result['step_ms']:.1f} ms "
        f"({result['images_per_s']:.1f} images/s) without the profiler; traced operations {result['traced_ms']:.1f}"
        " ms, summed over threads (ms per step)",
        "",
        head,
        "|" + "---|" * (len(CATEGORIES) + 3),
    ]
    for r in [*result["rows"], {"layer": "**all**", "pass": "", **_totals(result["rows"])}]:
        cells = " | ".join(f"{r[c]:.2f}" if r[c] else "" for c in CATEGORIES)
        lines.append(f"| {r['layer']} | {r['pass']} | {cells} | {r['total']:.2f} |")
    if result["onednn"]:
        lines += [
            "",
            "| oneDNN primitive | implementation | calls | reorder ms | primitive ms |",
            "|---|---|---|---|---|",
        ]
        for p in sorted(result["onednn"], key=lambda p: -p["exec_ms"]):
            lines.append(
                f"| {p['key']} | {p['impl']} | {p['calls']:.0f} | {p['reorder_ms']:.2f} | {p['exec_ms']:.2f} |"
            )
        reorder = sum(p["reorder_ms"] for p in result["onednn"])
        exec_ = sum(p["exec_ms"] for p in result["onednn"])
        lines.append(f"| **all** | | | {reorder:.2f} | {exec_:.2f} |")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_step_arguments(p)
    p.add_argument("--steps", type=int, default=5, help="profiled steps (after 2 warm-up steps)")
    p.add_argument("--out", default="", help="also write the Markdown table to this file")
    p.add_argument("--json", default="", help="also write the profile as JSON to this file")


def main_with_args(args: argparse.Namespace) -> None:
    cfg = load_experiment_with(args.experiment, args.set, args.small)
    t0 = time.perf_counter()
    result = profile_step(cfg, args.batch or cfg.train.batch_size, args.steps)
    text = format_profile(result)
    print(text, flush=True)
    print(f"\n({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
