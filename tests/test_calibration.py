"""Temperature scaling, per-class bias, calibration error and per-class thresholds, against direct computations."""

import numpy as np
import pytest
import scipy.optimize

from deepsea.calibration import (
    UNCLASSIFIED,
    Calibration,
    apply_thresholds,
    choose_calibration,
    expected_calibration_error,
    fit_calibration,
    fit_thresholds,
    reliability,
)
from deepsea.metrics import log_loss


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _sampled(rng, n=20000, k=6, scale=1.5):
    """True probabilities and labels drawn from them."""
    p = _softmax(rng.standard_normal((n, k)) * scale)
    labels = np.array([rng.choice(k, p=row) for row in p])
    return p, labels


def test_temperature_scaling_recovers_an_overconfidence(rng):
    p, labels = _sampled(rng)
    overconfident = _softmax(2.0 * np.log(p))  # as if the logits were doubled
    cal = fit_calibration(overconfident, labels)
    assert cal.temperature == pytest.approx(2.0, rel=0.05) and cal.bias is None
    # the optimiser's minimum is the minimum of a brute-force one-dimensional search
    brute = scipy.optimize.minimize_scalar(
        lambda t: log_loss(_softmax(np.log(overconfident) / t), labels), bounds=(0.5, 5), method="bounded"
    )
    assert cal.temperature == pytest.approx(brute.x, rel=1e-3)
    assert log_loss(cal.apply(overconfident), labels) < log_loss(overconfident, labels) - 0.05
    ece_before = expected_calibration_error(overconfident, labels)
    assert expected_calibration_error(cal.apply(overconfident), labels) < 0.02 < ece_before
    np.testing.assert_allclose(Calibration().apply(p), p, rtol=1e-9)
    assert Calibration.from_dict(cal.to_dict()) == cal


def test_a_class_bias_is_chosen_when_it_helps_and_not_otherwise(rng):
    p, labels = _sampled(rng)
    shift = np.array([1.0, -1.0, 0.5, 0.0, 0.0, -0.5])
    biased = _softmax(np.log(p) + shift)
    cal, scores = choose_calibration(biased, labels)
    assert cal.bias is not None and scores["temperature+bias"] < scores["temperature"] < scores["none"]
    np.testing.assert_allclose(np.asarray(cal.bias), -(shift - shift.mean()), atol=0.1)
    plain, plain_scores = choose_calibration(p, labels)
    assert plain.bias is None and plain.temperature == pytest.approx(1.0, abs=0.05)
    assert set(plain_scores) == {"none", "temperature", "temperature+bias"}


def test_expected_calibration_error_against_a_loop(rng):
    p, labels = _sampled(rng, n=3000)
    conf, correct = p.max(1), p.argmax(1) == labels
    want = 0.0
    for b in range(10):
        lo, hi = b / 10, (b + 1) / 10
        inside = (conf >= lo) & ((conf < hi) if b < 9 else (conf <= hi))
        if inside.any():
            want += abs(correct[inside].mean() - conf[inside].mean()) * inside.sum() / len(p)
    assert expected_calibration_error(p, labels, bins=10) == pytest.approx(want, rel=1e-9)
    assert expected_calibration_error(p, labels) < 0.03  # labels drawn from p: calibrated
    mean_conf, acc, count = reliability(p, labels, 10)
    assert count.sum() == len(p) and np.nanmax(np.abs(mean_conf - acc)) < 0.1


def test_thresholds_reach_the_target_precision_on_the_data_they_were_chosen_on(rng):
    p, labels = _sampled(rng, n=4000, k=5, scale=2.0)
    classes = [f"c{i}" for i in range(5)]
    for target in (0.7, 0.9):
        th = fit_thresholds(p, labels, target)
        out = np.asarray(apply_thresholds(p, classes, th))
        for k in range(5):
            mine = out == classes[k]
            if np.isfinite(th.values[k]):
                assert mine.any() and np.mean(labels[mine] == k) >= target
                # the lowest such threshold: any lower one admits a set below the target
                below = (p.argmax(1) == k) & (p.max(1) < th.values[k])
                for t in np.unique(p.max(1)[below]):
                    lower = (p.argmax(1) == k) & (p.max(1) >= t)
                    assert np.mean(labels[lower] == k) < target
            else:
                assert not mine.any()
        assert (out == UNCLASSIFIED).any()
    shares = [
        np.mean(np.asarray(apply_thresholds(p, classes, fit_thresholds(p, labels, t))) != UNCLASSIFIED)
        for t in (0.6, 0.8, 0.95)
    ]
    assert shares[0] >= shares[1] >= shares[2]
    never = fit_thresholds(np.tile([[0.9, 0.1]], (10, 1)), np.zeros(10, int), 0.9)
    assert never.values[0] <= 0.9 and never.values[1] == np.inf  # class 1 is never predicted
    with pytest.raises(ValueError, match="target precision"):
        fit_thresholds(p, labels, 1.5)
