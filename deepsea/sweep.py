"""Sweeps: every combination of a grid of config values, times seeds, trained at equal budgets and summarised.

``deepsea sweep EXPERIMENT --grid key=v1,v2 [--grid ...] [--seeds K] (--epochs E | --budget-minutes M) --out DIR``
trains the runs one after the other into ``DIR/runs/<variant>_s<seed>``, each resumable (a killed sweep started
again skips the finished runs and resumes the one it was in; started again with more ``--seeds`` it adds theirs,
with more ``--tta`` settings it scores the finished runs with them too),
evaluates each best checkpoint (plain and with the
asked TTA settings), appends one JSON line per run to ``DIR/results.jsonl`` (the variant's overrides, seed,
steps, images seen, wall time, scores) and rewrites ``DIR/summary.md`` (mean and spread over seeds per variant)
with ``DIR/curves.png`` (validation log loss against steps) and ``DIR/bars.png`` (mean log loss with its spread)
after every run.

Equal budgets: ``epochs`` gives every run the steps that show it that many passes over its training images (the
same images seen whatever its batch size, within one batch); ``budget_minutes`` gives every run the same wall time
on the machine that trains it (``train.budget_minutes``: the step time is measured at the start of each run).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from deepsea.errors import UserError

__all__ = ["SweepRun", "expand_grid", "plan_sweep", "run_sweep", "summarize"]


def _split_values(text: str) -> list[str]:
    """``v1,v2,...`` split on the commas outside brackets and quotes (so ``((16,), (32,))`` stays one value)."""
    out, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    if depth or quote or any(not v for v in out):
        raise UserError(f"cannot read the grid values {text!r}: unbalanced brackets or quotes, or an empty value")
    return out


def expand_grid(grids: Sequence[str]) -> list[dict[str, str]]:
    """``["a=1,2", "b=x,y"]`` -> the four combinations ``{"a": "1", "b": "x"}``, ... in order (the last key
    varying fastest); no grid: one empty combination."""
    keys, values = [], []
    for g in grids:
        key, sep, rest = g.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--grid expects key=v1,v2,..., got {g!r}")
        if key in keys:
            raise UserError(f"--grid names {key!r} twice")
        keys.append(key)
        values.append(_split_values(rest))
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


def _slug(overrides: dict[str, str]) -> str:
    if not overrides:
        return "base"
    parts = [f"{k.split('.')[-1]}={v}" for k, v in overrides.items()]
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", "_".join(parts)).strip("_")[:120]


@dataclasses.dataclass(frozen=True)
class SweepRun:
    variant: str  # the overrides as a name (a folder name)
    overrides: dict[str, str]
    seed: int

    @property
    def name(self) -> str:
        return f"{self.variant}_s{self.seed}"


def plan_sweep(grids: Sequence[str], seeds: int = 1, first_seed: int = 0) -> list[SweepRun]:
    """Every combination of ``grids`` times seeds ``first_seed .. first_seed + seeds - 1`` (seed-major within a
    variant)."""
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    if first_seed < 0:
        raise UserError(f"--first-seed must be at least 0, got {first_seed}")
    combos = expand_grid(grids)
    names = [_slug(c) for c in combos]
    if len(set(names)) != len(names):
        raise UserError(f"two grid combinations give the same run name: {names}")
    seed_range = range(first_seed, first_seed + seeds)
    return [SweepRun(n, c, s) for n, c in zip(names, combos, strict=True) for s in seed_range]


def _config(experiment: str, base: Sequence[str], run: SweepRun, small: bool, data: str | None) -> Any:
    from deepsea.configs import apply_overrides, load_experiment_with

    config = load_experiment_with(experiment, list(base), small, data)
    apply_overrides(config, [f"{k}={v}" for k, v in run.overrides.items()] + [f"seed={run.seed}"])
    return config


def _epoch_steps(config: Any, epochs: float) -> int:
    """The steps that show a run ``epochs`` passes over its training images (at least one): the images training
    keeps after its class map, minimum class size and skipped files."""
    from deepsea.train import step_batch, training_split

    _, train_idx, _ = training_split(config)
    return max(1, math.ceil(epochs * len(train_idx) / step_batch(config)))


def _read_results(out: str) -> list[dict]:
    path = os.path.join(out, "results.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _score_added_tta(out: str, tta: Sequence[int | str], progress: bool) -> None:
    """Scores the finished runs with the TTA settings added since they ran (rewriting ``results.jsonl`` after each
    run, so a killed sweep keeps what it scored)."""
    from tqdm.auto import tqdm

    from deepsea.evaluation import evaluate_run
    from deepsea.runs import restore_run

    records = _read_results(out)
    todo = [(r, [t for t in tta if f"tta_{t}" not in r]) for r in records]
    todo = [(r, missing) for r, missing in todo if missing]
    for record, missing in tqdm(todo, desc="added TTA", unit="run", disable=not progress or not todo):
        restored = restore_run(os.path.join(out, "runs", record["name"]))
        for t in missing:
            record[f"tta_{t}"] = evaluate_run(restored, t, progress=False).rows[-1].to_dict()
        path = os.path.join(out, "results.jsonl")
        with open(path + ".tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        os.replace(path + ".tmp", path)
    if todo:
        summarize(out)


def run_sweep(
    experiment: str,
    grids: Sequence[str],
    out: str,
    seeds: int = 1,
    epochs: float | None = None,
    budget_minutes: float | None = None,
    tta: Sequence[int | str] = (),
    base: Sequence[str] = (),
    small: bool = False,
    data: str | None = None,
    progress: bool = True,
    stop_after_runs: int | None = None,
    steps: int | None = None,
    first_seed: int = 0,
) -> list[dict]:
    """Runs the sweep (see the module's docstring); returns every finished run's record.  ``first_seed``: the
    seeds are ``first_seed ..`` (more seeds of a study trained elsewhere, in a folder of their own).
    ``stop_after_runs``: stop after that many runs of this call, as if killed (for tests)."""
    from tqdm.auto import tqdm

    from deepsea.configs import apply_overrides
    from deepsea.evaluation import evaluate_run
    from deepsea.rundir import load_json
    from deepsea.runs import restore_run
    from deepsea.train import step_batch, train

    given = {"epochs": epochs, "budget_minutes": budget_minutes, "steps": steps}
    given = {k: v for k, v in given.items() if v is not None}
    if len(given) != 1:
        raise UserError("give the budget as exactly one of epochs, budget_minutes or steps")
    if any(v <= 0 for v in given.values()):
        raise UserError(f"the budget must be positive, got {given}")
    runs = plan_sweep(grids, seeds, first_seed)
    os.makedirs(out, exist_ok=True)
    sweep_file = os.path.join(out, "sweep.json")
    spec = {"experiment": os.path.abspath(experiment) if experiment.endswith(".py") else experiment,
            "grids": list(grids), "seeds": seeds, "first_seed": first_seed, "epochs": epochs,
            "budget_minutes": budget_minutes, "steps": steps,
            "tta": [str(t) for t in tta], "base": list(base), "small": small, "data": data}  # fmt: skip
    if os.path.exists(sweep_file):
        with open(sweep_file) as f:
            before = {"steps": None, "first_seed": 0, **json.load(f)}  # sweeps from before these fields
        same_file = os.path.basename(before["experiment"]) == os.path.basename(spec["experiment"])
        if same_file:  # the same experiment from another checkout (a moved or second clone) continues it
            before = {**before, "experiment": spec["experiment"]}
        if {**before, "seeds": seeds, "tta": spec["tta"]} != spec:
            raise UserError(
                f"{out} holds another sweep ({before}); continue it with the same arguments (more --seeds or --tta "
                "settings may be added) or use --out"
            )
        seeds = max(seeds, before["seeds"])
        spec["seeds"] = seeds
        spec["tta"] = list(dict.fromkeys([*before["tta"], *spec["tta"]]))  # every run scored with every setting
        runs = plan_sweep(grids, seeds, first_seed)
    tta = [int(t) if str(t).isdigit() else str(t) for t in spec["tta"]]
    with open(sweep_file, "w") as f:
        json.dump(spec, f, indent=1)
    _score_added_tta(out, tta, progress)
    done = {r["name"] for r in _read_results(out)}
    todo = [r for r in runs if r.name not in done]
    durations: list[float] = []
    with tqdm(total=len(runs), initial=len(runs) - len(todo), desc="sweep", unit="run", disable=not progress) as bar:
        for k, run in enumerate(todo):
            bar.set_postfix_str(f"run {len(runs) - len(todo) + k + 1} of {len(runs)}: {run.name}")
            config = _config(experiment, base, run, small, data)
            if epochs is not None:
                overrides = ["train.budget_minutes=0", f"train.steps={_epoch_steps(config, epochs)}"]
            elif steps is not None:
                overrides = ["train.budget_minutes=0", f"train.steps={steps}"]
            else:
                overrides = [f"train.budget_minutes={budget_minutes}"]
            apply_overrides(config, overrides)
            workdir = os.path.join(out, "runs", run.name)
            t0 = time.perf_counter()
            train(config, workdir, progress=False)
            wall = time.perf_counter() - t0
            restored = restore_run(workdir)
            rows = evaluate_run(restored, 0, progress=False).rows
            scores = {"plain": rows[0].to_dict()}
            for t in tta:
                scores[f"tta_{t}"] = evaluate_run(restored, t, progress=False).rows[-1].to_dict()
            steps = int(load_json(os.path.join(workdir, "config.json"))["train"]["steps"])
            record = {
                "name": run.name,
                "variant": run.variant,
                "overrides": run.overrides,
                "seed": run.seed,
                "steps": steps,
                "batch_size": step_batch(config),
                "images_seen": steps * step_batch(config),
                "wall_s": wall,
                "best_step": restored.step,
                **scores,
            }
            with open(os.path.join(out, "results.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
            summarize(out)
            durations.append(wall)
            bar.update(1)
            left = len(todo) - k - 1
            bar.write(f"{run.name}: log loss {scores['plain']['log_loss']:.4f} in {wall / 60:.1f} min; "
                      f"about {left * np.mean(durations) / 60:.0f} min left")  # fmt: skip
            if stop_after_runs is not None and k + 1 >= stop_after_runs:
                break
    return _read_results(out)


def _aggregate(records: list[dict]) -> list[dict]:
    """Per variant (in first-seen order): the seeds, and the mean and spread (sample standard deviation; 0 for one
    seed) of every score, steps, images seen and wall time."""
    variants: dict[str, list[dict]] = {}
    for r in records:
        variants.setdefault(r["variant"], []).append(r)
    out = []
    for name, rs in variants.items():
        row: dict[str, Any] = {"variant": name, "overrides": rs[0]["overrides"], "seeds": len(rs)}
        for key in ("steps", "images_seen", "wall_s"):
            row[key] = float(np.mean([r[key] for r in rs]))
        for setting in [k for k in rs[0] if k == "plain" or k.startswith("tta_")]:
            for metric in ("log_loss", "accuracy", "top5"):
                v = np.array([r[setting][metric] for r in rs], np.float64)
                row[f"{setting}.{metric}"] = float(v.mean())
                row[f"{setting}.{metric}.spread"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        out.append(row)
    return out


def summarize(out: str) -> str:
    """Writes ``summary.md``, ``curves.png`` and ``bars.png`` from ``results.jsonl``; returns the Markdown."""
    records = _read_results(out)
    rows = _aggregate(records)
    settings = [k for k in (records[0] if records else {}) if k == "plain" or k.startswith("tta_")]
    head = ["variant", "seeds", "steps", "images seen", "minutes"]
    for s in settings:
        label = "plain" if s == "plain" else s.replace("tta_", "TTA ")
        head += [f"{label} log loss", f"{label} accuracy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["variant"],
            str(r["seeds"]),
            f"{r['steps']:.0f}",
            f"{r['images_seen']:.0f}",
            f"{r['wall_s'] / 60:.1f}",
        ]
        for s in settings:
            ll, sp = r[f"{s}.log_loss"], r[f"{s}.log_loss.spread"]
            acc = r[f"{s}.accuracy"]
            cells += [f"{ll:.4f} ± {sp:.4f}" if r["seeds"] > 1 else f"{ll:.4f}", f"{acc:.1%}"]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n\n(mean ± sample standard deviation over seeds)\n"
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text)
    if records:
        from deepsea.plots import plot_sweep

        plot_sweep(out, records, rows)
    return text
