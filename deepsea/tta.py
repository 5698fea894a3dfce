"""Test-time augmentation: the transforms (quasi-random Halton transforms, TenCrop) and how per-transform
predictions are combined (mean probability, mean logits or geometric mean).

Predicting under them is :func:`deepsea.runs.tta_probs`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from deepsea.data import TTA_RANGES, AugmentParams, AugmentRanges, tta_params
from deepsea.errors import UserError

__all__ = [
    "Combine",
    "combine_probs",
    "identity_transforms",
    "tencrop_params",
    "transforms_for",
    "tta_ranges_for",
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
        raise UserError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
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
        raise UserError(f"test-time transforms must be a count >= 0 or 'tencrop', got {n!r}")
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
        raise UserError(f"unknown combination {how!r}; expected 'mean', 'logits' or 'geometric'")
    return out / out.sum(1, keepdims=True)
