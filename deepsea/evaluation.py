"""Scores: log loss (as Kaggle scored it), accuracy and top-5 of predictions, any predictor evaluated on its
validation split or a labelled folder (plain and with TTA), and each class's recall."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import numpy as np

from deepsea import metrics as M
from deepsea import rundir
from deepsea.data import (
    scan_labelled_folder,
)
from deepsea.predictor import predictor_calibration, predictor_probs
from deepsea.runs import scoring_set
from deepsea.tta import Combine

__all__ = [
    "Evaluation",
    "PerClassRecall",
    "RunEvaluation",
    "evaluate_probs",
    "evaluate_run",
    "per_class_recall",
]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Log loss (as Kaggle scored it), accuracy and top-5 accuracy of one set of predictions."""

    log_loss: float
    accuracy: float
    top5: float
    step: int | None = None
    label: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "label"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Evaluation:
        return cls(d["log_loss"], d["accuracy"], d["top5"], d.get("step"))

    def __str__(self) -> str:
        return f"log loss {self.log_loss:.4f}, accuracy {self.accuracy:.4f}, top-5 {self.top5:.4f}"


def evaluate_probs(probs: np.ndarray, labels: np.ndarray, label: str = "") -> Evaluation:
    """Log loss, accuracy and top-5 accuracy of ``probs (N, K)`` against integer ``labels``."""
    return Evaluation(
        M.log_loss(probs, labels), M.accuracy(probs, labels), M.top_k_accuracy(probs, labels, 5), None, label
    )


@dataclasses.dataclass(frozen=True)
class RunEvaluation:
    """A predictor's scores, plain and with each TTA setting asked for (and a fused run's members beside it), and
    the last setting's predictions; a fused run asked without labelled data gives the cross-validated scores it
    was fitted with (no predictions)."""

    run: Any
    rows: tuple[Evaluation, ...]
    probs: np.ndarray | None
    labels: np.ndarray | None


@dataclasses.dataclass(frozen=True)
class PerClassRecall:
    """Each class's recall on some evaluated images, with its training and evaluated image counts; ``rare``: the
    third of the classes with the fewest training images (what class weights and balanced sampling are for)."""

    classes: tuple[str, ...]
    recall: np.ndarray  # NaN for classes without evaluated images
    training_images: np.ndarray
    evaluated_images: np.ndarray
    rare: np.ndarray

    def write_csv(self, path: str) -> str:
        import csv

        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["class", "training_images", "validation_images", "recall"])
            for k, c in enumerate(self.classes):
                w.writerow([c, int(self.training_images[k]), int(self.evaluated_images[k]), f"{self.recall[k]:.4f}"])
        return path


def per_class_recall(workdir: str, probs: np.ndarray, labels: np.ndarray) -> PerClassRecall:
    """:class:`PerClassRecall` of ``probs`` against ``labels`` (the run's class indices); the training counts come
    from the run's split, after its class mapping."""
    split = rundir.load_json(os.path.join(workdir, "split.json"))
    folder = rundir.apply_class_map(workdir, scan_labelled_folder(split["root"]))
    train_idx, _, _ = rundir.load_run_data(workdir, folder)
    k = len(folder.classes)
    counts = np.bincount(folder.labels[train_idx], minlength=k)
    rare = np.argsort(counts, kind="stable")[: k // 3]
    evaluated = np.bincount(labels, minlength=k)
    return PerClassRecall(tuple(folder.classes), M.per_class_accuracy(probs, labels), counts, evaluated, rare)


def evaluate_run(
    run: Any, tta: int | str = 0, combine: Combine = "mean", progress: bool = True, data: str | None = None
) -> RunEvaluation:
    """Scores any predictor on its validation split (or every image of the labelled folder ``data``) without TTA
    and, if ``tta`` is given, with it (a fused run: with its own setting, and its members' blend beside it); a
    setting it has a calibration for is scored calibrated (its label says so)."""
    fitted = getattr(run, "fitted_scores", None)
    if data is None and run.validation_split is None and fitted:
        return RunEvaluation(run, tuple(fitted), None, None)
    val = scoring_set(run, data)
    settings = [run.fixed_tta] if run.fixed_tta is not None else [0] + ([tta] if tta else [])
    rows, probs = [], None
    step = getattr(run, "step", None)
    for n in settings:
        calibration = predictor_calibration(run, n, combine, warn=False)
        probs = predictor_probs(run, val.paths, n, combine, progress, calibrated=False)
        label = "plain" if n == 0 else "TenCrop" if n == "tencrop" else f"TTA {n}"
        label = label if run.fixed_tta is None else "fused"
        if calibration is not None:
            probs, label = calibration.apply(probs), f"{label} calibrated"
        rows.append(dataclasses.replace(evaluate_probs(probs, val.labels, label), step=step))
    reference = getattr(run, "reference_probs", None)
    if reference is not None:  # what a fused run starts from: its members' blend
        label, ref = reference(val.paths, progress)
        rows.append(evaluate_probs(ref, val.labels, label))
    assert probs is not None
    return RunEvaluation(run, tuple(rows), probs, val.labels)
