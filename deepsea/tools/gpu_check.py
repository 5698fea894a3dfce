"""The prepared device call (issue 28): in one call, the environment, the compiled kernel suite, the convroll4
step table (C4 and D4, float32 and bfloat16, XLA and Pallas rolls: images/s), then convroll4 trained on the NDSB
images for the minutes left, with its validation figures beside the seed's and the minutes its full schedule
would need at the measured rate.

Run it through ``tools/gpu_check.sh MINUTES`` (which installs the carried wheels and unpacks the carried images
first; ``docs/gpu.md``).  A failing stage is reported and the next one still runs, so one call returns everything
that worked.  Everything lands in at most eight files under ``--out`` (the device tool brings back no more):
``FILES``.  ``--small`` runs the same stages on tiny networks, on the CPU too: that is how the tests check the
call before a device is lent.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

__all__ = ["FILES", "main_with_args"]

_EXPERIMENTS = os.path.join(os.path.dirname(__file__), "..", "..", "experiments")
EXPERIMENT = os.path.join(_EXPERIMENTS, "convroll4_gpu.py")
FILES = (
    "gpu_check.log",  # written by tools/gpu_check.sh
    "env.json",
    "kernels.txt",
    "bench.jsonl",
    "summary.json",
    "summary.md",
    "metrics.png",
    "run.tar.gz",
)
SEED_FIGURES = {"accuracy": 0.82, "top5": 0.98}  # the seed's convroll4: "over 82%" / "over 98%" on its validation
BENCH_GRID = [(g, p, r) for g in ("c4", "d4") for p in ("float32", "bfloat16") for r in ("xla", "pallas")]
SMALL_BENCH_GRID = [("c4", "float32", "xla")]  # --small: one row (the kernel stage runs the Pallas rolls)
KERNELS_TIMEOUT_S = 150.0
TRAIN_MIN_S = 120.0  # below this the training stage is skipped: too short to say anything
RESERVE_S = 45.0  # kept after training for the final summary and packing
SMALL_SCALE = 0.05  # --small: the margins above, scaled to its tiny runs
SMALL_TRAIN_MINUTES = 0.05  # --small: its training run's budget, whatever the call has left
SMALL_KERNEL_TESTS = "test_block_size_choice"  # --small: the stage's plumbing (the suite runs the kernels)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="the folder for the results (the device call's $OUT)")
    p.add_argument("--minutes", type=float, required=True, help="the whole call's minutes, setup included")
    p.add_argument("--started", type=float, default=0.0, help="the call's start (seconds since the epoch)")
    p.add_argument("--data", default="", help="the labelled images (default: the experiment's)")
    p.add_argument("--small", action="store_true", help="tiny networks and runs: the CPU check of this call")
    p.add_argument("--bench-steps", type=int, default=20, help="timed steps per bench row (median)")


class _Call:
    """The call's deadline, its stages' statuses and where its files go."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = args.out
        self.deadline = (args.started or time.time()) + 60.0 * args.minutes
        self.stages: dict[str, dict[str, Any]] = {}
        os.makedirs(self.out, exist_ok=True)

    def left(self) -> float:
        return self.deadline - time.time()

    def margin(self, seconds: float) -> float:
        return seconds * SMALL_SCALE if self.args.small else seconds

    def path(self, name: str) -> str:
        assert name in FILES, name
        return os.path.join(self.out, name)

    def stage(self, name: str, fn: Callable[[], Any]) -> Any:
        print(f"== {name} ({self.left():.0f} s left)", flush=True)
        t0 = time.perf_counter()
        try:
            result, status = fn(), "ok"
        except Exception as e:  # a stage's failure is reported; the next stage still runs
            traceback.print_exc()
            result, status = None, f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        self.stages[name] = {"status": status, "seconds": round(time.perf_counter() - t0, 1)}
        print(f"== {name}: {status}", flush=True)
        return result


def _environment(call: _Call) -> dict[str, Any]:
    from deepsea.info import collect

    env = collect()
    smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True) if _has("nvidia-smi") else None
    env["nvidia_smi"] = smi.stdout.strip() if smi else "not found"
    with open(call.path("env.json"), "w") as f:
        json.dump(env, f, indent=1)
    print(json.dumps({k: env[k] for k in ("versions", "devices", "default_backend")}), flush=True)
    return env


def _has(program: str) -> bool:
    return any(os.access(os.path.join(d, program), os.X_OK) for d in os.environ.get("PATH", "").split(os.pathsep))


def _kernel_suite(call: _Call) -> dict[str, Any]:
    """``tests/test_kernels.py`` in a subprocess (compiled on a GPU); its output in ``kernels.txt``."""
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0" if call.args.small else "8"]
    cmd += ["-W", "default::DeprecationWarning", "tests/test_kernels.py"]  # another JAX may deprecate what we use
    cmd += ["-k", SMALL_KERNEL_TESTS] if call.args.small else []
    timeout = max(10.0, min(KERNELS_TIMEOUT_S, call.left() - call.margin(TRAIN_MIN_S + RESERVE_S)))
    try:
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout)
        text, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        text, rc = f"{_text(e.stdout)}{_text(e.stderr)}\nstopped after {timeout:.0f} s", -1
    with open(call.path("kernels.txt"), "w") as f:
        f.write(" ".join(cmd) + "\n\n" + text)
    tail = [line for line in text.strip().splitlines() if " passed" in line or " failed" in line or "error" in line]
    result = {"returncode": rc, "result": tail[-1] if tail else text.strip().splitlines()[-1:]}
    print(json.dumps(result), flush=True)
    if rc != 0:
        raise RuntimeError(f"the kernel suite ended with {rc}: {result['result']}")
    return result


def _text(b: bytes | str | None) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def _bench(call: _Call) -> list[dict[str, Any]]:
    """The training step of convroll4 (the call's batch and size) for every (symmetry, precision, roll) of
    ``BENCH_GRID``; a row that fails records its error; rows stop when only the training's minutes are left."""
    from deepsea.configs import load_experiment_with
    from deepsea.tools.bench import _OurStep, run_ours

    rows = []
    with open(call.path("bench.jsonl"), "w") as f:
        for group, precision, roll in SMALL_BENCH_GRID if call.args.small else BENCH_GRID:
            if call.left() < call.margin(TRAIN_MIN_S + RESERVE_S + 30):
                rows.append({"symmetry": group, "precision": precision, "roll_impl": roll, "error": "no time left"})
                continue
            sets = [f"model.symmetry={group}", f"model.precision={precision}", f"model.roll_impl={roll}"]
            try:
                cfg = load_experiment_with(EXPERIMENT, sets, call.args.small)
                rec = run_ours(_OurStep(cfg, cfg.train.batch_size), call.args.bench_steps)
            except Exception as e:
                rec = {
                    "symmetry": group,
                    "precision": precision,
                    "roll_impl": roll,
                    "error": f"{type(e).__name__}: {e}",
                }
            rows.append(rec)
            f.write(json.dumps(rec) + "\n")
            f.flush()
            print(json.dumps(rec), flush=True)
    return rows


def _train(call: _Call, workdir: str) -> dict[str, Any]:
    """convroll4_gpu for the minutes left (less the reserve): the budget measures the step and scales the
    schedule; the run's figures and the full schedule's device-minutes at the measured rate."""
    from deepsea.configs import load_experiment_with
    from deepsea.rundir import load_json, read_metrics
    from deepsea.train import train

    full_steps = load_experiment_with(os.path.join(_EXPERIMENTS, "convroll4.py")).train.steps  # the seed's 215k
    seconds = call.left() - call.margin(RESERVE_S)
    if seconds < call.margin(TRAIN_MIN_S):
        raise RuntimeError(f"only {seconds:.0f} s left for training (at least {call.margin(TRAIN_MIN_S):.0f} s)")
    minutes = min(seconds / 60.0, SMALL_TRAIN_MINUTES) if call.args.small else seconds / 60.0
    cfg = load_experiment_with(EXPERIMENT, [f"train.budget_minutes={minutes:.3f}"], call.args.small, call.args.data)
    print(f"training {cfg.name} for {minutes:.2f} minutes on {cfg.data.path or 'the synthetic dataset'}", flush=True)
    result = train(cfg, workdir)
    budget = load_json(os.path.join(workdir, "budget.json"))
    rows = [r for r in read_metrics(workdir) if r["split"] == "train"]
    waits = [r["data_wait_share"] for r in rows if "data_wait_share" in r]
    rates = [r["images_per_s"] for r in rows]
    best, final = result.best, result.final
    return {
        "experiment": cfg.name,
        "data": cfg.data.path or "synthetic",
        "minutes": round(minutes, 2),
        "steps": budget["steps"],
        "step_s": budget["step_s"],
        "lr_drops_at": budget["lr_drops_at"],
        "images_per_s": round(statistics.median(rates), 1) if rates else None,
        "data_wait_share": round(statistics.median(waits), 4) if waits else None,
        "final": final.to_dict() if final else None,
        "best": best.to_dict() if best else None,
        "seed": SEED_FIGURES,
        "full_schedule_steps": full_steps,
        "full_schedule_device_minutes": round(full_steps * budget["step_s"] / 60.0, 1),
    }


def _markdown(call: _Call, bench: list[dict[str, Any]] | None, trained: dict[str, Any] | None) -> str:
    lines = ["# Device call: convroll4", "", "| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {k} | {v['status']} | {v['seconds']} |" for k, v in call.stages.items()]
    if bench:
        lines += ["", "| symmetry | precision | rolls | images/s | step ms | compile s |", "|---|---|---|---|---|---|"]
        for r in bench:
            if "error" in r:
                lines.append(f"| {r['symmetry']} | {r['precision']} | {r['roll_impl']} | {r['error']} | | |")
            else:
                lines.append(
                    f"| {r['symmetry']} | {r['precision']} | {r['roll_impl']} | {r['images_per_s']} | "
                    f"{1e3 * r['step_s']:.2f} | {r['compile_s']} |"
                )
    if trained:
        best = trained["best"] or {}
        lines += [
            "",
            f"Training: {trained['steps']} steps in {trained['minutes']} minutes ({trained['step_s'] * 1e3:.1f} ms a "
            f"step, {trained['images_per_s']} images/s, loader wait {trained['data_wait_share']}), rate drops at "
            f"{trained['lr_drops_at']}.",
            "",
            "| | log loss | accuracy | top-5 |",
            "|---|---|---|---|",
            f"| this call (best validation) | {best.get('log_loss', float('nan')):.4f} | "
            f"{best.get('accuracy', float('nan')):.4f} | {best.get('top5', float('nan')):.4f} |",
            f"| the seed's convroll4 ({trained['full_schedule_steps']} steps) | | > {SEED_FIGURES['accuracy']} | "
            f"> {SEED_FIGURES['top5']} |",
            "",
            f"The full schedule ({trained['full_schedule_steps']} steps) at this rate: "
            f"{trained['full_schedule_device_minutes']} device-minutes.",
        ]
    return "\n".join(lines) + "\n"


def _pack(workdir: str, path: str) -> None:
    """The run folder without its checkpoints (too large to come back): config, budget, metrics, split."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(workdir, arcname="run", filter=lambda t: None if "checkpoints" in t.name or "/best" in t.name else t)


def main_with_args(args: argparse.Namespace) -> None:
    call = _Call(args)
    call.stage("environment", lambda: _environment(call))
    call.stage("kernels", lambda: _kernel_suite(call))
    bench = call.stage("bench", lambda: _bench(call))
    with tempfile.TemporaryDirectory(prefix="convroll4_gpu_") as workdir:
        trained = call.stage("train", lambda: _train(call, workdir))
        if os.path.exists(os.path.join(workdir, "metrics.png")):
            with open(os.path.join(workdir, "metrics.png"), "rb") as src, open(call.path("metrics.png"), "wb") as dst:
                dst.write(src.read())
        call.stage("pack", lambda: _pack(workdir, call.path("run.tar.gz")))
    summary = {"stages": call.stages, "bench": bench, "train": trained, "left_s": round(call.left(), 1)}
    with open(call.path("summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    md = _markdown(call, bench, trained)
    with open(call.path("summary.md"), "w") as f:
        f.write(md)
    print(md, flush=True)
    failed = [k for k, v in call.stages.items() if v["status"] != "ok"]
    if failed:
        raise SystemExit(f"deepsea gpu-check: stages that failed: {', '.join(failed)} (details above)")
