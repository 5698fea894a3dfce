"""Networks compared at equal compute: validation log loss against training minutes (the frontier), and where the
curves cross.

A study lists :class:`Arm` s: a network (a label) trained at a budget of ``minutes`` by a sweep folder (``deepsea
sweep ... --steps N``, the ``N`` steps measured on quiet cores to fill those minutes, or ``--budget-minutes``).
Each arm's runs give one point per seed at its budget; one network's arms at several budgets are its frontier,
since a run's schedule is fitted to its budget (a run's earlier validation passes, drawn as thin curves, come
before its learning rate decays, so they lie above the frontier).  ``deepsea frontier EXPERIMENT --root DIR --out
PAGE.md`` writes the table and the plot for an experiment module's ``frontier()``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from deepsea.errors import UserError
from deepsea.ledger import Ledger, Sweep, ledger_path, merge_ledgers, read_ledger, sweeps_on_disk, write_ledger

__all__ = ["Arm", "crossings", "extrapolated_crossing", "frontier_rows", "write_frontier_page"]


@dataclasses.dataclass(frozen=True)
class Arm:
    """``network`` trained for ``minutes`` (of quiet-core training time) by the sweep in ``root/sweep``."""

    network: str
    sweep: str
    minutes: float


def _cost(root: str, arm: Arm, record: dict, costs: dict[str, dict]) -> dict[str, Any]:
    """The run's width, parameters and MFLOP per image, from its folder's config where the folder is here, else
    from its ledger record (kept there when the folder was)."""
    from deepsea.cost import flops_per_image
    from deepsea.rundir import load_config

    run = os.path.join(root, arm.sweep, "runs", record["name"])
    if not os.path.exists(os.path.join(run, "config.json")):
        if "cost" not in record:
            raise UserError(f"{run}: no run folder (config.json) to size the run from, and no cost in its record")
        return record["cost"]
    config = load_config(run)
    with open(os.path.join(run, "classes.json")) as f:
        classes = len(json.load(f))
    key = json.dumps([config.model.to_dict(), classes], sort_keys=True, default=str)
    if key not in costs:
        cost = flops_per_image(config, classes)
        costs[key] = {
            "width": float(config.model.width),
            "params": cost.params,
            "train_mflop": cost.train_step_flops / 1e6,
            "predict_mflop": cost.predict_flops / 1e6,
        }
    return costs[key]


def _curve(root: str, arm: Arm, record: dict) -> list[list[float]]:
    """The run's validation passes as ``[step, log loss]`` pairs (kept in the ledger for the plot's thin curves)."""
    from deepsea.rundir import read_metrics

    metrics = read_metrics(os.path.join(root, arm.sweep, "runs", record["name"]))
    return [[m["step"], m["log_loss"]] for m in metrics if m.get("split") == "validation"]


def frontier_rows(root: str, arms: Sequence[Arm], ledger: Mapping[str, Sweep] | None = None) -> list[dict[str, Any]]:
    """One row per finished run: network, budget, seed, width, params, MFLOP per image (training step and
    prediction), images/s at the budget (steps x batch over the budget's seconds), steps, and every score.  Runs
    come from the sweeps under ``root`` and, where their folders are not there, from ``ledger`` (a page's ledger:
    ``deepsea.ledger``); each row's ``record`` is the run's record with its cost, as the ledger keeps it."""
    disk = {s: found for s, found in sweeps_on_disk(root).items() if s in {arm.sweep for arm in arms}}
    sweeps = merge_ledgers(disk, dict(ledger or {}))
    rows = []
    costs: dict[str, dict] = {}
    for arm in arms:
        on_disk = {r["name"] for r in disk.get(arm.sweep, Sweep()).records}
        for rec in sweeps.get(arm.sweep, Sweep()).records:
            if rec["name"] in on_disk:
                rec = {**rec, "cost": _cost(root, arm, rec, costs), "curve": _curve(root, arm, rec)}
            if rec.get("cost") is None:
                raise UserError(f"the ledger's run {arm.sweep}/{rec['name']} has no cost: rerun it")
            scores = {k: v for k, v in rec.items() if k == "plain" or k.startswith("tta_")}
            rows.append({
                "network": arm.network, "minutes": arm.minutes, "sweep": arm.sweep, "seed": rec["seed"],
                **rec["cost"], "images_per_s": rec["images_seen"] / (arm.minutes * 60), "steps": rec["steps"],
                "curve": rec.get("curve", []), "from_ledger": rec["name"] not in on_disk, "record": rec, **scores,
            })  # fmt: skip
    return rows


def _means(rows: Sequence[dict], setting: str = "plain") -> dict[str, dict[float, float]]:
    """network -> budget -> mean log loss over its seeds."""
    out: dict[str, dict[float, list[float]]] = {}
    for r in rows:
        if setting in r:
            out.setdefault(r["network"], {}).setdefault(r["minutes"], []).append(r[setting]["log_loss"])
    return {n: {m: float(np.mean(v)) for m, v in sorted(b.items())} for n, b in out.items()}


def crossings(rows: Sequence[dict], a: str, b: str, setting: str = "plain") -> list[float]:
    """The budgets (minutes) where network ``a``'s frontier crosses ``b``'s: between two budgets both ran at which
    the difference changes sign, interpolated linearly in log minutes; a budget where they tie exactly counts."""
    means = _means(rows, setting)
    shared = sorted(set(means.get(a, {})) & set(means.get(b, {})))
    diffs = [(m, means[a][m] - means[b][m]) for m in shared]
    out = [m for m, d in diffs if d == 0.0]
    for (m0, d0), (m1, d1) in itertools.pairwise(diffs):
        if d0 * d1 < 0:
            t = d0 / (d0 - d1)
            out.append(math.exp(math.log(m0) + t * (math.log(m1) - math.log(m0))))
    return sorted(out)


def extrapolated_crossing(rows: Sequence[dict], a: str, b: str, setting: str = "plain") -> float | None:
    """Where ``a``'s and ``b``'s frontiers would cross past the last budget both ran, if the gap between them kept
    changing as it did between their last two shared budgets (linear in log minutes); None where they cross within
    the budgets, have fewer than two in common, or the gap is not narrowing.  A guess, not a measurement."""
    means = _means(rows, setting)
    shared = sorted(set(means.get(a, {})) & set(means.get(b, {})))
    if len(shared) < 2 or crossings(rows, a, b, setting):
        return None
    (m0, m1), (d0, d1) = shared[-2:], [means[a][m] - means[b][m] for m in shared[-2:]]
    if not 0 < abs(d1) < abs(d0):
        return None
    return math.exp(math.log(m1) + d1 / (d0 - d1) * (math.log(m1) - math.log(m0)))


def _cell(row: dict, setting: str) -> str:
    return f"{row[setting]['log_loss']:.4f} / {row[setting]['accuracy']:.1%}" if setting in row else "—"


def write_frontier_page(
    root: str, arms: Sequence[Arm], out: str, title: str, intro: str = "", ledger: str | None = None
) -> str:
    """Writes the Markdown page ``out`` (the table of every run, each network's mean at each budget, the crossing
    budgets) and its plot (``out`` with ``.png``); returns the Markdown.  ``ledger``: the page's ledger (default
    ``out`` with ``.jsonl``), read for the runs whose folders are not under ``root`` and rewritten with every run
    the page shows; its sweeps of arms the page does not show are kept as they were."""
    from deepsea.plots import plot_frontier

    ledger = ledger_path(out) if ledger is None else ledger
    kept_before = read_ledger(ledger)
    rows = frontier_rows(root, arms, kept_before.sweeps)
    settings = sorted({k for r in rows for k in r if k == "plain" or k.startswith("tta_")}, key=lambda s: s != "plain")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    plot = os.path.splitext(out)[0] + ".png"
    plot_frontier(plot, rows)
    lines = [f"# {title}", "", *([intro, ""] if intro else [])]
    lines += [
        f"Generated by `deepsea frontier` from the sweeps under `{root}`. Minutes: the training budget, measured on "
        "quiet cores (evaluation and setup not counted); images/s: the training images a run saw over those "
        "minutes. MFLOP per image: a training step's convolutions and matrix products (3 x the forward pass) and "
        "a prediction's (all copies of an orbit average)." + _ledger_sentence(rows, ledger),
        "",
        f"![frontier]({os.path.basename(plot)})",
        "",
        "| network | minutes | seed | width | params | MFLOP/image (train step / predict) | images/s | steps | "
        + " | ".join(f"{'plain' if s == 'plain' else s.replace('tta_', 'TTA ')} log loss / accuracy" for s in settings)
        + " |",
        "|" + "---|" * (8 + len(settings)),
    ]
    for r in rows:
        lines.append(
            f"| {r['network']} | {r['minutes']:g} | {r['seed']} | {r['width']:g} | {r['params']:,} | "
            f"{r['train_mflop']:.1f} / {r['predict_mflop']:.1f} | {r['images_per_s']:.0f} | {r['steps']:,} | "
            + " | ".join(_cell(r, s) for s in settings)
            + " |"
        )
    means = {s: _means(rows, s) for s in settings}
    budgets = sorted({r["minutes"] for r in rows})
    lines += ["", "Mean validation log loss over seeds:", ""]
    lines += ["| network | " + " | ".join(f"{m:g} min ({s.replace('tta_', 'TTA ')})" for m in budgets
                                          for s in settings) + " |"]  # fmt: skip
    lines += ["|" + "---|" * (1 + len(budgets) * len(settings))]
    for network in dict.fromkeys(r["network"] for r in rows):
        cells = [
            f"{means[s][network][m]:.4f}" if m in means[s].get(network, {}) else "—" for m in budgets for s in settings
        ]
        lines.append(f"| {network} | " + " | ".join(cells) + " |")
    networks = list(dict.fromkeys(r["network"] for r in rows))
    lines += [""]
    for setting in settings:
        label = "" if setting == "plain" else f" ({setting.replace('tta_', 'TTA ')})"
        for i, a in enumerate(networks):
            for b in networks[i + 1 :]:
                if len(set(means[setting].get(a, {})) & set(means[setting].get(b, {}))) < 2:
                    continue  # fewer than two budgets in common: no frontier to compare
                found = crossings(rows, a, b, setting)
                where = ", ".join(f"{m:.1f} min" for m in found) if found else "none between the budgets measured"
                guess = extrapolated_crossing(rows, a, b, setting)
                if guess is not None:
                    where += (
                        f" (the gap narrowing as between the last two budgets, they would cross near {guess:.0f} min)"
                    )
                lines.append(f"- {a} and {b}{label} cross: {where}.")
    text = "\n".join(lines) + "\n"
    with open(out, "w") as f:
        f.write(text)
    kept: dict[str, Sweep] = {}
    for r in rows:
        kept.setdefault(r["sweep"], Sweep()).records.append(r["record"])
    shown = {arm.sweep for arm in arms}  # the ledger's sweeps of arms the page no longer shows stay in it
    kept.update({name: sweep for name, sweep in kept_before.sweeps.items() if name not in shown})
    write_ledger(ledger, Ledger(kept, kept_before.scores))
    return text


def _ledger_sentence(rows: Sequence[dict], ledger: str) -> str:
    """Where the runs came from: the run folders, or (for the runs whose folders were not there) the ledger."""
    kept = sum(r["from_ledger"] for r in rows)
    name = os.path.basename(ledger)
    if not kept:
        return f" Every run's record is kept in the page's ledger, `{name}`."
    sources = sorted({r["record"]["transcribed"] for r in rows if "transcribed" in r["record"]})
    transcribed = sum("transcribed" in r["record"] for r in rows)
    return (
        f" {kept} of the {len(rows)} runs come from the page's ledger, `{name}` (their folders were not on the "
        "machine that wrote the page; their validation curves are drawn only where the ledger kept them)"
        + (f"; {transcribed} of them transcribed from {'; '.join(sources)}." if transcribed else ".")
    )
