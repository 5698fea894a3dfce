"""Class abundances of a sample with error bars, corrected for the shift between the training set's class mix and
the sample's.

A cruise sample never has the training set's class proportions, and counting the classifier's top classes
(classify and count, CC) is biased under that shift: the classes it confuses leak into each other in proportion to
the training mix, not the sample's.  Beside CC and the sum of (calibrated) probabilities (PCC), three corrections
learn from labelled predictions (a validation split the classifier never trained on):

- ``acc`` / ``pacc``: adjusted (probabilistic adjusted) classify and count: the sample's CC (PCC) proportions
  ``q`` are ``M p`` for the validation's rates ``M[i, j] = P(predicted i | true j)`` (hard or soft), solved for
  the proportions ``p`` on the simplex (Forman 2008; Bella et al. 2010);
- ``em``: the priors re-estimated by expectation maximisation (Saerens, Latinne and Decaestecker 2002), which
  needs calibrated probabilities and the prior they were trained under.  QuaPy's stopping tolerance is kept: with
  121 classes and a sample of a thousand images, EM run to convergence drives rare classes to zero and inflates
  others (the maximum-likelihood priors overfit the sample), and stopping early regularises it.

The rate matrices and EM are QuaPy's (``quapy.method.aggregative``); the adjusted counts are solved here with a
non-negative least-squares solve in which the proportions' sum is a heavily weighted extra row, because QuaPy's
SLSQP search takes seconds per solve at 121 classes and the bootstrap solves hundreds of times.  The confidence
intervals are percentile bootstraps that resample both the sample and the validation predictions, so the
uncertainty of the rates is in them too.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence

import numpy as np

from deepsea.errors import UserError

__all__ = [
    "METHODS",
    "Abundance",
    "Quantifier",
    "ShiftStudy",
    "abundance",
    "group_samples",
    "read_volumes",
    "shift_study",
    "write_abundances",
]

log = logging.getLogger(__name__)

METHODS = ("cc", "pcc", "acc", "pacc", "em")
_SUM_WEIGHT = 1e3  # the weight of the sum-to-one row in the adjusted counts' least squares


@dataclasses.dataclass(frozen=True)
class Quantifier:
    """What the corrections learn from labelled predictions: the prior the classifier's probabilities were made
    under, and the hard and soft rates ``P(predicted i | true j)`` (columns: true classes)."""

    classes: tuple[str, ...]
    prior: np.ndarray
    hard: np.ndarray
    soft: np.ndarray

    @classmethod
    def fit(cls, probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], prior: np.ndarray | None = None):
        """From ``(V, K)`` probabilities of labelled images and their labels; ``prior``: the training set's class
        proportions (default: the labels', which a stratified validation split shares with its training split)."""
        from quapy.method.aggregative import ACC, PACC

        probs, labels = _check_probs(probs, len(classes), "validation"), np.asarray(labels)
        if len(labels) != len(probs):
            raise ValueError(f"{len(labels)} labels for {len(probs)} predictions")
        k = len(classes)
        if prior is None:
            prior = np.bincount(labels, minlength=k) / len(labels)
        index = np.arange(k)
        hard = ACC.getPteCondEstim(index, labels, probs.argmax(1))
        soft = PACC.getPteCondEstim(index, labels, probs)
        return cls(tuple(classes), np.asarray(prior, np.float64), hard, soft)

    def proportions(self, probs: np.ndarray, method: str) -> np.ndarray:
        """The sample's ``(K,)`` class proportions by ``method`` (:data:`METHODS`) from its ``(N, K)`` probabilities."""
        from quapy.method.aggregative import EMQ

        probs = _check_probs(probs, len(self.classes), "sample")
        k = len(self.classes)
        if method == "cc":
            return np.bincount(probs.argmax(1), minlength=k) / len(probs)
        if method == "pcc":
            return probs.mean(0)
        if method == "acc":
            return _adjusted(self.hard, self.proportions(probs, "cc"))
        if method == "pacc":
            return _adjusted(self.soft, self.proportions(probs, "pcc"))
        if method == "em":
            return EMQ.EM(self.prior, probs)[0]
        raise UserError(f"unknown abundance method {method!r}; expected one of {', '.join(METHODS)}")


def _check_probs(probs: np.ndarray, k: int, what: str) -> np.ndarray:
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or probs.shape[1] != k:
        raise ValueError(f"{what} probabilities must be (N, {k}), got {probs.shape}")
    if not len(probs):
        raise UserError(f"the {what} has no images")
    return probs


def _adjusted(rates: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``p >= 0`` with ``sum(p) = 1`` minimising ``|rates p - q|``."""
    from scipy.optimize import nnls

    k = len(q)
    a = np.vstack([rates, np.full((1, k), _SUM_WEIGHT)])
    p, _ = nnls(a, np.append(q, _SUM_WEIGHT))
    return p / p.sum()


@dataclasses.dataclass(frozen=True)
class Abundance:
    """One sample's estimated counts per class and method, with their bootstrap interval; ``volume`` (millilitres
    or any unit, when given) turns them into concentrations."""

    sample: str
    images: int
    classes: tuple[str, ...]
    methods: tuple[str, ...]
    counts: np.ndarray  # (methods, K)
    low: np.ndarray
    high: np.ndarray
    confidence: float
    volume: float | None = None

    def count(self, method: str, cls: str) -> float:
        return float(self.counts[self.methods.index(method), self.classes.index(cls)])


def abundance(
    quantifier: Quantifier,
    val_probs: np.ndarray,
    val_labels: np.ndarray,
    probs: np.ndarray,
    sample: str = "sample",
    methods: Sequence[str] = METHODS,
    reps: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
    volume: float | None = None,
) -> Abundance:
    """The sample's counts by every method, with percentile bootstrap intervals at ``confidence`` from ``reps``
    resamples of both the sample (``probs``) and the labelled predictions the corrections learnt from."""
    for m in methods:
        if m not in METHODS:
            raise UserError(f"unknown abundance method {m!r}; expected one of {', '.join(METHODS)}")
    if not 0 < confidence < 1:
        raise UserError(f"the confidence level must lie between 0 and 1, got {confidence}")
    if volume is not None and not volume > 0:
        raise UserError(f"sample {sample!r}: its volume must be > 0, got {volume}")
    n = len(probs)
    point = np.stack([quantifier.proportions(probs, m) for m in methods]) * n
    rng = np.random.default_rng(seed)
    draws = np.empty((reps, *point.shape))
    for r in range(reps):
        v = rng.integers(0, len(val_probs), len(val_probs))
        q = Quantifier.fit(val_probs[v], val_labels[v], quantifier.classes, quantifier.prior)
        s = probs[rng.integers(0, n, n)]
        draws[r] = np.stack([q.proportions(s, m) for m in methods]) * n
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(draws, [tail, 100 - tail], axis=0) if reps else (point, point)
    return Abundance(sample, n, quantifier.classes, tuple(methods), point, low, high, confidence, volume)


def group_samples(names: Sequence[str], by: str = "", groups: str = "") -> dict[str, np.ndarray]:
    """The images' indices per sample: all one sample (``"all"``), a sub-folder per sample (``by="folder"``: the
    image's folder relative to the predicted root), or an ``image,sample`` CSV (``groups``) that must name every
    image."""
    import csv

    if by and groups:
        raise UserError("give --by folder or --groups FILE, not both")
    if by not in ("", "folder"):
        raise UserError(f"--by {by!r}: expected 'folder' (a sub-folder per sample) or a --groups CSV")
    if by == "folder":
        keys = [os.path.dirname(n) or "." for n in names]
    elif groups:
        with open(groups, newline="") as f:
            rows = list(csv.reader(f))
        if not rows or [c.strip().lower() for c in rows[0][:2]] != ["image", "sample"]:
            raise UserError(f"{groups}: expected a CSV whose header starts with image,sample")
        table = {r[0]: r[1] for r in rows[1:] if len(r) >= 2}
        missing = [n for n in names if n not in table]
        if missing:
            raise UserError(f"{groups} names no sample for {len(missing)} image(s), e.g. {missing[:3]}")
        keys = [table[n] for n in names]
    else:
        keys = ["all"] * len(names)
    out: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        out.setdefault(k, []).append(i)
    return {k: np.array(v) for k, v in sorted(out.items())}


def read_volumes(path: str) -> dict[str, float]:
    """``sample,volume`` rows (a header line naming them) -> volume per sample."""
    import csv

    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["sample", "volume"]:
        raise UserError(f"{path}: expected a CSV whose header starts with sample,volume")
    volumes = {}
    for i, row in enumerate(rows[1:], start=2):
        try:
            volumes[row[0]] = float(row[1])
        except (IndexError, ValueError):
            raise UserError(f"{path}, line {i}: expected sample,volume with a number, got {row}") from None
    return volumes


def write_abundances(results: Sequence[Abundance], path: str) -> None:
    """One row per sample, class and method: count and interval, and per unit of volume where known."""
    import csv

    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sample", "images", "class", "method", "count", "low", "high", "confidence",
                    "per_volume", "per_volume_low", "per_volume_high"])  # fmt: skip
        for a in results:
            for mi, m in enumerate(a.methods):
                for ci, c in enumerate(a.classes):
                    vals = (a.counts[mi, ci], a.low[mi, ci], a.high[mi, ci])
                    per = [f"{v / a.volume:.6g}" for v in vals] if a.volume else ["", "", ""]
                    w.writerow([a.sample, a.images, c, m, *(f"{v:.4f}" for v in vals), a.confidence, *per])
    os.replace(tmp, path)


@dataclasses.dataclass(frozen=True)
class ShiftStudy:
    """Samples drawn with a known class mix from labelled predictions the corrections did not learn from: per
    method, the mean L1 distance of the estimated proportions to the true ones, the mean absolute error on the
    class made ``boost`` times more common, and the mean share estimated for the class made absent."""

    methods: tuple[str, ...]
    sample_size: int
    samples: int
    boost: float
    l1: dict[str, float]
    boosted_error: dict[str, float]
    absent_share: dict[str, float]
    true: np.ndarray  # (samples, K) proportions
    estimates: dict[str, np.ndarray]  # method -> (samples, K)
    boosted: np.ndarray  # (samples,) the class made more common in each sample
    absent: np.ndarray  # (samples,) the class left out of each sample


def shift_study(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    samples: int = 20,
    sample_size: int = 1000,
    boost: float = 10.0,
    min_images: int = 10,
    seed: int = 0,
    methods: Sequence[str] = METHODS,
) -> ShiftStudy:
    """Splits the labelled predictions in two halves (stratified): the corrections learn from the first; each sample
    is drawn from the second with the labels' class mix, except one class (of at least ``min_images`` images in
    the half) at ``boost`` times its share and another absent; every method estimates its proportions."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    k = len(classes)
    fit_idx, pool_idx = [], []
    for c in range(k):
        idx = rng.permutation(np.flatnonzero(labels == c))
        fit_idx += list(idx[: len(idx) // 2])
        pool_idx += list(idx[len(idx) // 2 :])
    fit, pool = np.array(fit_idx), np.array(pool_idx)
    q = Quantifier.fit(probs[fit], labels[fit], classes, np.bincount(labels, minlength=k) / len(labels))
    by_class = [pool[labels[pool] == c] for c in range(k)]
    present = np.array([len(b) > 0 for b in by_class])
    candidates = np.flatnonzero(np.array([len(b) >= min_images for b in by_class]))
    if len(candidates) < 2:
        raise UserError(f"too few classes with {min_images} labelled images to shift (found {len(candidates)})")
    base = np.bincount(labels, minlength=k) * present
    true = np.zeros((samples, k))
    est = {m: np.zeros((samples, k)) for m in methods}
    boosted, absent = np.zeros(samples, int), np.zeros(samples, int)
    for s in range(samples):
        a, b = rng.choice(candidates, 2, replace=False)
        target = base.astype(np.float64)
        target[a] *= boost
        target[b] = 0
        drawn = rng.choice(k, sample_size, p=target / target.sum())
        pick = np.array([rng.choice(by_class[c]) for c in drawn])
        true[s] = np.bincount(drawn, minlength=k) / sample_size
        for m in methods:
            est[m][s] = q.proportions(probs[pick], m)
        boosted[s], absent[s] = a, b
    rows = np.arange(samples)
    return ShiftStudy(
        tuple(methods),
        sample_size,
        samples,
        boost,
        {m: float(np.abs(est[m] - true).sum(1).mean()) for m in methods},
        {m: float(np.abs(est[m][rows, boosted] - true[rows, boosted]).mean()) for m in methods},
        {m: float(est[m][rows, absent].mean()) for m in methods},
        true,
        est,
        boosted,
        absent,
    )
