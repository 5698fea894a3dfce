"""One way to predict for every kind of model: a trained run, an exported model folder, a fused run.

A :class:`Predictor` has the classes, the preprocessing, the TTA ranges, the calibration and thresholds fitted for
it, the keys that name its predictions, and ``probs(paths, transforms) -> (T, N, K)``.  Runs
(:class:`deepsea.runs.Run`) and exported models (:class:`deepsea.export.ExportedModel`) compute it with the
one batch loop here (:func:`batch_probs`); a fused run (:class:`deepsea.fusion.FusedRun`) predicts with the TTA
setting its members were fused with (``fixed_tta``).  Everything above this module (evaluate, predict, calibrate,
thresholds, ensemble, pseudo-labels, fusion) takes any predictor through :func:`predictor_probs`;
:func:`deepsea.load.load_predictor` decides the kind of a path in one place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from deepsea.calibration import Calibration
from deepsea.data import AugmentParams, AugmentRanges, Preprocess, tta_batches
from deepsea.errors import UserError
from deepsea.tta import Combine, combine_probs, transforms_for

__all__ = [
    "BatchPredictor",
    "Predictor",
    "batch_probs",
    "blend_probs",
    "cached_probs",
    "check_tta",
    "chosen_thresholds",
    "predictor_calibration",
    "predictor_probs",
    "with_pixel_size",
]

log = logging.getLogger(__name__)


@runtime_checkable
class Predictor(Protocol):
    """What every kind of model offers prediction."""

    workdir: str  # its folder: the prediction cache and the calibration and thresholds fitted for it
    classes: tuple[str, ...]
    preprocess: Preprocess
    tta_ranges: AugmentRanges
    batch_size: int
    calibration: dict | None  # {"calibration": ..., "tta": ..., "combine": ..., "checkpoint": key}
    thresholds: dict | None
    key: str  # the checkpoint it predicts with: what a calibration or thresholds were fitted for
    cache_key: str  # names its predictions in the cache (two predictors with one key may round differently)
    fixed_tta: int | str | None  # the only TTA setting it predicts with (a fused run), or None for any
    validation_split: str | None  # the run folder whose split it is scored on (None: score it on a labelled folder)
    class_map: dict | None  # original class names to its own (null: dropped), applied to labelled folders

    def probs(
        self,
        paths: Sequence[str],
        transforms: Sequence[AugmentParams],
        images: Sequence[np.ndarray] | None = None,
        progress: bool = True,
    ) -> np.ndarray:
        """Probabilities ``(T, N, K)`` (float32) of the images ``paths`` (decoded already: ``images``) under each
        of the ``T`` ``transforms``."""
        ...


def batch_probs(
    predict_batch: Callable[[dict[str, np.ndarray]], Any],
    paths: Sequence[str],
    pp: Preprocess,
    transforms: Sequence[AugmentParams],
    batch_size: int,
    images: Sequence[np.ndarray] | None = None,
    progress: bool = True,
    canvas: int = 0,
) -> np.ndarray:
    """The batch loop every predictor shares: ``(T, N, K)`` probabilities of ``paths`` under ``transforms``, each
    image decoded once (or taken from ``images``) and warped on a thread beside the predictions
    (:func:`deepsea.data.tta_batches`); ``predict_batch`` maps one padded batch of model inputs to probabilities
    (with ``canvas``, a batch of images for it to warp: ``data.augment_on = "device"``)."""
    from tqdm.auto import tqdm

    if not paths or not transforms:
        raise ValueError(f"nothing to predict: {len(paths)} images, {len(transforms)} transforms")
    out: np.ndarray | None = None
    desc = f"TTA x{len(transforms)}" if len(transforms) > 1 else "predict"
    with tqdm(total=len(transforms) * len(paths), desc=desc, unit="img", disable=not progress) as bar:
        for t, start, batch in tta_batches(paths, pp, transforms, batch_size, images=images, canvas=canvas):
            probs = np.asarray(predict_batch(batch))
            if out is None:
                out = np.empty((len(transforms), len(paths), probs.shape[-1]), np.float32)
            k = int(batch["mask"].sum())
            out[t, start : start + k] = probs[:k]
            bar.update(k)
    assert out is not None
    return out


class BatchPredictor:
    """``probs`` for a predictor that computes one padded batch at a time (``predict_batch``): a restored run and an
    exported model share it."""

    def probs(
        self,
        paths: Sequence[str],
        transforms: Sequence[AugmentParams],
        images: Sequence[np.ndarray] | None = None,
        progress: bool = True,
    ) -> np.ndarray:
        """``(T, N, K)`` probabilities of ``paths`` under ``transforms`` (:class:`Predictor`)."""
        pp, size = self.preprocess, self.batch_size  # type: ignore[attr-defined]
        canvas = getattr(self, "device_canvas", 0)  # a run that warps on the device predicts so too
        return batch_probs(self.predict_batch, paths, pp, transforms, size, images, progress, canvas)  # type: ignore[attr-defined]


def _cache_file(predictor: Predictor, paths: Sequence[str], transforms: Sequence[AugmentParams]) -> str:
    h = hashlib.sha256()
    h.update(predictor.cache_key.encode())
    for p in paths:
        h.update(os.path.abspath(p).encode() + b"\0")
    h.update(json.dumps([dataclasses.asdict(t) for t in transforms]).encode())
    return os.path.join(predictor.workdir, "predictions", f"{h.hexdigest()[:16]}.npz")


def cached_probs(
    predictor: Predictor, paths: Sequence[str], transforms: Sequence[AugmentParams], progress: bool = True
) -> np.ndarray:
    """``predictor.probs(paths, transforms)``, kept in ``<workdir>/predictions/<key>.npz`` (the key hashes the
    predictor's cache key, the image paths and the transforms) where the folder is writable, so that a second
    evaluation, a prediction or an ensemble reuses them."""
    path = _cache_file(predictor, paths, transforms)
    if os.path.exists(path):
        with np.load(path) as f:
            return f["probs"]
    probs = np.asarray(predictor.probs(paths, transforms, progress=progress), np.float32)
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
        tmp = f"{path}.tmp.{os.getpid()}.npz"
        np.savez_compressed(tmp, probs=probs)
        os.replace(tmp, path)
    except OSError as e:  # a read-only model folder: predict without the cache
        log.info("predictions not cached in %s: %s", folder, e)
    return probs


def predictor_calibration(
    predictor: Predictor, tta: int | str = 0, combine: Combine = "mean", warn: bool = True
) -> Calibration | None:
    """The predictor's calibration if it was fitted for predictions made this way (a temperature fitted on plain
    predictions does not fit 70-transform averages); None, with a warning, if it was fitted for another way."""
    if predictor.calibration is None:
        return None
    fitted = (predictor.calibration["tta"], predictor.calibration["combine"], predictor.calibration["checkpoint"])
    if fitted != (tta, combine, predictor.key):
        if warn:
            log.warning(
                "%s: the calibration was fitted for tta=%s, combine=%s, checkpoint %s; these predictions use "
                "tta=%s, combine=%s, checkpoint %s: not applied (run deepsea calibrate again)",
                predictor.workdir, *fitted, tta, combine, predictor.key,
            )  # fmt: skip
        return None
    return Calibration.from_dict(predictor.calibration["calibration"])


def check_tta(predictor: Predictor, tta: int | str) -> None:
    """Refuses a TTA setting a predictor cannot predict with (a fused run predicts with its members')."""
    if predictor.fixed_tta is not None and tta != predictor.fixed_tta:
        raise UserError(
            f"{predictor.workdir} predicts with the TTA its members were fused with (--tta {predictor.fixed_tta}), "
            f"not --tta {tta}"
        )


def predictor_probs(
    predictor: Predictor,
    paths: Sequence[str],
    tta: int | str = 0,
    combine: Combine = "mean",
    progress: bool = True,
    calibrated: bool = True,
    images: Sequence[np.ndarray] | None = None,
    cache: bool = True,
) -> np.ndarray:
    """``(N, K)`` probabilities of ``predictor`` for ``paths``: combined over ``tta`` transforms (``0``: the plain
    rescale; ``N`` Halton transforms in its TTA ranges; ``"tencrop"``), cached (``cache``; not when ``images`` are
    given: a stream's chunks are not worth keeping), and calibrated (``calibrated``) when it has a calibration
    fitted for this setting."""
    check_tta(predictor, tta)
    transforms = (
        transforms_for(0, predictor.preprocess.size)
        if predictor.fixed_tta is not None
        else transforms_for(tta, predictor.preprocess.size, predictor.tta_ranges)
    )
    if cache and images is None:
        per = cached_probs(predictor, paths, transforms, progress)
    else:
        per = predictor.probs(paths, transforms, images=images, progress=progress)
    probs = combine_probs(per, combine)
    calibration = predictor_calibration(predictor, tta, combine) if calibrated else None
    return probs if calibration is None else calibration.apply(probs)


def with_pixel_size(predictor: Predictor, pixel_size: float | None) -> Predictor:
    """The predictor predicting images of ``pixel_size`` micrometres per pixel: required when it learnt physical
    sizes (``data.pixel_size``), refused when it learnt sizes in pixels; unchanged for ``None`` then."""
    trained = predictor.preprocess.pixel_size
    where = predictor.workdir
    if trained and pixel_size is None:
        raise UserError(
            f"{where} learnt sizes in micrometres (its images: {trained} um per pixel): give these images' "
            "pixel size with --pixel-size"
        )
    if pixel_size is not None and not trained:
        raise UserError(f"{where} learnt sizes in pixels (no data.pixel_size): --pixel-size does not apply")
    if pixel_size is None:
        return predictor
    if not pixel_size > 0:
        raise UserError(f"--pixel-size must be > 0 micrometres, got {pixel_size}")
    if "preprocess" not in {f.name for f in dataclasses.fields(predictor)}:  # type: ignore[arg-type]
        raise UserError(f"{where}: a fused run predicts images of its members' pixel size ({trained} um) only")
    pp = dataclasses.replace(predictor.preprocess, pixel_size=pixel_size)
    return dataclasses.replace(predictor, preprocess=pp)  # type: ignore[type-var]


def chosen_thresholds(predictor: Predictor, tta: int | str, combine: Combine) -> Any:
    """The per-class thresholds chosen for the predictor (``deepsea thresholds``) for predictions made with
    ``tta`` and ``combine``; an error saying what to run when it has none, or has them for another setting."""
    from deepsea.calibration import Thresholds

    where = predictor.workdir
    if predictor.thresholds is None:
        raise UserError(f"{where} has no thresholds: choose them with deepsea thresholds --workdir {where}")
    fitted = (predictor.thresholds["tta"], predictor.thresholds["combine"])
    if fitted != (tta, combine):
        raise UserError(
            f"the thresholds of {where} were chosen for --tta {fitted[0]} --combine {fitted[1]}; predict with "
            "those (or choose thresholds for these)"
        )
    return Thresholds.from_dict(predictor.thresholds)


def blend_probs(
    runs: Sequence[Any], weights: np.ndarray, paths: Sequence[str], tta: int | str, combine: str, progress: bool
) -> np.ndarray:
    """The weighted mean of the runs' (cached, calibrated, TTA-combined) probabilities for ``paths``, float64."""
    probs = sum(
        wi * predictor_probs(r, list(paths), tta, combine, progress)  # type: ignore[arg-type]
        for wi, r in zip(weights, runs, strict=True)
    )
    probs = np.asarray(probs, np.float64)
    return probs / probs.sum(1, keepdims=True)
