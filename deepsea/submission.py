"""Prediction files: the Kaggle NDSB CSV (every class's probability; optional label and top-n columns), written
atomically and read back."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence

import numpy as np

from deepsea.errors import UserError

__all__ = [
    "Prediction",
    "read_submission",
    "submission_header",
    "submission_rows",
    "write_submission",
]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Probabilities for the images of a folder, and the images that were skipped as unreadable."""

    names: tuple[str, ...]
    classes: tuple[str, ...]
    probs: np.ndarray
    skipped: tuple[tuple[str, str], ...] = ()


def submission_header(classes: Sequence[str], top: int = 0, labelled: bool = False) -> list[str]:
    """The header of a prediction CSV: ``image``, the classes, then ``label`` and ``top1,top1_prob,...``."""
    ranked = [c for k in range(1, top + 1) for c in (f"top{k}", f"top{k}_prob")]
    return ["image", *classes, *(["label"] if labelled else []), *ranked]


def submission_rows(
    names: Sequence[str],
    classes: Sequence[str],
    probs: np.ndarray,
    top: int = 0,
    labels: Sequence[str] | None = None,
) -> Iterator[list[str]]:
    """The rows under :func:`submission_header` for ``probs`` (rows renormalised to sum to 1)."""
    probs = np.asarray(probs, np.float64)
    if probs.shape != (len(names), len(classes)):
        raise ValueError(f"probabilities {probs.shape} do not match {len(names)} images x {len(classes)} classes")
    if not 0 <= top <= len(classes):
        raise UserError(f"top must be between 0 and the {len(classes)} classes, got {top}")
    if labels is not None and len(labels) != len(names):
        raise ValueError(f"{len(labels)} labels for {len(names)} images")
    probs = probs / probs.sum(1, keepdims=True)
    best = np.argsort(-probs, axis=1, kind="stable")[:, :top]
    for i, (name, row) in enumerate(zip(names, probs, strict=True)):
        label = [] if labels is None else [labels[i]]
        yield [name, *(f"{p:.6g}" for p in row), *label, *(v for j in best[i] for v in (classes[j], f"{row[j]:.6g}"))]


def write_submission(
    path: str,
    names: Sequence[str],
    classes: Sequence[str],
    probs: np.ndarray,
    top: int = 0,
    labels: Sequence[str] | None = None,
) -> None:
    """The Kaggle NDSB format: header ``image,<class>,...``, one row per image, rows renormalised to sum to 1.

    After the class columns (then no longer Kaggle's format): ``labels`` as a ``label`` column (a class or
    ``unclassified``, from per-class thresholds), and the ``top`` most probable classes of each image with
    their probabilities (``top1,top1_prob,top2,...``).
    """
    import csv

    rows = list(submission_rows(names, classes, probs, top, labels))  # checks the arguments before writing
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(submission_header(classes, top, labels is not None))
        w.writerows(rows)
    os.replace(tmp, path)


def read_submission(path: str) -> tuple[list[str], list[str], np.ndarray]:
    """``(image names, classes, probabilities)`` from a submission CSV (top-n columns, if any, are left out)."""
    import csv
    import re

    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0][0] != "image":
        raise UserError(f"{path!r} is not a submission: its header must start with 'image'")
    header = rows[0]
    end = len(header)
    while end > 1 and re.fullmatch(r"top\d+(_prob)?|label", header[end - 1]):
        end -= 1
    names = [r[0] for r in rows[1:]]
    return names, header[1:end], np.array([[float(x) for x in r[1:end]] for r in rows[1:]], np.float64)
