"""Classification metrics as the NDSB competition scored them."""

from __future__ import annotations

import numpy as np

__all__ = [
    "KAGGLE_EPS",
    "accuracy",
    "confusion_matrix",
    "log_loss",
    "per_class_accuracy",
    "save_confusion_png",
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


def save_confusion_png(probs: np.ndarray, labels: np.ndarray, classes: list[str], path: str, title: str = "") -> str:
    """A row-normalised confusion matrix readable for 121 classes: log colour scale, every class labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    m = confusion_matrix(probs, labels, len(classes)).astype(np.float64)
    rows = m.sum(1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    k = len(classes)
    size = max(6.0, 0.16 * k + 3)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(np.where(norm > 0, norm, np.nan), cmap="viridis", norm=LogNorm(vmin=1e-3, vmax=1))
    fs = max(3.0, min(9.0, 600 / k / 6))
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(classes, rotation=90, fontsize=fs)
    ax.set_yticklabels(classes, fontsize=fs)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"confusion (row-normalised), accuracy {accuracy(probs, labels):.3f}")
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
