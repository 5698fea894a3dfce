"""The claims page: each claim's gain, its standard error (paired seeds or the pooled seed spread) and verdict."""

import json
import math
import os

import numpy as np
import pytest

from deepsea.claims import Claim, Measure, evaluate_claims, pooled_seed_spread, write_claims_page
from deepsea.errors import UserError
from deepsea.ledger import read_ledger, write_ledger

T975 = {3: 3.182446305284263, 4: 2.7764451051977987}  # Student's t, 97.5% quantile (published tables)


def _sweep(root, name: str, runs: dict[str, list[float]], tta: float | None = None, wall_s: float = 0.0) -> None:
    """A sweep folder whose variant ``v`` ran one seed per log loss in ``runs[v]`` (accuracy ``1 - log loss / 2``
    where the log loss is under 1.2, else none kept, as in a transcribed record)."""
    os.makedirs(root / name, exist_ok=True)
    lines = []
    for variant, losses in runs.items():
        for seed, ll in enumerate(losses):
            plain = {"log_loss": ll, **({"accuracy": 1 - ll / 2} if ll < 1.2 else {})}
            rec = {"name": f"{variant}_s{seed}", "variant": variant, "seed": seed, "plain": plain, "wall_s": wall_s}
            if tta is not None:
                rec["tta_8"] = {"log_loss": ll - tta}
            lines.append(json.dumps(rec) + "\n")
    (root / name / "results.jsonl").write_text("".join(lines))


@pytest.fixture
def root(tmp_path):
    _sweep(tmp_path, "base", {"base": [1.00, 1.04, 0.98]}, tta=0.05)
    _sweep(tmp_path, "grid", {"a=1": [0.80, 0.82], "a=2": [1.01, 1.03], "a=3": [1.30]})
    _sweep(tmp_path, "one", {"base": [1.20]})
    scores = {"validation": {"log_loss": 0.95}, "convnets": {"log_loss": 0.97}}  # a fused run's: the convnets' too
    (tmp_path / "ens.json").write_text(json.dumps(scores))
    return tmp_path


def test_the_pooled_seed_spread_matches_numpy_in_float64(root):
    groups = [np.array(g, np.float64) for g in ([1.00, 1.04, 0.98], [0.80, 0.82], [1.01, 1.03])]
    dof = sum(len(g) - 1 for g in groups)
    expected = math.sqrt(sum(((g - g.mean()) ** 2).sum() for g in groups) / dof)
    sigma, got_dof = pooled_seed_spread(str(root))
    assert got_dof == dof == 4 and sigma == pytest.approx(expected, rel=1e-12)
    assert pooled_seed_spread(str(root / "one")) == (None, 0)


def test_gains_errors_and_verdicts(root):
    base = Measure("base")
    claims = [
        Claim("a=1 beats base", Measure("grid", "a=1"), base),  # much better: confirmed
        Claim("a=3 beats base", Measure("grid", "a=3"), base),  # much worse: reversed
        Claim("a=2 beats base", Measure("grid", "a=2"), base),  # within the noise
        Claim("TTA helps", Measure("base", setting="tta_8"), base),  # paired over 3 seeds
        Claim("ensembles help", Measure("ens.json"), base),
        Claim("fusion helps", Measure("ens.json"), Measure("ens.json", setting="convnets")),
        Claim("never ran", Measure("missing"), base),
    ]
    results, sigma, dof = evaluate_claims(str(root), claims)
    by = {r.claim.text: r for r in results}
    base_runs, a1 = np.array([1.00, 1.04, 0.98]), np.array([0.80, 0.82])
    # both settings ran two or more seeds: their own spread, pooled, with 3 + 2 - 2 degrees of freedom
    own = math.sqrt((((base_runs - base_runs.mean()) ** 2).sum() + ((a1 - a1.mean()) ** 2).sum()) / 3)
    r = by["a=1 beats base"]
    assert r.gain == pytest.approx(base_runs.mean() - 0.81) and r.better_seeds == 2 and r.than_seeds == 3
    assert r.stderr == pytest.approx(own * math.sqrt(1 / 2 + 1 / 3)) and r.dof == 3
    assert r.margin == pytest.approx(r.stderr * T975[3]) and r.error_from == "the two settings' seeds"
    assert r.verdict == "confirmed"
    # one seed on a side: the spread pooled over the sweeps
    r = by["a=3 beats base"]
    assert r.verdict == "reversed" and r.gain < 0 and r.dof == dof == 4
    assert r.margin == pytest.approx(sigma * math.sqrt(1 + 1 / 3) * T975[4])
    assert by["a=2 beats base"].verdict == "not at this scale"
    # the same 0.05 on every seed: paired, no spread at all, where the pooled spread would not see it
    tta = by["TTA helps"]
    assert tta.gain == pytest.approx(0.05) and tta.stderr == pytest.approx(0.0, abs=1e-12) and tta.dof == 2
    assert tta.error_from == "paired over 3 seeds" and tta.verdict == "confirmed"
    ens = by["ensembles help"]
    assert ens.better_log_loss == 0.95 and ens.stderr == pytest.approx(sigma * math.sqrt(1 + 1 / 3))
    assert by["fusion helps"].than_log_loss == 0.97 and by["fusion helps"].gain == pytest.approx(0.02)
    assert by["fusion helps"].better_accuracy is None  # a scores file without accuracy
    assert by["a=3 beats base"].better_accuracy is None and by["a=3 beats base"].better_log_loss == 1.30
    assert by["a=1 beats base"].better_accuracy == pytest.approx(1 - 0.81 / 2)
    with pytest.raises(UserError, match=r"ens.json has no 'tta_8' scores \(it has \['convnets', 'validation'\]\)"):
        evaluate_claims(str(root), [Claim("x", Measure("ens.json", setting="tta_8"), base)])
    assert by["never ran"].verdict == "not run" and by["never ran"].gain is None and by["never ran"].margin is None


def test_no_spread_no_verdict_and_an_ambiguous_measure(root):
    results, sigma, dof = evaluate_claims(str(root / "one"), [Claim("x", Measure("."), Measure("."))])
    assert sigma is None and dof == 0 and results[0].verdict.startswith("no verdict")
    with pytest.raises(ValueError, match="name one"):
        evaluate_claims(str(root), [Claim("x", Measure("grid"), Measure("base"))])


def test_seeds_in_folders_of_their_own_join_their_measure(root):
    """``--first-seed 1`` puts a seed in a folder of its own; ``Measure.also`` joins it to seed 0's, so the claim
    has the two settings' own spread; a seed in two of a measure's folders is refused."""
    _sweep(root, "more", {"base": [1.06]})  # written as seed 0: renumbered to seed 1 below
    more = root / "more" / "results.jsonl"
    more.write_text(more.read_text().replace('"seed": 0', '"seed": 1'))
    _sweep(root, "a1_s0", {"base": [0.80]})
    _sweep(root, "a1_s1", {"base": [0.82]})
    (root / "a1_s1" / "results.jsonl").write_text(
        (root / "a1_s1" / "results.jsonl").read_text().replace('"seed": 0', '"seed": 1')
    )
    joined = Claim("a1 beats one", Measure("a1_s0", also=("a1_s1",)), Measure("one", also=("more",)))
    alone = Claim("a1 beats one", Measure("a1_s0"), Measure("one"))
    (r,), _, _ = evaluate_claims(str(root), [joined])
    (r1,), _, _ = evaluate_claims(str(root), [alone])
    a, b = np.array([0.80, 0.82]), np.array([1.20, 1.06])
    own = math.sqrt((((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum()) / 2)
    assert r.better_seeds == r.than_seeds == 2 and r.error_from == "the two settings' seeds" and r.dof == 2
    assert r.gain == pytest.approx(b.mean() - a.mean()) and r.stderr == pytest.approx(own)
    assert r1.better_seeds == r1.than_seeds == 1 and r1.gain == pytest.approx(1.20 - 0.80)
    with pytest.raises(UserError, match=r"^one: seed 0 of a1_s0 is in another of its folders too"):
        evaluate_claims(str(root), [Claim("x", Measure("a1_s0", also=("one",)), Measure("one"))])


def test_the_page_and_its_plot(root, tmp_path):
    claims = [
        Claim("a=1 beats base", Measure("grid", "a=1", label="variant one"), Measure("base")),
        Claim("never ran", Measure("missing"), Measure("base"), budget="equal CPU time"),
    ]
    out = tmp_path / "docs" / "page.md"
    text = write_claims_page(str(root), claims, str(out), title="T")
    assert out.read_text() == text and text.startswith("# T\n")
    assert "## Equal epochs" in text and "## Equal CPU time" in text
    row = next(line for line in text.splitlines() if line.startswith("| a=1 beats base"))
    assert "| variant one | base | 2 / 3 | 0.8100 | 1.0067 | +0.1967 ± 0.0763 | +19.5% | the two settings' seeds" in row
    assert row.endswith("| **confirmed** | 59.5% / 49.7% |")  # accuracy: 1 - 0.81 / 2 and 1 - 1.0067 / 2
    assert "| never ran | missing | base | 0 / 3 | — | 1.0067 | — | — | — | **not run** | — / 49.7% |" in text
    assert (tmp_path / "docs" / "page.png").read_bytes()[:4] == b"\x89PNG"
    assert "| grid | — | — | — | 5 | 0 |" in text  # no sweep.json, no wall times: the runs still counted


def test_the_claims_command_measures_the_ablation_set(cli, root, tmp_path):
    _sweep(root, "ablation", {"base": [1.0, 1.02]}, tta=0.04, wall_s=90.0)
    spec = {"experiment": "/x/experiments/ablation.py", "grids": [], "seeds": 2, "epochs": 2.0, "budget_minutes": None,
            "base": ["optim.lr=0.1"]}  # fmt: skip
    (root / "ablation" / "sweep.json").write_text(json.dumps(spec))
    _sweep(root, "pool", {"view_pool_mode=mean": [1.1, 1.12], "view_pool_mode=max": [1.0, 1.02]})
    out = tmp_path / "ablation.md"
    printed = cli("claims", "experiments/ablation.py", "--root", str(root), "--out", str(out))
    text = out.read_text()
    assert text in printed and "The ablation base (issue 19)" in text.splitlines()[2]  # the module's first paragraph
    row = next(line for line in text.splitlines() if line.startswith("| RMS pooling beats mean"))
    assert "**confirmed**" in row and "+0.1000" in row
    row = next(line for line in text.splitlines() if line.startswith("| RMS pooling beats max"))
    assert "**not at this scale**" in row
    assert "**not run**" in next(line for line in text.splitlines() if line.startswith("| dihedral beats cyclic"))
    assert "| ablation | ablation.py | --set optim.lr=0.1 | 2 epochs | 2 | 3 |" in text  # 2 runs of 1.5 minutes
    assert "| **all** | | | | | **3** |" in text
    assert "no claims()" in cli("claims", "experiments/synthetic.py", "--root", str(root), "--out", str(out), rc=2)
    assert "no sweep folder" in cli("claims", "experiments/ablation.py", "--root", str(tmp_path / "x"), "--out",
                                    str(out), rc=2)  # fmt: skip


def test_the_claims_at_10_minutes_read_a_linked_study_and_name_step_budgets(cli, tmp_path):
    root = tmp_path / "claims"
    spec = {"experiment": "/x/experiments/claims.py", "grids": [], "seeds": 2, "epochs": None, "budget_minutes": None,
            "steps": 4700, "base": []}  # fmt: skip
    _sweep(root, "base", {"base": [0.94, 0.96]}, wall_s=420.0)
    (root / "base" / "sweep.json").write_text(json.dumps(spec))
    _sweep(root, "noroll", {"conv_roll=false": [1.0, 1.02]})
    study = tmp_path / "study"  # the equal-compute study's sweeps, kept in their own folder and linked
    _sweep(study, "plain", {"base": [0.85, 0.87]})
    _sweep(study, "c4", {"base": [0.98, 1.0]})
    (root / "equal").symlink_to(study, target_is_directory=True)
    out = tmp_path / "claims.md"
    text = cli("claims", "experiments/claims.py", "--root", str(root), "--out", str(out))
    row = next(line for line in text.splitlines() if line.startswith("| rolling the feature maps helps"))
    assert "| 0.9500 | 1.0100 | +0.0600" in row
    row = next(line for line in text.splitlines() if line.startswith("| an exactly invariant network beats"))
    assert "| 0.9900 | 0.8600 | -0.1300" in row and "**reversed**" in row
    assert "| base | claims.py | — | 4,700 steps | 2 | 14 |" in text  # 2 runs of 7 minutes
    assert "| equal/plain |" in text


def test_the_ledger_keeps_the_claims_when_the_sweeps_are_gone(root, tmp_path_factory):
    """The page's ledger holds every sweep's records, its spec and the scores files: with the run folders deleted
    the page comes back the same, and a sweep trained later joins it."""
    import shutil

    spec = {"experiment": "/x/claims.py", "grids": ["a=1,2,3"], "seeds": 2, "steps": 4700, "base": []}
    (root / "grid" / "sweep.json").write_text(json.dumps(spec))
    claims = [
        Claim("a=1 beats base", Measure("grid", "a=1"), Measure("base")),
        Claim("ensembles help", Measure("ens.json"), Measure("base")),
        Claim("later", Measure("later"), Measure("base")),
    ]
    out = tmp_path_factory.mktemp("docs") / "page.md"  # not under the root, which goes
    first = write_claims_page(str(root), claims, str(out))
    assert "Every run's record is kept in the page's ledger, `page.jsonl`." in first
    shutil.rmtree(root)
    root.mkdir()
    again = write_claims_page(str(root), claims, str(out))
    assert "9 of the 9 runs come from the page's ledger" in again
    table = lambda text: [line for line in text.splitlines() if line.startswith("|")]  # noqa: E731
    assert table(again) == table(first) and "| grid | claims.py | a=1,2,3 | 4,700 steps | 5 | 0 |" in again
    assert "| ensembles help | ens.json | base | 1 / 3 | 0.9500 |" in again  # the scores file, from the ledger
    _sweep(root, "later", {"base": [0.9, 0.92]})
    text = write_claims_page(str(root), claims, str(out))
    assert "9 of the 11 runs come from the page's ledger" in text
    assert "| later | later | base | 2 / 3 | 0.9100 | 1.0067 |" in text
    # a claim taken off the page: its scores file and sweeps stay in the ledger for a page that names it again
    write_claims_page(str(root), claims[2:], str(out))
    assert "ens.json" in read_ledger(str(out.with_suffix(".jsonl"))).scores
    assert table(write_claims_page(str(root), claims, str(out))) == table(text)
    # runs transcribed without their wall time: their minutes are unknown, not zero
    kept = read_ledger(str(out.with_suffix(".jsonl")))
    for r in kept.sweeps["grid"].records[1:]:
        r.pop("wall_s")
    write_ledger(str(out.with_suffix(".jsonl")), kept)
    text = write_claims_page(str(root), claims, str(out))
    assert "| grid | claims.py | a=1,2,3 | 4,700 steps | 5 | 0 (1 of 5 runs) |" in text
    assert "— where a run's record does not keep it" in text
    kept.sweeps["grid"].records[0].pop("wall_s")
    write_ledger(str(out.with_suffix(".jsonl")), kept)
    assert "| grid | claims.py | a=1,2,3 | 4,700 steps | 5 | — |" in write_claims_page(str(root), claims, str(out))
