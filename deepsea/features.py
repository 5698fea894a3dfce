"""Hand-made image features the seed late-fused with its convnets: size, shape from image moments, Hu and Zernike
moments, Haralick texture, threshold adjacency statistics and local binary patterns (the seed's list had them too).

Every feature is computed on the raw grayscale image, inverted so the organism is bright on a dark background,
and is invariant to the eight rotations by 90 degrees and mirror images of the pixel grid (the D4 group): sizes
are sorted, the seventh Hu moment (whose sign a mirror flips) enters as its absolute value, Zernike moments as
magnitudes, Haralick statistics as means over the four directions, and local binary patterns as the histogram of
rotation-invariant uniform codes (8 neighbours at radius 1, which the eight symmetries map onto each other).
With a pixel size (micrometres per pixel) lengths are in micrometres and areas in square micrometres.

:func:`image_features` computes one image's vector (names: :data:`FEATURE_NAMES`); :func:`folder_features`
computes a list of images in worker processes with a progress bar, cached per folder under the data cache
(``$DEEPSEA_DATA/features/``), so each image is computed once.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import multiprocessing
import os
from collections.abc import Sequence

import numpy as np

from deepsea.errors import UserError

__all__ = [
    "FEATURE_GROUPS",
    "FEATURE_NAMES",
    "FEATURE_VERSION",
    "FeatureTable",
    "folder_features",
    "group_names",
    "image_features",
]

FEATURE_VERSION = 2  # 2: local binary patterns added
LBP_POINTS, LBP_RADIUS = 8, 1  # 10 rotation-invariant uniform codes
ZERNIKE_DEGREE = 8  # 25 moments
HARALICK_SHIFT = 2  # co-occurrences of 64 grey levels, not 256: far faster, and enough for texture statistics
_SHAPE = (
    "size_short",
    "size_long",
    "area",
    "perimeter",
    "major_axis",
    "minor_axis",
    "eccentricity",
    "solidity",
    "equivalent_diameter",
    "euler_number",
    "regions",
    "foreground_share",
    "object_mean",
    "object_std",
    "image_mean",
)
FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "shape": _SHAPE,
    "hu": tuple(f"hu{i}" for i in range(1, 8)),
    "zernike": tuple(f"zernike{i}" for i in range(25)),
    "haralick": tuple(f"haralick{i}" for i in range(1, 14)),
    "pftas": tuple(f"pftas{i}" for i in range(54)),  # threshold adjacency statistics
    "lbp": tuple(f"lbp{i}" for i in range(LBP_POINTS + 2)),
}
FEATURE_NAMES: tuple[str, ...] = tuple(name for names in FEATURE_GROUPS.values() for name in names)
_POOL_MIN = 256  # fewer images are computed in this process: starting worker processes would take longer
_LENGTHS = {"size_short", "size_long", "perimeter", "major_axis", "minor_axis", "equivalent_diameter"}
_AREAS = {"area"}


def image_features(image: np.ndarray, pixel_size: float = 0.0) -> np.ndarray:
    """The :data:`FEATURE_NAMES` of one uint8 grayscale image ``(H, W)`` (a white background), float64."""
    import mahotas
    from skimage import feature, filters, measure

    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"features need a uint8 grayscale image, got {image.dtype}{image.shape}")
    inv = (255 - image).astype(np.uint8)
    h, w = inv.shape
    x = inv.astype(np.float64) / 255.0
    flat = inv.min() == inv.max()
    mask = inv > (filters.threshold_otsu(inv) if not flat else 255)
    labels = measure.label(mask, connectivity=2)
    regions = measure.regionprops(labels)
    shape = dict.fromkeys(_SHAPE, 0.0)
    shape.update(size_short=min(h, w), size_long=max(h, w), regions=len(regions), foreground_share=mask.mean())
    shape.update(image_mean=x.mean())
    if regions:
        r = max(regions, key=lambda p: p.area)
        shape.update(
            area=r.area,
            perimeter=r.perimeter,
            major_axis=r.axis_major_length,
            minor_axis=r.axis_minor_length,
            eccentricity=r.eccentricity,
            solidity=r.solidity,
            equivalent_diameter=r.equivalent_diameter_area,
            euler_number=r.euler_number,
            object_mean=x[mask].mean(),
            object_std=x[mask].std(),
        )
    if pixel_size:
        for k in _LENGTHS:
            shape[k] *= pixel_size
        for k in _AREAS:
            shape[k] *= pixel_size**2
    hu = measure.moments_hu(measure.moments_normalized(measure.moments_central(x), 3)) if not flat else np.zeros(7)
    hu = np.nan_to_num(hu)
    hu[6] = abs(hu[6])  # a mirror image flips the seventh moment's sign
    hu = -np.sign(hu) * np.log10(np.abs(hu) + 1e-30)  # the usual log scale; 0 stays about 30
    radius = max(h, w) / 2.0
    zernike = mahotas.features.zernike_moments(x, radius, ZERNIKE_DEGREE) if not flat else np.zeros(25)
    haralick = np.zeros(13)
    if not flat and min(h, w) > 1:
        haralick = mahotas.features.haralick(inv >> HARALICK_SHIFT, return_mean=True)
    pftas = mahotas.features.pftas(inv) if not flat else np.zeros(54)
    codes = feature.local_binary_pattern(inv, LBP_POINTS, LBP_RADIUS, method="uniform").astype(np.int64)
    lbp = np.bincount(codes.ravel(), minlength=LBP_POINTS + 2) / codes.size
    out = np.concatenate([[shape[k] for k in _SHAPE], hu, zernike, haralick, pftas, lbp]).astype(np.float64)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def _one(path: str, pixel_size: float) -> np.ndarray:
    from deepsea.data.images import read_image

    return image_features(read_image(path, "L"), pixel_size)


@dataclasses.dataclass(frozen=True)
class FeatureTable:
    """``values[i]`` holds the features of ``paths[i]`` (the order asked for)."""

    paths: tuple[str, ...]
    names: tuple[str, ...]
    values: np.ndarray  # (N, F) float32
    cache: str

    def select(self, groups: Sequence[str]) -> FeatureTable:
        """The columns of the named :data:`FEATURE_GROUPS`, in the table's order."""
        wanted = set(group_names(groups))
        cols = [i for i, n in enumerate(self.names) if n in wanted]
        return dataclasses.replace(self, names=tuple(self.names[i] for i in cols), values=self.values[:, cols])


def group_names(groups: Sequence[str]) -> tuple[str, ...]:
    """The feature names of the named :data:`FEATURE_GROUPS`, in :data:`FEATURE_NAMES`' order; no group or an
    unknown one is an error naming the known ones."""
    unknown = [g for g in groups if g not in FEATURE_GROUPS]
    if unknown or not groups:
        raise UserError(f"feature groups {list(groups)}: expected some of {sorted(FEATURE_GROUPS)}")
    return tuple(n for g, names in FEATURE_GROUPS.items() if g in groups for n in names)


def _cache_path(root: str, pixel_size: float) -> str:
    from deepsea.data.sources import data_cache_dir

    key = f"{os.path.abspath(root)}|{pixel_size}|{FEATURE_VERSION}"
    return os.path.join(data_cache_dir(), "features", hashlib.sha256(key.encode()).hexdigest()[:16] + ".npz")


def folder_features(
    root: str,
    paths: Sequence[str],
    pixel_size: float = 0.0,
    workers: int | None = None,
    progress: bool = True,
) -> FeatureTable:
    """The features of ``paths`` (images under ``root``), computed once: what the folder's cache file lacks is
    computed in ``workers`` processes (default: one per core) and added to it.  A corrupt image is an error
    naming it."""
    from tqdm.auto import tqdm

    cache = _cache_path(root, pixel_size)
    rel = [os.path.relpath(os.path.abspath(p), os.path.abspath(root)) for p in paths]
    known: dict[str, np.ndarray] = {}
    if os.path.exists(cache):
        with np.load(cache, allow_pickle=False) as f:
            if tuple(str(n) for n in f["names"]) == FEATURE_NAMES:
                known = dict(zip((str(r) for r in f["paths"]), f["values"], strict=True))
    todo = sorted(set(rel) - set(known))
    if todo:
        if workers is None:
            workers = (os.cpu_count() or 1) if len(todo) >= _POOL_MIN else 1
        full = [os.path.join(root, r) for r in todo]
        sizes = [pixel_size] * len(full)
        with contextlib.ExitStack() as stack:
            bar = stack.enter_context(tqdm(total=len(todo), desc="features", unit="img", disable=not progress))
            if workers > 1:  # spawned, not forked: the parent may run JAX's threads
                context = multiprocessing.get_context("spawn")
                pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(workers, mp_context=context))
                values = pool.map(_one, full, sizes, chunksize=64)
            else:
                values = map(_one, full, sizes)
            for r, v in zip(todo, values, strict=True):
                known[r] = v.astype(np.float32)
                bar.update(1)
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        tmp = f"{cache}.tmp.{os.getpid()}.npz"
        keys = sorted(known)
        np.savez(
            tmp,
            paths=np.asarray(keys, dtype=str),
            names=np.asarray(FEATURE_NAMES),
            values=np.stack([known[k] for k in keys]),
        )
        os.replace(tmp, cache)
    return FeatureTable(tuple(paths), FEATURE_NAMES, np.stack([known[r] for r in rel]).astype(np.float32), cache)
