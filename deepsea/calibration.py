"""Probabilities that mean what they say, and labels only where they are sure enough.

- :func:`fit_calibration`: temperature scaling (one ``T`` dividing the log-probabilities, Guo et al. 2017) and,
  optionally, a per-class bias on top; fitted by minimising the validation log loss.  Whether the bias helps is
  decided by k-fold cross-validation on the validation set (:func:`choose_calibration`), since in-sample it
  always does.
- :func:`expected_calibration_error`: the gap between confidence and accuracy over equal-width confidence bins.
- :func:`fit_thresholds`: per-class thresholds on the predicted class's probability that reach a target
  precision on the validation split; below its threshold an image is ``unclassified``, for an ecologist to look
  at rather than to count wrongly.

Everything here is numpy/scipy on ``(N, K)`` probabilities; :mod:`deepsea.fitting` stores the fitted values in
the run folder and applies them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import scipy.optimize

from deepsea.errors import UserError
from deepsea.metrics import KAGGLE_EPS, log_loss

__all__ = [
    "UNCLASSIFIED",
    "Calibration",
    "Thresholds",
    "apply_thresholds",
    "choose_calibration",
    "expected_calibration_error",
    "fit_calibration",
    "fit_thresholds",
    "reliability",
]

UNCLASSIFIED = "unclassified"


def _log(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, np.float64), KAGGLE_EPS, None))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class Calibration:
    """``softmax(log p / temperature + bias)``; the identity is ``temperature=1`` and no bias."""

    temperature: float = 1.0
    bias: tuple[float, ...] | None = None

    def apply(self, probs: np.ndarray) -> np.ndarray:
        z = _log(probs) / self.temperature
        if self.bias is not None:
            if len(self.bias) != z.shape[1]:
                raise ValueError(f"the calibration has {len(self.bias)} class biases; the probabilities {z.shape[1]}")
            z = z + np.asarray(self.bias)
        return _softmax(z)

    def to_dict(self) -> dict:
        return {"temperature": self.temperature, "bias": None if self.bias is None else list(self.bias)}

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        bias = d.get("bias")
        return cls(float(d["temperature"]), None if bias is None else tuple(float(b) for b in bias))


def fit_calibration(probs: np.ndarray, labels: np.ndarray, bias: bool = False) -> Calibration:
    """The temperature (and with ``bias`` the per-class biases) minimising the log loss of ``probs``."""
    logp = _log(probs)
    labels = np.asarray(labels)
    n, k = logp.shape
    rows = np.arange(n)

    def nll(theta: np.ndarray) -> tuple[float, np.ndarray]:
        inv_t = np.exp(-theta[0])  # T = exp(theta[0]) > 0
        z = logp * inv_t + (theta[1:] if bias else 0.0)
        p = _softmax(z)
        loss = -np.mean(np.log(np.clip(p[rows, labels], 1e-300, None)))
        d = p.copy()
        d[rows, labels] -= 1.0
        d /= n  # dloss/dz
        grad_t = -np.sum(d * logp) * inv_t  # dz/dtheta0 = -logp * inv_t
        return float(loss), np.concatenate([[grad_t], d.sum(0)]) if bias else np.array([grad_t])

    theta0 = np.zeros(1 + (k if bias else 0))
    res = scipy.optimize.minimize(nll, theta0, jac=True, method="L-BFGS-B")
    temperature = float(np.exp(res.x[0]))
    b = tuple(float(v) for v in res.x[1:] - res.x[1:].mean()) if bias else None  # softmax ignores a shift
    return Calibration(temperature, b)


def choose_calibration(
    probs: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0
) -> tuple[Calibration, dict]:
    """Temperature alone or temperature and per-class bias, whichever has the lower k-fold cross-validated log
    loss; refitted on everything.  Also returns the cross-validated log losses (``none``, ``temperature``,
    ``temperature+bias``)."""
    labels = np.asarray(labels)
    order = np.random.default_rng(seed).permutation(len(labels))
    parts = np.array_split(order, min(folds, len(labels)))
    scores = {"none": 0.0, "temperature": 0.0, "temperature+bias": 0.0}
    for part in parts:
        train = np.setdiff1d(order, part)
        held = probs[part], labels[part]
        scores["none"] += log_loss(*held) * len(part)
        temperature = fit_calibration(probs[train], labels[train])
        scores["temperature"] += log_loss(temperature.apply(held[0]), held[1]) * len(part)
        fitted = fit_calibration(probs[train], labels[train], bias=True)
        scores["temperature+bias"] += log_loss(fitted.apply(held[0]), held[1]) * len(part)
    scores = {k: v / len(labels) for k, v in scores.items()}
    use_bias = scores["temperature+bias"] < scores["temperature"]
    return fit_calibration(probs, labels, bias=use_bias), scores


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width confidence bin: the mean confidence (max probability), the accuracy and the count."""
    probs = np.asarray(probs, np.float64)
    conf = probs.max(1)
    correct = probs.argmax(1) == np.asarray(labels)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore"):
        mean_conf = np.bincount(which, conf, bins) / count
        acc = np.bincount(which, correct.astype(np.float64), bins) / count
    return mean_conf, acc, count


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """``sum_b |acc_b - conf_b| * n_b / N`` over equal-width bins of the top-1 confidence."""
    conf, acc, count = reliability(probs, labels, bins)
    used = count > 0
    return float(np.sum(np.abs(acc[used] - conf[used]) * count[used]) / count.sum())


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Per-class thresholds on the top class's probability; ``target_precision`` is what they were chosen for."""

    values: tuple[float, ...]
    target_precision: float

    def to_dict(self) -> dict:
        return {"target_precision": self.target_precision, "thresholds": list(self.values)}

    @classmethod
    def from_dict(cls, d: dict) -> Thresholds:
        return cls(tuple(float(v) for v in d["thresholds"]), float(d["target_precision"]))


def fit_thresholds(probs: np.ndarray, labels: np.ndarray, target_precision: float) -> Thresholds:
    """For each class, the lowest threshold ``t`` such that the validation images predicted as that class with
    probability ``>= t`` have at least ``target_precision`` precision.  A class that never reaches it gets an
    infinite threshold (never assigned)."""
    if not 0 < target_precision <= 1:
        raise UserError(f"target precision must be in (0, 1], got {target_precision}")
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels)
    pred = probs.argmax(1)
    top = probs.max(1)
    values = []
    for k in range(probs.shape[1]):
        mine = np.flatnonzero(pred == k)
        if len(mine) == 0:
            values.append(float(np.inf))
            continue
        order = mine[np.argsort(-top[mine], kind="stable")]
        precision = np.cumsum(labels[order] == k) / np.arange(1, len(order) + 1)  # of each top-scored prefix
        ok = np.flatnonzero(precision >= target_precision)  # the longest such prefix: the lowest threshold
        values.append(float(top[order[ok[-1]]]) if len(ok) else float(np.inf))
    return Thresholds(tuple(values), float(target_precision))


def apply_thresholds(probs: np.ndarray, classes: Sequence[str], thresholds: Thresholds) -> list[str]:
    """Each image's top class, or :data:`UNCLASSIFIED` where its probability is below that class's threshold."""
    probs = np.asarray(probs)
    if len(thresholds.values) != probs.shape[1]:
        raise UserError(f"{len(thresholds.values)} thresholds for {probs.shape[1]} classes")
    pred = probs.argmax(1)
    keep = probs.max(1) >= np.asarray(thresholds.values)[pred]
    return [classes[p] if k else UNCLASSIFIED for p, k in zip(pred, keep, strict=True)]
