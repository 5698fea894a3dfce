"""Inference: restore a run, predict with or without test-time augmentation, evaluate, blend ensembles.

Everything returns named results (dataclasses).  Predictions under each
checkpoint, image list and transform set are cached in the run folder
(``predictions/<key>.npz``), so a second evaluation, a prediction or an
ensemble reuses them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from deepsea import metrics as M
from deepsea import rundir
from deepsea.calibration import Calibration, Thresholds
from deepsea.data import (
    AugmentParams,
    AugmentRanges,
    Preprocess,
    check_images,
    scan_flat_folder,
    scan_labelled_folder,
)
from deepsea.errors import UserError
from deepsea.models import PRECISIONS, build_model, network_layers
from deepsea.predictor import batch_probs, predictor_calibration, predictor_probs
from deepsea.tta import Combine, tta_ranges_for

__all__ = [
    "CalibrationResult",
    "EnsembleError",
    "EnsembleResult",
    "Evaluation",
    "NoValidationSplit",
    "PerClassRecall",
    "Prediction",
    "Run",
    "RunEvaluation",
    "ThresholdResult",
    "ValidationSet",
    "calibrate_run",
    "data_mesh",
    "ensemble_runs",
    "evaluate_probs",
    "evaluate_run",
    "labelled_set",
    "local_variables",
    "per_class_recall",
    "predict_probs",
    "put_batch",
    "read_submission",
    "restore_run",
    "scoring_set",
    "submission_header",
    "submission_rows",
    "threshold_run",
    "tta_probs",
    "validation_set",
    "write_submission",
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


def data_mesh(local: bool = False) -> jax.sharding.Mesh:
    """A 1-D mesh over every device of every process (training), or of this process (``local``: prediction,
    where each process predicts its own images), the batch axis split over it."""
    devices = jax.local_devices() if local else jax.devices()
    return jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def local_variables(variables: Any) -> Any:
    """``variables`` as this process's arrays: a parameter replicated over several processes' devices (a training
    state) becomes its local copy, so this process can predict with its own devices."""

    def local(a: Any) -> Any:
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return a.addressable_shards[0].data
        return a

    return jax.tree.map(local, variables)


_MODEL_INPUTS = ("image", "image2", "label", "raw_size", "weight", "target", "teacher")


def put_batch(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """Places a batch's model inputs on the mesh, split over the batch axis; with several processes, ``batch``
    is this process's slice of the global batch."""
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    if mesh.is_multi_process:
        return {k: jax.make_array_from_process_local_data(sharding, batch[k]) for k in _MODEL_INPUTS if k in batch}
    return {k: jax.device_put(batch[k], sharding) for k in _MODEL_INPUTS if k in batch}


@functools.lru_cache(maxsize=8)
def _predict_fn(model: nn.Module):
    """One jitted prediction function per model (Linen modules hash by value), so every validation pass
    of a run reuses the same compiled code instead of tracing anew."""
    from deepsea.step import forward

    @jax.jit
    def fn(variables, batch):
        logits, _ = forward(model, variables, batch, False)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    return fn


def predict_probs(
    model: nn.Module, variables: Any, batches: Iterable[dict[str, np.ndarray]], mesh: jax.sharding.Mesh | None = None
) -> np.ndarray:
    """Softmax probabilities for every unmasked example of ``batches``, in order (float64)."""
    mesh = mesh or data_mesh(local=True)
    fn, variables = _predict_fn(model), local_variables(variables)
    out = []
    for batch in batches:
        probs = np.asarray(fn(variables, put_batch(batch, mesh)), np.float64)
        out.append(probs[batch["mask"] > 0])
    return np.concatenate(out)


def tta_probs(
    model: Any,
    variables: Any,
    paths: Sequence[str],
    pp: Preprocess,
    transforms: Sequence[AugmentParams],
    batch_size: int = 64,
    progress: bool = True,
    mesh: jax.sharding.Mesh | None = None,
) -> np.ndarray:
    """Per-transform probabilities ``(T, N, K)`` of a model and its variables for ``paths`` (what training's
    validation passes use; a restored run predicts through :meth:`Run.probs`): the shared batch loop,
    :func:`deepsea.predictor.batch_probs`."""
    mesh = mesh or data_mesh(local=True)
    fn, variables = _predict_fn(model), local_variables(variables)
    return batch_probs(lambda batch: fn(variables, put_batch(batch, mesh)), paths, pp, transforms, batch_size,
                       progress=progress)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Run:
    """A trained run restored for prediction."""

    workdir: str
    model: nn.Module
    variables: Any
    preprocess: Preprocess
    classes: tuple[str, ...]
    config: Any
    checkpoint: str  # "best" or "latest"
    step: int
    orbit_average: str | None = None  # None: as trained; "" (none), "c4" or "d4": evaluated with another
    precision: str | None = None  # None: as trained; "float32" or "bfloat16": predicted in another
    calibration: dict | None = None  # calibration.json: {"calibration": ..., "tta": ..., "combine": ...}
    thresholds: dict | None = None  # thresholds.json: {"thresholds": ..., "target_precision": ..., "tta": ...}
    class_map: dict | None = None  # class_map.json: every original class to its name in the run, or null

    fixed_tta = None  # a run predicts with any TTA setting

    @property
    def key(self) -> str:
        """Names this checkpoint (orbit average, precision): its predictions in the cache, and what a calibration
        or thresholds were fitted for."""
        orbit = "" if self.orbit_average is None else f":orbit={self.orbit_average or 'none'}"
        precision = "" if self.precision is None else f":precision={self.precision}"
        return f"{self.checkpoint}:{self.step}{orbit}{precision}"

    @property
    def cache_key(self) -> str:
        return self.key

    @property
    def validation_split(self) -> str:
        """The run folder whose ``split.json`` holds the images this run can be scored on: its own."""
        return self.workdir

    @property
    def tta_ranges(self) -> AugmentRanges:
        """The default TTA ranges, capped at the run's own training augmentation."""
        return tta_ranges_for(AugmentRanges.from_config(self.config.aug))

    @property
    def batch_size(self) -> int:
        """Images per prediction batch."""
        return int(self.config.train.eval_batch_size)

    def predict_batch(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Softmax probabilities (float32) of one padded batch of model inputs (``image``, ``raw_size``, ...)."""
        return np.asarray(_predict_fn(self.model)(self.variables, put_batch(batch, data_mesh(local=True))))

    def probs(
        self,
        paths: Sequence[str],
        transforms: Sequence[AugmentParams],
        images: Sequence[np.ndarray] | None = None,
        progress: bool = True,
    ) -> np.ndarray:
        """``(T, N, K)`` probabilities of ``paths`` under ``transforms`` (:class:`deepsea.predictor.Predictor`)."""
        return batch_probs(self.predict_batch, paths, self.preprocess, transforms, self.batch_size, images, progress)


def restore_run(
    workdir: str, which: str = "best", orbit_average: str | None = None, precision: str | None = None
) -> Run:
    """Loads a run's model and variables (``best`` or ``latest`` checkpoint), preprocessing, classes and config.

    ``orbit_average`` (``"c4"``, ``"d4"`` or ``""`` for none) evaluates the trained network with another
    :class:`~deepsea.models.OrbitAverage` than it was trained with (the wrapper has no parameters of its own).
    ``precision`` (``"float32"`` or ``"bfloat16"``) predicts in another precision than the run trained in (the
    parameters are float32 either way).
    """
    from deepsea.step import create_train_state

    if which not in ("best", "latest"):
        raise UserError(f"checkpoint must be 'best' or 'latest', got {which!r}")
    if precision not in (None, *PRECISIONS):
        raise UserError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    config = rundir.load_config(workdir)
    classes = tuple(rundir.load_json(os.path.join(workdir, "classes.json")))
    setup = create_train_state(config, len(classes), abstract=True)  # shapes only: the checkpoint has the values
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # each process restores its own copy
    template = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=here), setup.state)
    latest, best = rundir.checkpoint_managers(workdir, config.train.keep_checkpoints)
    try:
        manager = best if which == "best" and best.latest_step() is not None else latest
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {workdir!r}")
        state = rundir.restore_state(manager, step, template)
    finally:
        latest.close()
        best.close()
    model, variables = setup.model, state.variables()
    trained = config.model.orbit_average
    if orbit_average is not None and orbit_average != trained:
        variables = {k: network_layers(v) for k, v in variables.items()}  # the wrapper has no parameters
        config.model.orbit_average = orbit_average
        model = build_model(config.model, len(classes))
        if orbit_average:
            variables = {k: {"inner": v} for k, v in variables.items()}
    else:
        orbit_average = None
    if precision is not None and precision != config.model.precision:
        config.model.precision = precision
        model = build_model(config.model, len(classes))
    else:
        precision = None
    pp = rundir.load_preprocess(workdir)
    extras = {}
    for name in ("calibration", "thresholds", "class_map"):
        path = os.path.join(workdir, f"{name}.json")
        extras[name] = rundir.load_json(path) if os.path.exists(path) else None
    return Run(workdir, model, variables, pp, classes, config, which, int(step), orbit_average, precision, **extras)


@dataclasses.dataclass(frozen=True)
class ValidationSet:
    """A run's validation images and labels, read back against its data folder."""

    paths: tuple[str, ...]
    labels: np.ndarray
    classes: tuple[str, ...]


def validation_set(workdir: str) -> ValidationSet:
    """The validation split of ``workdir``; the folder's classes must match the run's."""
    split = rundir.load_json(os.path.join(workdir, "split.json"))
    folder = rundir.apply_class_map(workdir, scan_labelled_folder(split["root"]))
    _, val_idx, _ = rundir.load_run_data(workdir, folder)
    return ValidationSet(tuple(folder.paths[i] for i in val_idx), folder.labels[val_idx], tuple(folder.classes))


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


@dataclasses.dataclass(frozen=True)
class RunEvaluation:
    """A predictor's scores, plain and with each TTA setting asked for (and a fused run's members beside it), and
    the last setting's predictions; a fused run asked without labelled data gives the cross-validated scores it
    was fitted with (no predictions)."""

    run: Any
    rows: tuple[Evaluation, ...]
    probs: np.ndarray | None
    labels: np.ndarray | None


def labelled_set(predictor: Any, root: str) -> ValidationSet:
    """Every image of the labelled folder ``root`` (a held-aside test folder, say), with the predictor's class
    mapping, labelled by its class indices; it may lack some of the predictor's classes (rare ones), but a class the
    predictor does not know is an error."""
    from deepsea.data import map_classes

    folder = scan_labelled_folder(root)
    if predictor.class_map:
        folder = map_classes(folder, predictor.class_map)
    classes = list(predictor.classes)
    unknown = sorted(set(folder.classes) - set(classes))
    if unknown:
        raise rundir.RunDataMismatch(
            f"{root!r} has {len(unknown)} class(es) that {predictor.workdir!r} was not trained on: {unknown[:5]}"
        )
    index = np.array([classes.index(c) for c in folder.classes], np.int32)
    assert folder.labels is not None
    return ValidationSet(tuple(folder.paths), index[folder.labels], tuple(classes))


class NoValidationSplit(UserError):
    """A predictor without a validation split of its own was asked to score, calibrate or threshold on one."""


def scoring_set(predictor: Any, data: str | None = None) -> ValidationSet:
    """The labelled images to score, calibrate or choose thresholds on: every image of the labelled folder
    ``data``, or the validation split of the run the predictor is (an exported model and a fused run have none
    of their own: a fused run was fitted on its members')."""
    if data is not None:
        return labelled_set(predictor, data)
    if predictor.validation_split is None:
        raise NoValidationSplit(
            f"{predictor.workdir} has no validation split of its own: give a labelled folder of images it was "
            "neither trained nor fitted on (--data DIR; deepsea holdout sets one aside)"
        )
    return validation_set(predictor.validation_split)


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


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Probabilities for the images of a folder, and the images that were skipped as unreadable."""

    names: tuple[str, ...]
    classes: tuple[str, ...]
    probs: np.ndarray
    skipped: tuple[tuple[str, str], ...] = ()


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
    group: Sequence[Run], paths: Sequence[str], tta: int | str, combine: Combine
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
    from deepsea.ensemble import blend, cross_validated_selection
    from deepsea.predictor import load_predictor

    groups = [tuple(w.split("+")) for w in workdirs]
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
