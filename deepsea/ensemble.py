"""Weighted ensembles: blend weights that minimise validation log loss, models chosen by cross-validation.

The weights are a softmax of free parameters (so they are positive and sum to
one), fitted with L-BFGS on the exact gradient.  Which models to blend, and
how many, is chosen by greedy forward selection scored on held-out folds of
the validation set, so the choice is not fitted to the same images it is
judged on.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.optimize

from deepsea.metrics import KAGGLE_EPS, log_loss

__all__ = ["Blend", "blend", "cross_validated_selection", "fit_blend_weights"]


def blend(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``sum_m w_m p_m`` for ``probs`` of shape ``(M, N, K)``."""
    return np.tensordot(np.asarray(weights, np.float64), np.asarray(probs, np.float64), axes=1)


def fit_blend_weights(probs: np.ndarray, labels: np.ndarray, eps: float = KAGGLE_EPS) -> np.ndarray:
    """Softmax-parametrised weights (M,) minimising the log loss of the blend on ``labels``."""
    p = np.clip(np.asarray(probs, np.float64)[:, np.arange(len(labels)), labels], eps, None)  # (M, N)
    m = p.shape[0]
    if m == 1:
        return np.ones(1)

    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w = np.exp(theta - theta.max())
        w /= w.sum()
        q = w @ p  # (N,)
        loss = -np.mean(np.log(q))
        dw = -(p / q).mean(axis=1)  # d loss / d w
        grad = w * (dw - w @ dw)  # through the softmax
        return float(loss), grad

    res = scipy.optimize.minimize(
        loss_and_grad, np.zeros(m), jac=True, method="L-BFGS-B", options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-10}
    )
    w = np.exp(res.x - res.x.max())
    return w / w.sum()


@dataclasses.dataclass(frozen=True)
class Blend:
    """The chosen models (indices), their weights, and the cross-validated log loss of the blend."""

    models: tuple[int, ...]
    weights: np.ndarray
    cv_log_loss: float
    single_log_loss: tuple[float, ...]


def _cv_loss(probs: np.ndarray, labels: np.ndarray, folds: list[np.ndarray], uniform: bool) -> float:
    losses, n = [], 0
    for held in folds:
        train = np.setdiff1d(np.arange(len(labels)), held)
        w = np.full(len(probs), 1 / len(probs)) if uniform else fit_blend_weights(probs[:, train], labels[train])
        losses.append(log_loss(blend(probs[:, held], w), labels[held]) * len(held))
        n += len(held)
    return sum(losses) / n


def cross_validated_selection(
    probs: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0, uniform: bool = False
) -> Blend:
    """Greedy forward selection of models by k-fold cross-validated blend log loss; weights refitted on all."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 3 or probs.shape[1] != len(labels):
        raise ValueError(f"expected probabilities (models, {len(labels)}, classes), got {probs.shape}")
    order = np.random.default_rng(seed).permutation(len(labels))
    fold_idx = [np.sort(f) for f in np.array_split(order, min(folds, len(labels)))]
    singles = tuple(log_loss(p, labels) for p in probs)
    chosen: list[int] = []
    best = np.inf
    while len(chosen) < len(probs):
        trials = {
            m: _cv_loss(probs[[*chosen, m]], labels, fold_idx, uniform) for m in range(len(probs)) if m not in chosen
        }
        m, loss = min(trials.items(), key=lambda kv: kv[1])
        if loss >= best - 1e-6:
            break
        chosen.append(m)
        best = loss
    sub = probs[chosen]
    weights = np.full(len(chosen), 1 / len(chosen)) if uniform else fit_blend_weights(sub, labels)
    return Blend(tuple(chosen), weights, float(best), singles)
