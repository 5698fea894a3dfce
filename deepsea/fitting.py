"""Fitting what is applied after a network: temperature scaling (and a per-class bias) and per-class thresholds for
a target precision, chosen on labelled images and stored in the predictor's folder, and the late fusion of image
features with frozen runs (:func:`fuse_runs`, written as a fused run)."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from deepsea import rundir
from deepsea.calibration import Calibration, Thresholds
from deepsea.errors import UserError
from deepsea.evaluation import Evaluation, evaluate_probs
from deepsea.fusion import FusionResult, FusionSettings, fit_fusion, fusion_probs, standardise
from deepsea.metrics import log_probabilities
from deepsea.predictor import predictor_probs
from deepsea.runs import scoring_set
from deepsea.tta import Combine

__all__ = [
    "CalibrationResult",
    "ThresholdResult",
    "calibrate_run",
    "fuse_runs",
    "threshold_run",
]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CalibrationResult:
    """What ``deepsea calibrate`` fitted, and the validation scores before and after."""

    calibration: Calibration
    cv_log_loss: dict[str, float]
    before: Evaluation
    after: Evaluation
    ece_before: float
    ece_after: float
    png: str


def calibrate_run(
    run: Any, tta: int | str = 0, combine: Combine = "mean", progress: bool = True, data: str | None = None
) -> CalibrationResult:
    """Fits temperature scaling (and a per-class bias when cross-validation says it helps) on a predictor's
    validation split (or the labelled folder ``data``: :func:`scoring_set`), stores it as ``calibration.json`` in its
    folder (used from then on by evaluate, predict and ensemble for the same TTA setting) and draws
    ``reliability.png``."""
    from deepsea.calibration import choose_calibration, expected_calibration_error
    from deepsea.plots import save_reliability_png

    val = scoring_set(run, data)
    raw = predictor_probs(run, val.paths, tta, combine, progress, calibrated=False)
    calibration, scores = choose_calibration(raw, val.labels)
    after = calibration.apply(raw)
    record = {"calibration": calibration.to_dict(), "tta": tta, "combine": combine, "checkpoint": run.key}
    rundir.save_json(os.path.join(run.workdir, "calibration.json"), {**record, "cv_log_loss": scores})
    png = save_reliability_png(
        {"before": (raw, val.labels), "after": (after, val.labels)}, os.path.join(run.workdir, "reliability.png")
    )
    return CalibrationResult(
        calibration,
        scores,
        evaluate_probs(raw, val.labels, "before"),
        evaluate_probs(after, val.labels, "after"),
        expected_calibration_error(raw, val.labels),
        expected_calibration_error(after, val.labels),
        png,
    )


@dataclasses.dataclass(frozen=True)
class ThresholdResult:
    """Per-class thresholds fitted on the validation split, with the share they classify and the precision."""

    thresholds: Thresholds
    classified: float  # share of validation images given a label
    precision: float  # of those labels
    cv_classified: float  # the same with thresholds fitted on the other folds (5-fold): what new images get
    cv_precision: float


def threshold_run(
    run: Any,
    target_precision: float,
    tta: int | str = 0,
    combine: Combine = "mean",
    progress: bool = True,
    data: str | None = None,
) -> ThresholdResult:
    """Chooses per-class thresholds for ``target_precision`` on a predictor's (calibrated, if it is) validation
    predictions (or those of the labelled folder ``data``) and stores them as ``thresholds.json`` in its folder for
    ``predict --thresholds``."""
    from deepsea.calibration import UNCLASSIFIED, apply_thresholds, fit_thresholds

    val = scoring_set(run, data)
    probs = predictor_probs(run, val.paths, tta, combine, progress)
    truth = np.asarray(run.classes)[val.labels]

    def scored(idx: np.ndarray, thresholds: Thresholds) -> tuple[np.ndarray, np.ndarray]:
        labels = np.asarray(apply_thresholds(probs[idx], run.classes, thresholds))
        kept = labels != UNCLASSIFIED
        return kept, labels[kept] == truth[idx][kept]

    thresholds = fit_thresholds(probs, val.labels, target_precision)
    kept, right = scored(np.arange(len(truth)), thresholds)
    order = np.random.default_rng(0).permutation(len(truth))
    cv_kept, cv_right = [], []
    for part in np.array_split(order, 5):
        rest = np.setdiff1d(order, part)
        k, r = scored(part, fit_thresholds(probs[rest], val.labels[rest], target_precision))
        cv_kept.append(k)
        cv_right.append(r)
    cv_k, cv_r = np.concatenate(cv_kept), np.concatenate(cv_right)
    record = {**thresholds.to_dict(), "tta": tta, "combine": combine, "checkpoint": run.key}
    rundir.save_json(os.path.join(run.workdir, "thresholds.json"), record)
    nan = float("nan")
    return ThresholdResult(
        thresholds,
        float(kept.mean()),
        float(right.mean()) if right.size else nan,
        float(cv_k.mean()),
        float(cv_r.mean()) if cv_r.size else nan,
    )


def fuse_runs(
    workdirs: Sequence[str],
    out: str,
    tta: int | str = 0,
    combine: str = "mean",
    weights: str = "fitted",
    checkpoint: str = "best",
    precision: str | None = None,
    settings: FusionSettings = FusionSettings(),
    progress: bool = True,
    features: Sequence[str] | None = None,
) -> FusionResult:
    """Fits the fusion of ``workdirs``' blend (see :func:`deepsea.teachers.teacher_predictions` for ``weights``)
    with the image features on their shared validation split, cross-validated, and writes the fused run ``out``.
    ``features``: the :data:`~deepsea.features.FEATURE_GROUPS` fused (default: all)."""
    from deepsea.ensemble import blend_runs
    from deepsea.features import folder_features, group_names
    from deepsea.predictor import blend_probs
    from deepsea.runs import validation_set

    if os.path.exists(os.path.join(out, "config.json")):
        raise UserError(f"{out!r} is a training run; write the fused run elsewhere")
    if features is not None:
        group_names(features)  # an unknown group is an error before anything is predicted
    val = validation_set(workdirs[0])
    for w in workdirs[1:]:
        if validation_set(w).paths != val.paths:
            raise UserError(f"{w!r} has another validation split than {workdirs[0]!r}: fusion needs a shared one")
    members, w = blend_runs(workdirs, tta, combine, weights, checkpoint, precision)
    probs = blend_probs(members, w, val.paths, tta, combine, progress)
    pixel_size = members[0].preprocess.pixel_size
    root = os.path.commonpath([os.path.abspath(p) for p in val.paths])
    table = folder_features(root, val.paths, pixel_size, progress=progress)
    if features is not None:
        table = table.select(features)
    mean, std = table.values.mean(0), table.values.std(0) + 1e-6
    feats, logp, labels = standardise(table.values, mean, std), log_probabilities(probs), val.labels
    folds = np.random.default_rng(settings.seed).permutation(len(labels)) % settings.folds
    oof = np.zeros_like(probs, dtype=np.float64)
    largest = max(int(np.sum(folds != k)) for k in range(settings.folds))
    for k in range(settings.folds):
        fit, held = folds != k, folds == k
        params = fit_fusion(feats[fit], logp[fit], labels[fit], settings, pad_to=largest)
        oof[held] = fusion_probs(params, feats[held], logp[held], settings.hidden, settings.dropout)
    params = fit_fusion(feats, logp, labels, settings)
    convnets, cv = evaluate_probs(probs, labels, "convnets"), evaluate_probs(oof, labels, "fused (cross-validated)")
    os.makedirs(out, exist_ok=True)
    leaves = [leaf for p in params for leaf in jax.tree.leaves(p)]
    tmp = os.path.join(out, ".params.tmp.npz")
    np.savez(tmp, *leaves)
    os.replace(tmp, os.path.join(out, "params.npz"))
    rundir.save_json(
        os.path.join(out, "fused.json"),
        {
            "members": [os.path.abspath(m.workdir) for m in members],
            "weights": [float(x) for x in w],
            "checkpoint": checkpoint,
            "precision": precision,
            "tta": tta,
            "combine": combine,
            "classes": list(members[0].classes),
            "pixel_size": pixel_size,
            "features": list(table.names),
            "mean": mean.tolist(),
            "std": std.tolist(),
            "settings": dataclasses.asdict(settings),
            "validation_images": len(labels),
            "convnets": convnets.to_dict(),
            "cross_validated": cv.to_dict(),
        },
    )
    return FusionResult(out, convnets, cv)
