"""Classification metrics as the NDSB competition scored them."""

from __future__ import annotations

import numpy as np

__all__ = [
    "KAGGLE_EPS",
    "accuracy",
    "confusion_matrix",
    "log_loss",
    "log_probabilities",
    "per_class_accuracy",
    "top_k_accuracy",
]

KAGGLE_EPS = 1e-15


def log_loss(probs: np.ndarray, labels: np.ndarray, eps: float = KAGGLE_EPS) -> float:
    """Multiclass log loss as Kaggle computed it: clip to ``[eps, 1 - eps]``, renormalise rows, mean -log p."""
    p = np.clip(np.asarray(probs, np.float64), eps, 1 - eps)
    p /= p.sum(axis=1, keepdims=True)
    labels = np.asarray(labels)
    return float(-np.mean(np.log(p[np.arange(len(labels)), labels])))


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(probs, axis=1) == np.asarray(labels)))


def top_k_accuracy(probs: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    top = np.argsort(-np.asarray(probs), axis=1)[:, :k]
    return float(np.mean(np.any(top == np.asarray(labels)[:, None], axis=1)))


def confusion_matrix(probs: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """``m[true, predicted]`` counts (int64)."""
    k = num_classes or np.asarray(probs).shape[1]
    m = np.zeros((k, k), np.int64)
    np.add.at(m, (np.asarray(labels), np.argmax(probs, axis=1)), 1)
    return m


def per_class_accuracy(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Recall of each class (NaN for classes absent from ``labels``)."""
    m = confusion_matrix(probs, labels)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diag(m) / m.sum(1)


_PROB_FLOOR = 1e-7  # log(0) guard for predictions used as inputs or targets (Kaggle's scoring clips at 1e-15)


def log_probabilities(probs: np.ndarray) -> np.ndarray:
    """``log(probs)`` (float32), floored so that a zero probability stays finite: what distillation and late fusion
    take of the teachers' predictions."""
    return np.log(np.maximum(probs, _PROB_FLOOR)).astype(np.float32)
