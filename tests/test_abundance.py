"""Abundances under prior shift: the corrections against classify-and-count on samples of a known class mix drawn
from labelled predictions, their intervals, and the command."""

import csv

import numpy as np
import pytest

from deepsea.abundance import METHODS, Quantifier, abundance, read_volumes, shift_study, write_abundances
from deepsea.errors import UserError

K = 8


def _bayes_classifier(seed: int = 0, separation: float = 2.2):
    """A simulated classifier whose probabilities are exact Bayes posteriors under its training prior (so they are
    calibrated, as the corrections assume): classes are Gaussians in 2-d; ``draw(props, n)`` gives the probabilities
    and labels of ``n`` images drawn with class proportions ``props``."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(0, separation, (K, 2))
    prior = rng.dirichlet(np.full(K, 3.0))

    def draw(props: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.choice(K, n, p=props)
        x = mu[y] + rng.normal(size=(n, 2))
        logp = -0.5 * ((x[:, None] - mu[None]) ** 2).sum(-1) + np.log(prior)
        p = np.exp(logp - logp.max(1, keepdims=True))
        return p / p.sum(1, keepdims=True), y

    return prior, draw


def test_the_corrections_recover_a_shifted_class_mix_that_classify_and_count_gets_wrong():
    prior, draw = _bayes_classifier()
    probs, labels = draw(prior, 6000)
    study = shift_study(probs, labels, [str(c) for c in range(K)], samples=12, sample_size=1500, seed=1)
    assert (probs.argmax(1) == labels).mean() == pytest.approx(0.69, abs=0.03)  # a weak classifier
    # classify and count keeps much of the training mix: its L1 error is over 0.3; the adjusted counts and EM
    # remove at least half of it, on the boosted class too, and put the absent class near zero
    assert study.l1["cc"] > 0.3
    for m in ("acc", "pacc", "em"):
        assert study.l1[m] < 0.5 * study.l1["cc"], (m, study.l1)
        assert study.boosted_error[m] < 0.5 * study.boosted_error["cc"], (m, study.boosted_error)
        assert study.absent_share[m] < 0.5 * study.absent_share["cc"], (m, study.absent_share)


def test_without_a_shift_every_method_is_close_and_the_intervals_cover_the_truth():
    prior, draw = _bayes_classifier(seed=2, separation=3.0)
    val_probs, val_labels = draw(prior, 3000)
    q = Quantifier.fit(val_probs, val_labels, [str(c) for c in range(K)])
    covered = []
    for s in range(4):
        probs, labels = draw(prior, 800)
        true = np.bincount(labels, minlength=K)
        a = abundance(q, val_probs, val_labels, probs, sample=f"s{s}", reps=60, seed=s)
        assert a.counts.shape == a.low.shape == (len(METHODS), K)
        assert np.all(a.low <= a.counts + 1e-9) and np.all(a.counts <= a.high + 1e-9)
        np.testing.assert_allclose(a.counts.sum(1), 800, rtol=1e-6)  # every method's counts add up to the sample
        assert np.abs(a.counts - true).max() < 0.1 * 800
        covered.append((a.low <= true) & (true <= a.high))
    assert np.mean(covered) > 0.8  # 95% intervals: most of the 160 (method, class, sample) cells


def test_the_rates_and_proportions_match_a_hand_count():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
    labels = np.array([0, 0, 1, 0])
    q = Quantifier.fit(probs, labels, ["a", "b"])
    np.testing.assert_allclose(q.hard, [[2 / 3, 0], [1 / 3, 1]])  # P(predicted i | true j)
    np.testing.assert_allclose(q.soft, [[0.6, 0.2], [0.4, 0.8]])
    np.testing.assert_allclose(q.prior, [0.75, 0.25])
    np.testing.assert_allclose(q.proportions(probs, "cc"), [0.5, 0.5])
    np.testing.assert_allclose(q.proportions(probs, "pcc"), [0.5, 0.5])
    # ACC: q = M p  ->  0.5 = 2/3 p_a  ->  p_a = 0.75
    np.testing.assert_allclose(q.proportions(probs, "acc"), [0.75, 0.25], atol=1e-6)
    with pytest.raises(UserError, match="unknown abundance method 'median'"):
        q.proportions(probs, "median")


def test_the_table_and_volumes(tmp_path):
    probs = np.array([[0.9, 0.1], [0.2, 0.8]] * 5)
    labels = np.array([0, 1] * 5)
    q = Quantifier.fit(probs, labels, ["a", "b"])
    a = abundance(q, probs, labels, probs[:4], sample="st1", reps=10, volume=2.0)
    write_abundances([a], str(tmp_path / "ab.csv"))
    rows = list(csv.DictReader((tmp_path / "ab.csv").read_text().splitlines()))
    assert len(rows) == len(METHODS) * 2 and {r["sample"] for r in rows} == {"st1"}
    cc_a = next(r for r in rows if r["method"] == "cc" and r["class"] == "a")
    assert float(cc_a["count"]) == 2 and float(cc_a["per_volume"]) == 1.0
    (tmp_path / "v.csv").write_text("sample,volume\nst1,5\nst2,x\n")
    with pytest.raises(UserError, match=r"v.csv, line 3"):
        read_volumes(str(tmp_path / "v.csv"))
    (tmp_path / "v.csv").write_text("sample,volume\nst1,5\n")
    assert read_volumes(str(tmp_path / "v.csv")) == {"st1": 5.0}
    with pytest.raises(UserError, match="volume must be > 0"):
        abundance(q, probs, labels, probs, volume=0.0)


def test_the_command_line_offers_the_librarys_methods():
    from deepsea import cli

    assert cli._ABUNDANCE_METHODS == METHODS  # mirrored so that the parser needs no import of quapy
