"""A trained run restored for prediction (a :class:`deepsea.predictor.Predictor`), the jitted prediction function of
a model and its variables, and the labelled images a run is scored on (its validation split, or a labelled folder)."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deepsea import rundir
from deepsea.data import (
    AugmentParams,
    AugmentRanges,
    Preprocess,
    scan_labelled_folder,
)
from deepsea.errors import UserError
from deepsea.mesh import data_mesh, local_variables, put_batch
from deepsea.models import PRECISIONS, build_model, network_layers
from deepsea.predictor import BatchPredictor, batch_probs
from deepsea.tta import tta_ranges_for

__all__ = [
    "NoValidationSplit",
    "Run",
    "ValidationSet",
    "labelled_set",
    "predict_probs",
    "restore_run",
    "scoring_set",
    "training_set",
    "tta_probs",
    "validation_set",
]

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=8)
def _predict_fn(model: nn.Module, device_warp: Preprocess | None = None):
    """One jitted prediction function per model (Linen modules hash by value), so every validation pass
    of a run reuses the same compiled code instead of tracing anew.  ``device_warp``: batches hold uint8 images
    that the function warps first (:func:`deepsea.data.device_warp.warp_inputs` with this preprocessing)."""
    from deepsea.data.device_warp import warp_inputs
    from deepsea.step import forward

    @jax.jit
    def fn(variables, batch):
        if device_warp is not None:
            batch = warp_inputs(batch, device_warp)
        logits, _ = forward(model, variables, batch, False)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    return fn


@functools.lru_cache(maxsize=8)
def _embed_fn(model: nn.Module):
    """The network's penultimate features: the input of its classifier (``logits``), averaged over an orbit
    average's copies (stacked on the batch axis), so an orbit-averaged network's embedding is invariant too."""
    from deepsea.step import forward
    from deepsea.transfer import HEAD

    @jax.jit
    def fn(variables, batch):
        seen = []

        def record(next_fun, args, kwargs, context):
            if context.module.name == HEAD and context.method_name == "__call__":
                seen.append(args[0])
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(record):
            forward(model, variables, batch, False)
        if len(seen) != 1:
            raise ValueError(f"expected one call of the {HEAD!r} layer, saw {len(seen)}")
        b = batch["image"].shape[0]
        feats = seen[0].astype(jnp.float32)
        return feats.reshape(-1, b, feats.shape[-1]).mean(0)

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
    canvas: int = 0,
) -> np.ndarray:
    """Per-transform probabilities ``(T, N, K)`` of a model and its variables for ``paths`` (what training's
    validation passes use; a restored run predicts through :meth:`Run.probs`): the shared batch loop,
    :func:`deepsea.predictor.batch_probs`; ``canvas``: the images are warped on the device, in squares of this
    side (``data.augment_on = "device"``)."""
    mesh = mesh or data_mesh(local=True)
    fn, variables = _predict_fn(model, pp if canvas else None), local_variables(variables)
    return batch_probs(lambda batch: fn(variables, put_batch(batch, mesh)), paths, pp, transforms, batch_size,
                       progress=progress, canvas=canvas)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Run(BatchPredictor):
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

    @property
    def device_canvas(self) -> int:
        """The side of the squares its images travel in when the run warps them on the device
        (``data.augment_on = "device"``: its predictions do too), else 0."""
        data = self.config.data
        return int(data.device_canvas) if data.augment_on == "device" else 0

    def predict_batch(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Softmax probabilities (float32) of one padded batch of model inputs (``image``, ``raw_size``, ...; or,
        for a run that warps on the device, its uint8 images with their warps)."""
        fn = _predict_fn(self.model, self.preprocess if self.device_canvas else None)
        return np.asarray(fn(self.variables, put_batch(batch, data_mesh(local=True))))

    def embed_batch(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """The penultimate features (float32, the classifier's input) of one padded batch of model inputs."""
        return np.asarray(_embed_fn(self.model)(self.variables, put_batch(batch, data_mesh(local=True))))


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
        if which == "best" and manager is latest and latest.latest_step() is not None:
            log.warning("%s has no best checkpoint (best/): predicting with the latest, step %d",
                        workdir, latest.latest_step())  # fmt: skip
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


def training_set(workdir: str) -> tuple[list[str], np.ndarray]:
    """The training images of ``workdir`` and their labels, read back against its data folder."""
    split = rundir.load_json(os.path.join(workdir, "split.json"))
    folder = rundir.apply_class_map(workdir, scan_labelled_folder(split["root"]))
    train_idx, _, _ = rundir.load_run_data(workdir, folder)
    return [folder.paths[i] for i in train_idx], folder.labels[train_idx]


def validation_set(workdir: str) -> ValidationSet:
    """The validation split of ``workdir``; the folder's classes must match the run's."""
    split = rundir.load_json(os.path.join(workdir, "split.json"))
    folder = rundir.apply_class_map(workdir, scan_labelled_folder(split["root"]))
    _, val_idx, _ = rundir.load_run_data(workdir, folder)
    return ValidationSet(tuple(folder.paths[i] for i in val_idx), folder.labels[val_idx], tuple(folder.classes))


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
