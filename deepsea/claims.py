"""Claims measured: a results page that sets each claim of a paper (or of the seed) against sweeps' output.

An experiment module lists its claims (``claims()``: :class:`Claim` objects), each naming the setting it says is
better and the one it is compared with, as :class:`Measure` s: a variant of a sweep folder (``deepsea sweep``'s
``results.jsonl``) with one of its score settings (``plain``, ``tta_8``, ...), or a scores file written by
``deepsea ensemble --scores``.  ``deepsea claims EXPERIMENT --root DIR --out PAGE.md`` writes the page: per claim
the two log losses, the gain (the compared setting's log loss minus the better one's: positive when the claim
holds) with its 95% margin, a verdict and the two accuracies, plus a forest plot of the gains beside the page.

The standard error and its degrees of freedom: with three or more seeds measured under both settings, from the
per-seed differences (the same seed trains both: paired); else, when both settings ran two or more seeds, from
their own seed-to-seed spread pooled, ``sigma * sqrt(1 / n_a + 1 / n_b)``; else from the spread pooled over every
variant of every sweep under the root that ran two or more seeds.  The margin is the standard error times the
97.5% quantile of Student's t for those degrees of freedom (a two-sided 95% interval).  The verdict is *confirmed*
when the gain exceeds the margin, *reversed* when it is below minus the margin, *not at this scale* between; a
claim whose runs are missing is *not run*.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from deepsea.errors import UserError
from deepsea.ledger import Ledger, Sweep, ledger_path, merge_ledgers, read_ledger, sweeps_on_disk, write_ledger

__all__ = ["Claim", "ClaimResult", "Measure", "evaluate_claims", "pooled_seed_spread", "write_claims_page"]


@dataclasses.dataclass(frozen=True)
class Measure:
    """One measured setting: ``source`` is a sweep folder under the page's root (then ``variant`` names one of its
    variants, empty for a sweep of one, and ``setting`` its score: ``plain`` or ``tta_N``), or a ``.json`` scores
    file under the root (``deepsea ensemble --scores``, ``deepsea fuse --scores``: then ``setting`` names its key,
    ``plain`` the ``validation`` scores).  ``label`` names it in the table; ``also``: further sweep folders of the
    same setting whose seeds join the source's (seeds run with ``--first-seed`` into folders of their own)."""

    source: str
    variant: str = ""
    setting: str = "plain"
    label: str = ""
    also: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        parts = [self.source] + ([self.variant] if self.variant else [])
        return "/".join(parts) + ("" if self.setting == "plain" else f" ({self.setting.replace('_', ' ')})")


@dataclasses.dataclass(frozen=True)
class Claim:
    """``text``: the claim in the paper's words; ``better``: the setting it says is better than ``than``;
    ``budget``: the budget both were trained at (a heading of the page: equal epochs, equal time, ...)."""

    text: str
    better: Measure
    than: Measure
    budget: str = "equal epochs"


@dataclasses.dataclass(frozen=True)
class ClaimResult:
    """A claim measured: each side's mean log loss and seeds, the gain (``than`` minus ``better``: positive when
    the claim holds), its standard error and how it was estimated, the verdict, and each side's mean accuracy
    (``None`` where its records do not keep one)."""

    claim: Claim
    better_log_loss: float | None
    than_log_loss: float | None
    better_seeds: int
    than_seeds: int
    gain: float | None
    stderr: float | None
    dof: int
    error_from: str
    verdict: str
    better_accuracy: float | None = None
    than_accuracy: float | None = None

    @property
    def margin(self) -> float | None:
        """Half the gain's 95% interval: the standard error times Student's t quantile for its degrees of
        freedom."""
        if self.stderr is None:
            return None
        from scipy.stats import t

        return float(self.stderr * t.ppf(0.975, self.dof))


def _sweep_records(root: str) -> dict[str, list[dict]]:
    """Every sweep folder's records under ``root`` (``deepsea.ledger.sweeps_on_disk``)."""
    return {name: sweep.records for name, sweep in sweeps_on_disk(root).items()}


def _scores_files(root: str, claims: Sequence[Claim], ledger: Mapping[str, dict]) -> dict[str, dict]:
    """The scores files the claims name, read under ``root``, else from the ledger where it kept them."""
    out = {}
    for m in {m for c in claims for m in (c.better, c.than) if m.source.endswith(".json")}:
        path = os.path.join(root, m.source)
        if os.path.exists(path):
            with open(path) as f:
                out[m.source] = json.load(f)
        elif m.source in ledger:
            out[m.source] = ledger[m.source]
    return out


def _measured(
    root: str, sweeps: dict[str, list[dict]], m: Measure, scores: Mapping[str, dict], metric: str = "log_loss"
) -> dict[Any, float]:
    """The measure's ``metric`` per seed (a scores file: one value, under the key ``None``); empty when not run,
    and without the seeds whose records lack the metric."""
    if m.source.endswith(".json"):
        if m.source not in scores:
            return {}
        key = "validation" if m.setting == "plain" else m.setting
        if key not in scores[m.source]:
            raise UserError(f"{os.path.join(root, m.source)} has no {key!r} scores (it has {sorted(scores[m.source])})")
        value = scores[m.source][key].get(metric)
        return {} if value is None else {None: float(value)}
    out: dict[Any, float] = {}
    for source in (m.source, *m.also):
        records = sweeps.get(os.path.normpath(source), [])
        variants = {r["variant"] for r in records}
        if not m.variant and len(variants) > 1:
            raise UserError(f"{source} holds the variants {sorted(variants)}: name one in the claim's measure")
        for r in records:
            if (not m.variant or r["variant"] == m.variant) and metric in r.get(m.setting, {}):
                if r["seed"] in out:
                    raise UserError(f"{source}: seed {r['seed']} of {m.name} is in another of its folders too")
                out[r["seed"]] = float(r[m.setting][metric])
    return out


def pooled_seed_spread(
    root: str, setting: str = "plain", sweeps: dict[str, list[dict]] | None = None
) -> tuple[float | None, int]:
    """The seed-to-seed standard deviation of the log loss pooled over every variant of every sweep under
    ``root`` that ran two or more seeds, and its degrees of freedom (``None, 0`` when none did)."""
    ss, dof = 0.0, 0
    for records in (_sweep_records(root) if sweeps is None else sweeps).values():
        by_variant: dict[str, list[float]] = {}
        for r in records:
            if setting in r:
                by_variant.setdefault(r["variant"], []).append(float(r[setting]["log_loss"]))
        for values in by_variant.values():
            if len(values) > 1:
                v = np.asarray(values, np.float64)
                ss += float(((v - v.mean()) ** 2).sum())
                dof += len(v) - 1
    return (math.sqrt(ss / dof), dof) if dof else (None, 0)


def evaluate_claims(
    root: str,
    claims: Sequence[Claim],
    sweeps: dict[str, list[dict]] | None = None,
    scores: Mapping[str, dict] | None = None,
) -> tuple[list[ClaimResult], float | None, int]:
    """Each claim measured from the sweeps and scores files under ``root`` (see the module's docstring), or from
    ``sweeps`` (records by sweep folder) and ``scores`` (scores files by name) where given; also returns the pooled
    seed spread and its degrees of freedom."""
    sweeps = _sweep_records(root) if sweeps is None else sweeps
    scores = _scores_files(root, claims, {}) if scores is None else scores
    sigma, dof = pooled_seed_spread(root, sweeps=sweeps)
    out = []
    for c in claims:
        a, b = _measured(root, sweeps, c.better, scores), _measured(root, sweeps, c.than, scores)
        accuracy = {
            "better_accuracy": _mean(_measured(root, sweeps, c.better, scores, "accuracy")),
            "than_accuracy": _mean(_measured(root, sweeps, c.than, scores, "accuracy")),
        }
        if not a or not b:
            out.append(ClaimResult(c, _mean(a), _mean(b), len(a), len(b), None, None, 0, "", "not run", **accuracy))
            continue
        gain = float(np.mean(list(b.values())) - np.mean(list(a.values())))
        paired = sorted(k for k in a.keys() & b.keys() if k is not None)
        se: float | None
        if len(paired) >= 3:
            d = np.array([b[k] - a[k] for k in paired], np.float64)
            se, df, how = float(d.std(ddof=1) / math.sqrt(len(d))), len(d) - 1, f"paired over {len(d)} seeds"
        elif len(a) >= 2 and len(b) >= 2:
            va, vb = (np.array(list(x.values()), np.float64) for x in (a, b))
            df = len(va) + len(vb) - 2
            own = math.sqrt((((va - va.mean()) ** 2).sum() + ((vb - vb.mean()) ** 2).sum()) / df)
            se, how = own * math.sqrt(1 / len(va) + 1 / len(vb)), "the two settings' seeds"
        elif sigma is not None:
            se, df, how = sigma * math.sqrt(1 / len(a) + 1 / len(b)), dof, "spread pooled over the sweeps"
        else:
            se, df, how = None, 0, "no seed spread measured"
        r = ClaimResult(c, _mean(a), _mean(b), len(a), len(b), gain, se, df, how, "", **accuracy)
        if r.margin is None:
            verdict = "no verdict (one seed, no spread)"
        elif gain > r.margin:
            verdict = "confirmed"
        elif gain < -r.margin:
            verdict = "reversed"
        else:
            verdict = "not at this scale"
        out.append(dataclasses.replace(r, verdict=verdict))
    return out, sigma, dof


def _mean(values: dict[Any, float]) -> float | None:
    return float(np.mean(list(values.values()))) if values else None


def _cell(x: float | None, fmt: str = "{:.4f}") -> str:
    return "—" if x is None else fmt.format(x)


def write_claims_page(
    root: str,
    claims: Sequence[Claim],
    out: str,
    title: str = "Claims measured",
    intro: str = "",
    ledger: str | None = None,
) -> str:
    """Writes the Markdown page ``out`` (``intro``, e.g. the protocol, under its title) and its forest plot
    (``out`` with ``.png``); returns the Markdown.  ``ledger``: the page's ledger (default ``out`` with
    ``.jsonl``), read for the runs and scores files not under ``root`` and rewritten with everything the page
    used, keeping what it held besides."""
    ledger = ledger_path(out) if ledger is None else ledger
    kept = read_ledger(ledger)
    on_disk = sweeps_on_disk(root)
    merged = merge_ledgers(on_disk, kept.sweeps)
    sweeps = {name: sweep.records for name, sweep in merged.items()}  # read once for the claims, spread and table
    scores = _scores_files(root, claims, kept.scores)
    results, sigma, dof = evaluate_claims(root, claims, sweeps, scores)
    spread = (
        "no variant ran two seeds"
        if sigma is None
        else f"{sigma:.4f} log loss ({dof} degree{'s' if dof > 1 else ''} of freedom)"
    )
    plot = os.path.splitext(out)[0] + ".png"
    lines = [
        f"# {title}",
        "",
        *([intro, ""] if intro else []),
        f"Generated by `deepsea claims` from the sweeps under `{root}`. Gain: the compared setting's validation log "
        "loss minus the claimed-better one's (positive: the claim holds), ± its 95% margin (standard error times "
        "Student's t; the error from paired seeds, else the two settings' seeds, else the spread pooled over the "
        "sweeps: column *error from*); *confirmed* when the gain exceeds the margin, *reversed* below minus the "
        "margin, *not at this scale* between; the last column, validation accuracy, is beside the verdict, not in "
        f"it. Seed-to-seed spread pooled over the sweeps: {spread}." + _ledger_sentence(on_disk, merged, ledger),
        "",
        f"![gains]({os.path.basename(plot)})",
    ]
    for budget in dict.fromkeys(c.budget for c in claims):
        lines += ["", f"## {budget[0].upper()}{budget[1:]}", ""]
        lines += ["| claim | better | than | seeds | log loss (better) | log loss (than) | gain ± 95% | relative | "
                  "error from | verdict | accuracy (better / than) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in results:
            if r.claim.budget != budget:
                continue
            gain = "—" if r.gain is None else f"{r.gain:+.4f}" + ("" if r.margin is None else f" ± {r.margin:.4f}")
            rel = "—" if r.gain is None else f"{r.gain / r.than_log_loss:+.1%}"
            lines.append(
                f"| {r.claim.text} | {r.claim.better.name} | {r.claim.than.name} | {r.better_seeds} / "
                f"{r.than_seeds} | {_cell(r.better_log_loss)} | {_cell(r.than_log_loss)} | {gain} | {rel} | "
                f"{r.error_from or '—'} | **{r.verdict}** | {_cell(r.better_accuracy, '{:.1%}')} / "
                f"{_cell(r.than_accuracy, '{:.1%}')} |"
            )
    lines += _sweeps_table(merged)
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    from deepsea.plots import plot_claims

    plot_claims(plot, results)
    write_ledger(ledger, Ledger(merged, {**kept.scores, **scores}))  # scores files no claim names stay too
    return text


def _ledger_sentence(on_disk: Mapping[str, Sweep], merged: Mapping[str, Sweep], ledger: str) -> str:
    """How many runs came from the page's ledger (their folders not under the root)."""
    runs = sum(len(s.records) for s in merged.values())
    kept = runs - sum(len(s.records) for s in on_disk.values())
    name = os.path.basename(ledger)
    if not kept:
        return f" Every run's record is kept in the page's ledger, `{name}`."
    return f" {kept} of the {runs} runs come from the page's ledger, `{name}` (their folders were not here)."


def _sweeps_table(sweeps: Mapping[str, Sweep]) -> list[str]:
    """The page's last section: every sweep with its experiment, grid, budget and seeds (from its ``sweep.json``),
    the runs finished and their training minutes, and the total."""
    lines = ["", "## Sweeps", "", "| sweep | experiment | grid | budget | runs | training minutes |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    total, untimed = 0.0, False
    for name, sweep in sorted(sweeps.items()):
        spec = sweep.spec
        budget = (
            f"{spec['epochs']:g} epoch{'' if spec['epochs'] == 1 else 's'}" if spec.get("epochs") else
            f"{spec['budget_minutes']:g} minutes" if spec.get("budget_minutes") else
            f"{spec['steps']:,} steps" if spec.get("steps") else "—"
        )  # fmt: skip
        grid = " ".join(spec.get("grids", [])) + "".join(f" --set {b}" for b in spec.get("base", []))
        timed = [float(r["wall_s"]) for r in sweep.records if "wall_s" in r]
        total += sum(timed) / 60
        minutes = f"{sum(timed) / 60:.0f}" if timed else "—"
        if timed and len(timed) < len(sweep.records):
            minutes += f" ({len(timed)} of {len(sweep.records)} runs)"
        untimed = untimed or len(timed) < len(sweep.records)
        experiment = os.path.basename(spec.get("experiment", "")) or "—"
        lines.append(f"| {name} | {experiment} | {grid.strip() or '—'} | {budget} | {len(sweep.records)} | {minutes} |")
    lines.append(f"| **all** | | | | | **{total:.0f}** |")
    if untimed:
        lines += ["", "Training minutes: the runs' wall time; — where a run's record does not keep it (a run "
                  "transcribed from an earlier page)."]  # fmt: skip
    return lines
