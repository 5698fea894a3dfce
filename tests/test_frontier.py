"""The equal-compute page: a row per run with its cost, means per budget, and where two frontiers cross."""

from __future__ import annotations

import json
import math
import os

import pytest

from deepsea.configs import load_experiment_with
from deepsea.cost import flops_per_image
from deepsea.errors import UserError
from deepsea.frontier import Arm, crossings, extrapolated_crossing, frontier_rows, write_frontier_page
from deepsea.ledger import Ledger, Sweep, read_ledger, write_ledger

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = os.path.join(ROOT, "experiments", "synthetic.py")


def _fake_sweep(root, name, symmetry, steps, losses, tta=None):
    """A sweep folder as ``deepsea sweep`` leaves it: one run per seed with its config, classes and validation
    curve, and a results line with its plain score (and ``tta``: the TTA 70 score, 0.1 below)."""
    config = load_experiment_with(SYNTHETIC, [f"model.symmetry={symmetry}", f"train.steps={steps}"], small=True)
    (root / name).mkdir(parents=True)
    with open(root / name / "results.jsonl", "w") as f:
        for seed, loss in enumerate(losses):
            run = root / name / "runs" / f"base_s{seed}"
            run.mkdir(parents=True)
            (run / "config.json").write_text(config.to_json_best_effort())
            (run / "classes.json").write_text(json.dumps([f"c{i}" for i in range(5)]))
            curve = [{"split": "validation", "step": s, "log_loss": loss + 1 - s / steps} for s in (steps // 2, steps)]
            (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in curve))
            score = {"log_loss": loss, "accuracy": 0.5, "top5": 0.9}
            rec = {"name": f"base_s{seed}", "seed": seed, "steps": steps, "images_seen": steps * 8, "plain": score}
            if tta:
                rec["tta_70"] = {**score, "log_loss": loss - 0.1}
            f.write(json.dumps(rec) + "\n")
    return config


def test_the_page_lists_every_run_with_its_cost_and_finds_the_crossing(tmp_path):
    plain = _fake_sweep(tmp_path, "plain_1", "none", 60, [1.0, 1.2])  # mean 1.1
    _fake_sweep(tmp_path, "plain_4", "none", 240, [0.9])
    _fake_sweep(tmp_path, "c4_1", "c4", 60, [1.3])
    _fake_sweep(tmp_path, "c4_4", "c4", 240, [0.7, 0.8], tta=True)  # mean 0.75, with TTA 0.65
    arms = [Arm("plain", "plain_1", 1), Arm("plain", "plain_4", 4), Arm("C4", "c4_1", 1), Arm("C4", "c4_4", 4),
            Arm("D4", "not_run", 1)]  # fmt: skip
    rows = frontier_rows(str(tmp_path), arms)
    assert [(r["network"], r["minutes"], r["seed"]) for r in rows] == [
        ("plain", 1, 0), ("plain", 1, 1), ("plain", 4, 0), ("C4", 1, 0), ("C4", 4, 0), ("C4", 4, 1)]  # fmt: skip
    cost = flops_per_image(plain, 5)
    assert rows[0]["train_mflop"] == pytest.approx(3 * cost.train_forward_flops / 1e6)
    assert rows[0]["params"] == cost.params
    assert rows[0]["images_per_s"] == pytest.approx(60 * 8 / 60)  # steps x batch over the budget's seconds
    # plain - C4: -0.2 at 1 minute, +0.15 at 4: zero at t = 0.2 / 0.35 of the way in log minutes
    expected = math.exp(math.log(1) + 0.2 / 0.35 * (math.log(4) - math.log(1)))
    assert crossings(rows, "plain", "C4") == [pytest.approx(expected)]
    assert crossings(rows, "plain", "D4") == []
    page = str(tmp_path / "docs" / "page.md")  # a folder made for it
    text = write_frontier_page(str(tmp_path), arms, page, "Equal compute", "The protocol.")
    assert "The protocol." in text and f"cross: {expected:.1f} min" in text
    assert "| plain | 1.1000 | — | 0.9000 | — |" in text and "| C4 | 1.3000 | — | 0.7500 | 0.6500 |" in text
    assert text.count("| plain | 1 |") == 2 and os.path.getsize(tmp_path / "docs" / "page.png") > 10_000


def test_a_tie_at_a_budget_is_a_crossing():
    rows = [{"network": n, "minutes": m, "plain": {"log_loss": v}}
            for n, m, v in [("a", 2, 1.0), ("b", 2, 1.0), ("a", 8, 0.5), ("b", 8, 0.6)]]  # fmt: skip
    assert crossings(rows, "a", "b") == [2]


def test_a_narrowing_gap_is_extrapolated_to_where_it_would_close():
    """a - b: +0.2 at 5 minutes, +0.1 at 10: halving per doubling, so zero one more doubling on (20 minutes); not
    for a widening gap, a crossing already measured, or a single shared budget."""

    def rows(points):
        return [{"network": n, "minutes": m, "plain": {"log_loss": v}} for n, m, v in points]

    narrowing = rows([("a", 5, 1.2), ("b", 5, 1.0), ("a", 10, 1.0), ("b", 10, 0.9), ("a", 2, 1.5), ("b", 2, 1.2)])
    assert extrapolated_crossing(narrowing, "a", "b") == pytest.approx(20.0)
    assert extrapolated_crossing(narrowing, "b", "a") == pytest.approx(20.0)
    assert extrapolated_crossing(rows([("a", 5, 1.1), ("b", 5, 1.0), ("a", 10, 1.0), ("b", 10, 0.8)]), "a", "b") is None
    assert extrapolated_crossing(rows([("a", 5, 1.1), ("b", 5, 1.0), ("a", 10, 0.8), ("b", 10, 0.9)]), "a", "b") is None
    assert extrapolated_crossing(rows([("a", 5, 1.1), ("b", 5, 1.0)]), "a", "b") is None


def test_the_ledger_keeps_the_page_when_the_run_folders_are_gone(tmp_path):
    """The page's ledger (``page.jsonl``) holds every run with its cost and curve: with the sweeps deleted the page
    comes back the same, and a new seed trained into a fresh folder joins the ledger's runs."""
    import shutil

    root, docs = tmp_path / "runs", tmp_path / "docs"
    _fake_sweep(root, "plain_1", "none", 60, [1.0, 1.2])
    _fake_sweep(root, "c4_1", "c4", 60, [1.3], tta=True)
    arms = [Arm("plain", "plain_1", 1), Arm("C4", "c4_1", 1)]
    page = str(docs / "page.md")
    first = write_frontier_page(str(root), arms, page, "Equal compute")
    assert "Every run's record is kept in the page's ledger, `page.jsonl`." in first
    shutil.rmtree(root)
    root.mkdir()
    again = write_frontier_page(str(root), arms, page, "Equal compute")
    assert "3 of the 3 runs come from the page's ledger" in again
    body = lambda text: [line for line in text.splitlines() if line.startswith("|")]  # noqa: E731
    assert body(again) == body(first)
    rows = frontier_rows(str(root), arms, read_ledger(str(docs / "page.jsonl")).sweeps)
    assert [len(r["curve"]) for r in rows] == [2, 2, 2]  # the thin curves kept too
    # seed 1 of the C4 arm, trained later into a folder of its own (deepsea sweep --first-seed 1)
    _fake_sweep(root, "c4_1", "c4", 60, [9.9, 1.1], tta=True)
    shutil.rmtree(root / "c4_1" / "runs" / "base_s0")
    lines = (root / "c4_1" / "results.jsonl").read_text().splitlines()
    (root / "c4_1" / "results.jsonl").write_text(lines[1] + "\n")
    text = write_frontier_page(str(root), arms, page, "Equal compute")
    assert "3 of the 4 runs come from the page's ledger" in text
    assert "| C4 | 1.2000 | 1.1000 |" in text  # mean of seed 0 (ledger, 1.3) and seed 1 (folder, 1.1)
    assert sorted(r["seed"] for r in read_ledger(str(docs / "page.jsonl")).sweeps["c4_1"].records) == [0, 1]
    # an arm taken off the page: its runs leave the page but stay in the ledger for a later page that shows it
    without = write_frontier_page(str(root), arms[1:], page, "Equal compute")
    assert "| plain |" not in without
    assert [r["seed"] for r in read_ledger(str(docs / "page.jsonl")).sweeps["plain_1"].records] == [0, 1]
    assert body(write_frontier_page(str(root), arms, page, "Equal compute")) == body(text)


def test_a_ledger_run_without_its_cost_is_named(tmp_path):
    (tmp_path / "runs").mkdir()
    record = {"name": "base_s0", "seed": 0, "steps": 10, "images_seen": 80, "plain": {"log_loss": 1.0}}
    write_ledger(str(tmp_path / "page.jsonl"), Ledger({"c4_1": Sweep([record])}))
    with pytest.raises(UserError, match="c4_1/base_s0 has no cost"):
        write_frontier_page(str(tmp_path / "runs"), [Arm("C4", "c4_1", 1)], str(tmp_path / "page.md"), "t")
    (tmp_path / "page.jsonl").write_text('{"sweep": "c4_1", "record": {}}\nnot json\n')
    with pytest.raises(UserError, match=r"page.jsonl, line 2: not JSON"):
        read_ledger(str(tmp_path / "page.jsonl"))
