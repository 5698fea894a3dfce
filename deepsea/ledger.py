"""A results page's ledger: the sweep records (and scores files) a generated page was made from, kept beside it as
``PAGE.jsonl`` and committed with it, so that the page can be regenerated, and extended with new runs, after the run
folders are gone (``runs/`` is not kept in the repository, and a new machine starts without it).

``deepsea frontier`` and ``deepsea claims`` read the page's ledger, let every run found under ``--root`` replace
the ledger's run of the same sweep and name, keep the ledger's other runs, and write the merged ledger back beside
the page.  One JSON object per line: ``{"sweep": NAME, "spec": {...}}`` (the sweep's ``sweep.json``),
``{"sweep": NAME, "record": {...}}`` (one line of its ``results.jsonl``) or ``{"scores": FILE, "content": {...}}``
(a scores file such as ``deepsea ensemble --scores`` writes).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from deepsea.errors import UserError

__all__ = ["Ledger", "Sweep", "ledger_path", "merge_ledgers", "read_ledger", "sweeps_on_disk", "write_ledger"]


@dataclasses.dataclass
class Sweep:
    """A sweep's finished runs (its ``results.jsonl`` lines) and its ``sweep.json`` (empty where unknown)."""

    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    spec: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Ledger:
    """Sweeps by their folder relative to the page's root, and scores files by name."""

    sweeps: dict[str, Sweep] = dataclasses.field(default_factory=dict)
    scores: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


def ledger_path(page: str) -> str:
    """The ledger kept beside a page: ``docs/claims.md`` -> ``docs/claims.jsonl``."""
    return os.path.splitext(page)[0] + ".jsonl"


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    out = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}, line {number}: not JSON ({e.msg})") from None
    return out


def read_ledger(path: str) -> Ledger:
    """The ledger at ``path`` (empty where there is none yet)."""
    ledger = Ledger()
    if not os.path.exists(path):
        return ledger
    for number, entry in enumerate(_read_jsonl(path), 1):
        if "scores" in entry and "content" in entry:
            ledger.scores[entry["scores"]] = entry["content"]
        elif "sweep" in entry and ("record" in entry or "spec" in entry):
            sweep = ledger.sweeps.setdefault(entry["sweep"], Sweep())
            if "record" in entry:
                sweep.records.append(entry["record"])
            else:
                sweep.spec = entry["spec"]
        else:
            raise UserError(
                f"{path}, entry {number}: expected a sweep's record or spec, or a scores file, got keys {sorted(entry)}"
            )
    return ledger


def sweeps_on_disk(root: str) -> dict[str, Sweep]:
    """Every sweep folder under ``root`` (a folder holding ``results.jsonl``), by its path relative to the root,
    with its ``sweep.json``; a link under the root to a folder kept elsewhere (another study's sweeps) is
    followed."""
    out = {}
    for folder, _, files in os.walk(root, followlinks=True):
        if "results.jsonl" in files:
            spec: dict[str, Any] = {}
            if "sweep.json" in files:
                with open(os.path.join(folder, "sweep.json")) as f:
                    spec = json.load(f)
            out[os.path.relpath(folder, root)] = Sweep(_read_jsonl(os.path.join(folder, "results.jsonl")), spec)
    return out


def merge_ledgers(disk: dict[str, Sweep], ledger: dict[str, Sweep]) -> dict[str, Sweep]:
    """The ledger's sweeps with the runs found on disk: a run on disk replaces the ledger's of the same name; the
    ledger's other runs stay (runs of a sweep trained in parts, on several machines, or whose folders are gone);
    the spec on disk wins.  Runs sorted by seed within a variant, in first-seen variant order."""
    out = {}
    for name in dict.fromkeys([*ledger, *disk]):
        old, new = ledger.get(name, Sweep()), disk.get(name, Sweep())
        found = {r["name"] for r in new.records}
        records = [r for r in old.records if r["name"] not in found] + new.records
        variants = list(dict.fromkeys(r.get("variant", "") for r in records))
        records.sort(key=lambda r: (variants.index(r.get("variant", "")), r.get("seed", 0)))
        out[name] = Sweep(records, new.spec or old.spec)
    return out


def write_ledger(path: str, ledger: Ledger) -> None:
    """Writes ``ledger`` to ``path`` (sweeps in name order, then scores files), replacing it in one step."""
    lines = []
    for name in sorted(ledger.sweeps):
        sweep = ledger.sweeps[name]
        if sweep.spec:
            lines.append({"sweep": name, "spec": sweep.spec})
        lines += [{"sweep": name, "record": r} for r in sweep.records]
    lines += [{"scores": name, "content": ledger.scores[name]} for name in sorted(ledger.scores)]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(line, sort_keys=True) + "\n" for line in lines)
    os.replace(path + ".tmp", path)
