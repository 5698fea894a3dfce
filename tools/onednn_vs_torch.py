"""Our convroll4 training step against PyTorch's, oneDNN primitive by primitive (issue 32: where does each step's
time go that the other spends differently?).

    .venv/bin/python tools/onednn_vs_torch.py --torch /path/to/torch/python [--set data.size=47 --set model.width=0.5]
        [--set model.precision=bfloat16] [--steps 6] [--out PAGE.md]

Runs ``deepsea bench EXPERIMENT`` and the PyTorch reference (``../shared/bench/torch_convroll.py``) one after the
other with ``ONEDNN_VERBOSE=1``: both libraries log every primitive they execute with its implementation and
milliseconds. Per primitive (kind, pass and problem), the table gives each side's implementation, calls per step and
milliseconds per step (median call times calls per step, so the first calls' code generation does not count); a
step is one call of the first layer's forward convolution (one per step on both sides). What is not a oneDNN
primitive (XLA's or PyTorch's own operations: PyTorch's pooling, rotations and elementwise work) does not appear;
the last row gives each side's whole step (median, logging included) for that. Run it alone on the cores.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import subprocess
import sys

from deepsea.configs import load_experiment_with

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_SCRIPT = os.path.join(ROOT, "..", "shared", "bench", "torch_convroll.py")
CONV = re.compile(r"mb(\d+)_(?:g\d+)?ic(\d+)oc(\d+)_ih(\d+)oh(\d+)kh(\d+)")


def parse(log: str) -> list[tuple[str, str, str, str, float]]:
    """(kind, pass, problem, implementation, ms) of each executed primitive in a ``ONEDNN_VERBOSE=1`` log (oneDNN
    3.2's ``onednn_verbose,exec,...`` and later versions' ``onednn_verbose,v1,primitive,exec,...``)."""
    out = []
    for line in log.splitlines():
        if not line.startswith("onednn_verbose,"):
            continue
        f = line.split(",")
        if "exec" not in f[:4]:
            continue
        i = f.index("exec")
        if len(f) < i + 10:
            continue
        kind, impl, prop, problem, ms = f[i + 2], f[i + 3], f[i + 4], f[i + 8], f[i + 9]
        try:
            out.append((kind, prop, problem, impl, float(ms)))
        except ValueError:
            continue
    return out


def short(kind: str, problem: str) -> str:
    m = CONV.search(problem)
    if kind == "convolution" and m:
        mb, ic, oc, ih, _, kh = m.groups()
        return f"{mb}x{ih}x{ih}x{ic}->{oc} k{kh}"
    return problem


def per_step(rows: list[tuple[str, str, str, str, float]]) -> dict[tuple[str, str, str], tuple[str, float, float]]:
    """{(kind, pass, problem): (implementation, calls per step, ms per step)}."""
    first = [r for r in rows if r[0] == "convolution" and r[1].startswith("forward") and "_ic1oc" in r[2]]
    if not first:
        raise SystemExit("no first-layer forward convolution (1 input channel) in the log: is oneDNN on?")
    steps = len(first)
    groups: dict[tuple[str, str, str], list[tuple[str, float]]] = collections.defaultdict(list)
    for kind, prop, problem, impl, ms in rows:
        groups[kind, prop, problem].append((impl, ms))
    out = {}
    for key, calls in groups.items():
        impls = collections.Counter(i for i, _ in calls)
        per = len(calls) / steps
        out[key] = (impls.most_common(1)[0][0], per, statistics.median(ms for _, ms in calls) * per)
    return out


def run(cmd: list[str]) -> tuple[str, str]:
    env = dict(os.environ, ONEDNN_VERBOSE="1")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if p.returncode:
        sys.stderr.write(p.stdout[-4000:] + p.stderr[-4000:])
        raise SystemExit(f"{' '.join(cmd)} exited with {p.returncode}")
    return p.stdout, p.stderr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--experiment", default="experiments/convroll4.py")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--torch", required=True, metavar="PYTHON", help="a Python with torch")
    p.add_argument("--torch-script", default=TORCH_SCRIPT)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--out", default="", help="also write the table to this markdown file")
    args = p.parse_args()

    sets = [a for s in args.set for a in ("--set", s)]
    deepsea = os.path.join(os.path.dirname(sys.executable), "deepsea")
    out, err = run([deepsea, "bench", args.experiment, *sets, "--rounds", "1", "--steps", str(args.steps), "--no-ops"])
    summary = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])
    cfg = load_experiment_with(args.experiment, args.set, False)
    bf16 = cfg.model.precision == "bfloat16"
    tcmd = [args.torch, args.torch_script, "--size", str(cfg.data.size), "--width", str(cfg.model.width)]
    tcmd += ["--batch", str(summary["batch"])]
    tout, terr = run([*tcmd, "--steps", str(args.steps), *(["--bf16"] if bf16 else [])])
    theirs_summary = json.loads([ln for ln in tout.splitlines() if ln.startswith("{")][-1])
    ours, theirs = per_step(parse(out + err)), per_step(parse(tout + terr))

    lines = [
        f"{args.experiment} {' '.join(args.set)} ({'bfloat16' if bf16 else 'float32'}, batch {summary['batch']}): "
        "oneDNN primitives per training step, ours against PyTorch's",
        "",
        "| primitive | pass | problem | ours: implementation | calls | ms | PyTorch: implementation | calls | ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted(set(ours) | set(theirs), key=lambda k: -max(ours.get(k, ("", 0, 0))[2], theirs.get(k, ("", 0, 0))[2]))
    total = [0.0, 0.0]
    for key in keys:
        cells = []
        for j, side in enumerate((ours, theirs)):
            if key in side:
                impl, calls, ms = side[key]
                total[j] += ms
                cells += [impl, f"{calls:.0f}", f"{ms:.2f}"]
            else:
                cells += ["", "", ""]
        lines.append(f"| {key[0]} | {key[1]} | {short(key[0], key[2])} | " + " | ".join(cells) + " |")
    lines.append(f"| **all oneDNN** | | | | | {total[0]:.1f} | | | {total[1]:.1f} |")
    ours_ms = summary["batch"] / summary["images_per_s"] * 1e3
    lines.append(f"| **step (with the log)** | | | | | {ours_ms:.1f} | | | {theirs_summary['step_s'] * 1e3:.1f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
