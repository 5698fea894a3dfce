"""Test-time augmentation: predictions averaged over quasi-random transforms, cached per run.

``tta_probs(model, variables, paths, pp, transforms)`` runs every image under
every transform (batched, jitted; one warp per image and transform) and
combines the per-transform probabilities by mean probability (the default),
mean logits or geometric mean.  :func:`cached_tta_probs` stores each run's
predictions under ``<workdir>/predictions/`` keyed by the image list and the
transform set, so a second call reuses them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from deepsea.data import TTA_RANGES, AugmentParams, AugmentRanges, Preprocess, eval_batches, tta_params

__all__ = [
    "Combine",
    "cached_tta_probs",
    "combine_probs",
    "identity_transforms",
    "read_submission",
    "tencrop_params",
    "transforms_for",
    "tta_probs",
    "tta_ranges_for",
    "write_submission",
]

Combine = Literal["mean", "logits", "geometric"]


def tta_ranges_for(training: AugmentRanges, tta: AugmentRanges = TTA_RANGES) -> AugmentRanges:
    """The test-time ranges, never wider than what the model was trained on (each range the smaller of the two)."""
    return AugmentRanges(
        rotation=min(tta.rotation, training.rotation),
        shift=min(tta.shift, training.shift),
        zoom=min(tta.zoom, training.zoom),
        shear=min(tta.shear, training.shear),
        stretch=min(tta.stretch, training.stretch),
        flip=tta.flip and training.flip,
    )


def identity_transforms() -> list[AugmentParams]:
    """The plain rescale alone: TTA with it equals plain prediction."""
    return [AugmentParams()]


def tencrop_params(size: int, crop_fraction: float = 0.875) -> list[AugmentParams]:
    """TenCrop (the second reference's test-time scheme) as ten affine transforms.

    The image is scaled up by ``1 / crop_fraction`` (torchvision's 224-of-256 is
    0.875) and the network's ``size`` x ``size`` window taken at the four corners
    and the centre, of the image and of its mirror image; it runs through the
    same warp and batched prediction as the quasi-random TTA.
    """
    if not 0 < crop_fraction <= 1:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    d = size * (1 / crop_fraction - 1) / 2  # output pixels from the centre crop to a corner crop
    offsets = [(d, d), (d, -d), (-d, d), (-d, -d), (0.0, 0.0)]
    return [
        AugmentParams(shift_row=r, shift_col=c, zoom=1 / crop_fraction, flip=f)
        for f in (False, True)
        for r, c in offsets
    ]


def transforms_for(n: int | str, size: int, ranges: AugmentRanges = TTA_RANGES) -> list[AugmentParams]:
    """``0``: the plain rescale; ``N``: N Halton transforms in ``ranges``; ``"tencrop"``: :func:`tencrop_params`."""
    if n == "tencrop":
        return tencrop_params(size)
    if isinstance(n, str) or n < 0:
        raise ValueError(f"test-time transforms must be a count >= 0 or 'tencrop', got {n!r}")
    return identity_transforms() if n == 0 else tta_params(n, ranges)


def combine_probs(per_transform: np.ndarray, how: Combine = "mean") -> np.ndarray:
    """Combines ``(T, N, K)`` probabilities over transforms into ``(N, K)`` rows that sum to 1."""
    p = np.asarray(per_transform, np.float64)
    if how == "mean":
        out = p.mean(0)
    elif how in ("logits", "geometric"):
        # softmax of the mean log-probability. Logits are log-probabilities plus a per-row constant, so the
        # softmax of the mean logits and the normalised geometric mean of the probabilities are the same.
        logp = np.log(np.clip(p, 1e-30, None)).mean(0)
        out = np.exp(logp - logp.max(1, keepdims=True))
    else:
        raise ValueError(f"unknown combination {how!r}; expected 'mean', 'logits' or 'geometric'")
    return out / out.sum(1, keepdims=True)


def tta_probs(
    model: Any,
    variables: Any,
    paths: Sequence[str],
    pp: Preprocess,
    transforms: Sequence[AugmentParams],
    batch_size: int = 64,
    progress: bool = True,
    workers: int = 0,
) -> np.ndarray:
    """Per-transform probabilities ``(T, N, K)`` for ``paths`` (combine them with :func:`combine_probs`)."""
    from tqdm.auto import tqdm

    from deepsea.train import predict_probs

    out = []
    with tqdm(total=len(transforms) * len(paths), desc="TTA", unit="img", disable=not progress) as bar:
        for params in transforms:
            batches = eval_batches(paths, None, pp, batch_size, params=params, workers=workers)

            def counted(it):
                for b in it:
                    bar.update(int(b["mask"].sum()))
                    yield b

            out.append(predict_probs(model, variables, counted(batches)))
    return np.stack(out)


def _key(paths: Sequence[str], transforms: Sequence[AugmentParams], checkpoint: str) -> str:
    h = hashlib.sha256()
    h.update(checkpoint.encode())
    for p in paths:
        h.update(os.path.abspath(p).encode() + b"\0")
    h.update(json.dumps([dataclasses.asdict(t) for t in transforms]).encode())
    return h.hexdigest()[:16]


def cached_tta_probs(
    workdir: str,
    checkpoint: str,
    model: Any,
    variables: Any,
    paths: Sequence[str],
    pp: Preprocess,
    n_transforms: int | str,
    batch_size: int = 64,
    progress: bool = True,
    ranges: AugmentRanges = TTA_RANGES,
) -> np.ndarray:
    """Per-transform probabilities for ``n_transforms`` Halton transforms in ``ranges`` (0: the plain rescale;
    ``"tencrop"``: TenCrop), cached.

    The cache file is ``<workdir>/predictions/<key>.npz``, where the key hashes
    the checkpoint, the image paths and the transforms.
    """
    transforms = transforms_for(n_transforms, pp.size, ranges)
    folder = os.path.join(workdir, "predictions")
    path = os.path.join(folder, f"{_key(paths, transforms, checkpoint)}.npz")
    if os.path.exists(path):
        with np.load(path) as f:
            return f["probs"]
    probs = tta_probs(model, variables, paths, pp, transforms, batch_size, progress).astype(np.float32)
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}.npz"
    np.savez_compressed(tmp, probs=probs)
    os.replace(tmp, path)
    return probs


def write_submission(path: str, names: Sequence[str], classes: Sequence[str], probs: np.ndarray) -> None:
    """The Kaggle NDSB format: header ``image,<class>,...``, one row per image, rows renormalised to sum to 1."""
    import csv

    probs = np.asarray(probs, np.float64)
    if probs.shape != (len(names), len(classes)):
        raise ValueError(f"probabilities {probs.shape} do not match {len(names)} images x {len(classes)} classes")
    probs = probs / probs.sum(1, keepdims=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", *classes])
        for name, row in zip(names, probs, strict=True):
            w.writerow([name, *(f"{p:.6g}" for p in row)])
    os.replace(tmp, path)


def read_submission(path: str) -> tuple[list[str], list[str], np.ndarray]:
    """``(image names, classes, probabilities)`` from a submission CSV."""
    import csv

    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0][0] != "image":
        raise ValueError(f"{path!r} is not a submission: its header must start with 'image'")
    names = [r[0] for r in rows[1:]]
    return names, rows[0][1:], np.array([[float(x) for x in r[1:]] for r in rows[1:]], np.float64)
