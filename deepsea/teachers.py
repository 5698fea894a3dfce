"""Teachers' predictions for images nobody labelled (pseudo-labels) or for the training images (distillation).

:func:`teacher_predictions` predicts every image under a folder with one run or a blend of runs (weights fitted
on their shared validation split, or uniform), through the same cached, calibrated, TTA-averaged predictions as
``deepsea ensemble``; :func:`save_teacher_predictions` stores them as an ``.npz`` file with the image paths
(relative to the folder), the classes and a record of the teachers (runs, checkpoints, transforms, weights), and
:func:`load_teacher_predictions` reads it back.  Training uses such a file as ``data.pseudo_labels`` (the images
mixed into every batch with the predictions as soft targets) or ``data.distill`` (the training images' teacher
predictions, mixed into the loss).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from deepsea.ensemble import blend_runs
from deepsea.errors import UserError
from deepsea.predictor import blend_probs

__all__ = [
    "TeacherPredictions",
    "align_teacher_predictions",
    "load_teacher_predictions",
    "save_teacher_predictions",
    "teacher_predictions",
]



@dataclasses.dataclass(frozen=True)
class TeacherPredictions:
    """``probs[i]`` is the teachers' probability vector for the image ``root/images[i]``."""

    root: str
    images: tuple[str, ...]
    classes: tuple[str, ...]
    probs: np.ndarray  # (N, K) float32
    teachers: dict[str, Any]  # runs, checkpoints, TTA, combination, weights


def teacher_predictions(
    workdirs: Sequence[str],
    images: str,
    tta: int | str = 0,
    combine: str = "mean",
    weights: str = "fitted",
    checkpoint: str = "best",
    precision: str | None = None,
    progress: bool = True,
) -> TeacherPredictions:
    """The blended predictions of ``workdirs`` (:func:`blend_runs`) for every image under ``images``
    (recursively)."""
    from deepsea.data.sources import list_images

    runs, w = blend_runs(workdirs, tta, combine, weights, checkpoint, precision)
    rel = list_images(images)
    probs = blend_probs(runs, w, [os.path.join(images, r) for r in rel], tta, combine, progress)
    record = {
        "runs": [os.path.abspath(r.workdir) for r in runs],
        "checkpoints": [r.key for r in runs],
        "weights": [float(x) for x in w],
        "weighting": weights if len(workdirs) > 1 else "single",
        "tta": tta,
        "combine": combine,
    }
    return TeacherPredictions(os.path.abspath(images), tuple(rel), runs[0].classes, probs.astype(np.float32), record)


def save_teacher_predictions(path: str, tp: TeacherPredictions) -> str:
    """Writes ``tp`` to the ``.npz`` file ``path`` (atomically; no pickled objects)."""
    tmp = f"{path}.tmp.{os.getpid()}.npz"
    np.savez_compressed(
        tmp,
        root=np.asarray(tp.root),
        images=np.asarray(tp.images, dtype=str),
        classes=np.asarray(tp.classes, dtype=str),
        probs=tp.probs.astype(np.float32),
        teachers=np.asarray(json.dumps(tp.teachers)),
    )
    os.replace(tmp, path)
    return path


def load_teacher_predictions(path: str) -> TeacherPredictions:
    """Reads a file written by :func:`save_teacher_predictions`; a missing file or field is an error naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no teacher predictions at {path!r} (deepsea pseudolabel writes them)")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = sorted({"root", "images", "classes", "probs", "teachers"} - set(f.files))
            if missing:
                raise UserError(f"{path}: not a teacher predictions file (no {', '.join(missing)})")
            tp = TeacherPredictions(
                str(f["root"]),
                tuple(str(x) for x in f["images"]),
                tuple(str(x) for x in f["classes"]),
                np.asarray(f["probs"], np.float32),
                json.loads(str(f["teachers"])),
            )
    except (OSError, ValueError) as e:
        if str(path) in str(e):
            raise
        raise UserError(f"{path}: not a teacher predictions file ({e})") from None
    if tp.probs.shape != (len(tp.images), len(tp.classes)):
        raise UserError(f"{path}: probabilities of shape {tp.probs.shape} for {len(tp.images)} images")
    return tp


def align_teacher_predictions(
    tp: TeacherPredictions, paths: Sequence[str], classes: Sequence[str], source: str
) -> np.ndarray:
    """``tp``'s probabilities for ``paths`` (absolute or relative to the working directory), in their order; the
    classes must be the run's and every path must have a row.  ``source`` names the file in errors."""
    if tuple(classes) != tp.classes:
        missing = sorted(set(classes) - set(tp.classes))[:5]
        extra = sorted(set(tp.classes) - set(classes))[:5]
        raise UserError(
            f"{source} holds predictions for other classes than this run's ({len(tp.classes)} vs {len(classes)}; "
            f"missing {missing}, extra {extra})"
        )
    row = {os.path.normpath(os.path.join(tp.root, r)): i for i, r in enumerate(tp.images)}
    idx = [row.get(os.path.normpath(os.path.abspath(p)), -1) for p in paths]
    lost = [p for p, i in zip(paths, idx, strict=True) if i < 0]
    if lost:
        raise UserError(f"{source} has no predictions for {len(lost)} of the {len(paths)} images, e.g. {lost[:3]}")
    return tp.probs[np.asarray(idx, np.int64)]
