"""Weighted ensembles: blend weights that minimise validation log loss, models chosen by cross-validation, and
:func:`ensemble_runs`, which blends any predictors (runs sharing a validation split, bagged groups, or any
models averaged uniformly) and predicts a folder with the blend.

The weights are a softmax of free parameters (so they are positive and sum to
one), fitted with L-BFGS on the exact gradient.  Which models to blend, and
how many, is chosen by greedy forward selection scored on held-out folds of
the validation set, so the choice is not fitted to the same images it is
judged on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.optimize

from deepsea import rundir
from deepsea.data import Preprocess, check_images, scan_flat_folder
from deepsea.errors import UserError
from deepsea.evaluation import Evaluation, evaluate_probs
from deepsea.metrics import KAGGLE_EPS, log_loss
from deepsea.predictor import predictor_probs
from deepsea.runs import validation_set
from deepsea.submission import Prediction
from deepsea.tta import Combine

__all__ = [
    "Blend",
    "EnsembleError",
    "EnsembleResult",
    "blend",
    "blend_runs",
    "cross_validated_selection",
    "ensemble_runs",
    "fit_blend_weights",
]

log = logging.getLogger(__name__)


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


def _checked_images(
    images: str, skip_bad: bool, pp: Preprocess | None = None
) -> tuple[Any, tuple[tuple[str, str], ...]]:
    folder, _, skipped = check_images(scan_flat_folder(images), skip_bad=skip_bad, pp=pp)
    return folder, tuple(skipped)


@dataclasses.dataclass(frozen=True)
class EnsembleResult:
    """The runs, each one's validation log loss, the chosen models and weights, the blend's validation scores
    (when the runs share a split) and the blended predictions for a folder (when one was given)."""

    workdirs: tuple[str, ...]
    single_log_loss: tuple[float, ...] | None
    chosen: tuple[int, ...]
    weights: np.ndarray
    validation: Evaluation | None
    cv_log_loss: float | None
    test: Prediction | None

    def save_scores(self, path: str, uniform: bool, tta: int | str) -> str:
        """Writes the blend's validation scores as JSON (for a claims page); an error when the runs share no
        validation split (there is no blend score)."""
        if self.validation is None:
            raise EnsembleError("--scores needs runs that share a validation split (there is no blend score)")
        scores = {"runs": list(self.workdirs), "uniform": uniform, "tta": tta,
                  "weights": np.asarray(self.weights).tolist(), "single_log_loss": self.single_log_loss,
                  "validation": self.validation.to_dict()}  # fmt: skip
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(scores, f, indent=1)
        return path


class EnsembleError(UserError):
    """Runs that cannot be blended as asked."""


def _train_paths(workdir: str) -> set[str]:
    split = rundir.load_json(os.path.join(workdir, "split.json"))
    return {os.path.normpath(os.path.join(split["root"], p)) for p in split["train"]}


def _member_validation(
    group: Sequence[Any], paths: Sequence[str], tta: int | str, combine: Combine
) -> tuple[np.ndarray, np.ndarray]:
    """A member's predictions for the blend's validation ``paths``: a single run's own, or for a bagged group
    (``a+b+c``) each image's mean over the runs that did not train on it (out of bag), and which images have
    such a run."""
    probs = np.stack([predictor_probs(r, paths, tta, combine) for r in group])
    if len(group) == 1:
        return probs[0], np.ones(len(paths), bool)
    trained = [_train_paths(r.workdir) for r in group]
    held_out = np.array([[os.path.normpath(p) not in t for p in paths] for t in trained])
    n = held_out.sum(0)
    mean = np.einsum("rnk,rn->nk", probs, held_out) / np.maximum(n, 1)[:, None]
    return mean, n > 0


def ensemble_runs(
    workdirs: Sequence[str],
    checkpoint: str = "best",
    tta: int | str = 0,
    combine: Combine = "mean",
    uniform: bool = False,
    folds: int = 5,
    images: str | None = None,
    skip_bad: bool = False,
    precision: str | None = None,
) -> EnsembleResult:
    """Blends runs: weights fitted on their shared validation split with models chosen by cross-validated greedy
    selection, or (``uniform``) every run with equal weight, whether or not the runs share a split (bagging;
    with ``tta="tencrop"`` the second reference's m x 10 averaging); optionally predicts ``images``.

    A member ``a+b+c`` is a bagged group, averaged uniformly: in a fitted blend its predictions for the
    validation images are each image's mean over the runs that did not train on it (out of bag), and the
    weights are fitted on the images that every group has such a run for."""
    from deepsea.load import load_predictor

    groups = [tuple(w.split("+")) for w in workdirs]
    members = [os.path.realpath(w) for g in groups for w in g]
    twice = sorted({w for w in members if members.count(w) > 1})
    if twice:  # harmless (the blend counts it once per mention), but rarely meant
        log.warning("the ensemble names %s more than once: each mention is a member", twice[0])
    runs = [[load_predictor(w, checkpoint, precision) for w in g] for g in groups]
    flat = [r for g in runs for r in g]
    if any(r.classes != flat[0].classes for r in flat):
        raise EnsembleError("the runs were trained on different class lists")
    splitless = [r.workdir for r in flat if r.validation_split is None]
    if splitless and not uniform:
        raise EnsembleError(
            f"{splitless[0]} has no validation split of its own, so blend weights cannot be fitted: use --uniform"
        )
    if splitless:  # a uniform average of any predictors: nothing to score them on
        if not images:
            raise EnsembleError("a uniform blend of models without validation splits needs --images to predict")
        singles_at: list[int] = []
    else:
        singles_at = [i for i, g in enumerate(groups) if len(g) == 1]
    vals = {w: validation_set(w) for w in (groups[i][0] for i in singles_at)}
    base = None if splitless else vals[groups[singles_at[0]][0]] if singles_at else validation_set(groups[0][0])
    same_split = base is not None and all(v.paths == base.paths for v in vals.values())
    if not same_split and not uniform:
        raise EnsembleError(
            "the runs have different validation splits, so blend weights cannot be fitted; "
            "use --uniform to average them (bagging), or join bagged runs with + into one member"
        )
    chosen = tuple(range(len(runs)))
    weights = np.full(len(runs), 1 / len(runs))
    singles = validation = cv = None
    if same_split:
        members = [_member_validation(g, base.paths, tta, combine) for g in runs]
        usable = np.logical_and.reduce([m[1] for m in members])
        if not usable.any():
            raise EnsembleError("no validation image is out of bag for every bagged group: nothing to fit on")
        probs = np.stack([m[0][usable] for m in members])
        labels = base.labels[usable]
        if uniform:  # every run, no selection
            singles = tuple(evaluate_probs(p, labels).log_loss for p in probs)
        else:
            selection = cross_validated_selection(probs, labels, folds=folds)
            chosen, weights, singles, cv = (
                selection.models,
                selection.weights,
                selection.single_log_loss,
                selection.cv_log_loss,
            )
        validation = evaluate_probs(blend(probs[list(chosen)], weights), labels)
    test = None
    if images:
        strictest = max((r.preprocess for r in flat), key=lambda pp: pp.channels)
        folder, skipped = _checked_images(images, skip_bad, strictest)
        paths = list(folder.paths)
        probs = np.stack([np.mean([predictor_probs(r, paths, tta, combine) for r in runs[i]], 0) for i in chosen])
        test = Prediction(folder.names, flat[0].classes, blend(probs, weights), skipped)
    return EnsembleResult(tuple(workdirs), singles, tuple(chosen), weights, validation, cv, test)


def blend_runs(
    workdirs: Sequence[str],
    tta: int | str = 0,
    combine: str = "mean",
    weights: str = "fitted",
    checkpoint: str = "best",
    precision: str | None = None,
) -> tuple[list[Any], np.ndarray]:
    """The predictors of a blend (runs, exported models or fused runs: :func:`deepsea.load.load_predictor`)
    and their weights: ``"fitted"`` (:func:`deepsea.ensemble.ensemble_runs` on the runs' shared validation split,
    models chosen by cross-validation; one predictor has weight 1) or ``"uniform"``."""
    from deepsea.load import load_predictor

    if weights not in ("fitted", "uniform"):
        raise UserError(f"weights must be 'fitted' or 'uniform', got {weights!r}")
    if not workdirs:
        raise UserError("no runs given")
    if len(workdirs) == 1:
        chosen, w = (0,), np.ones(1)
    else:
        blend = ensemble_runs(workdirs, checkpoint, tta, combine, uniform=weights == "uniform", precision=precision)  # type: ignore[arg-type]
        chosen, w = blend.chosen, np.asarray(blend.weights, np.float64)
    runs = [load_predictor(workdirs[i], checkpoint, precision) for i in chosen]
    if any(r.classes != runs[0].classes for r in runs):
        raise UserError("the runs were trained on different class lists")
    return runs, w
