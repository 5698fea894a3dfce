"""From image files to normalised NHWC batches: preprocessing, splits, statistics and grain loaders.

Training batches are built in grain worker processes while the accelerator
(or the other core) trains: each image is decoded, warped once by its own
random affine transform and normalised with the run's global statistics.
Every draw is reproducible from ``(seed, epoch, index)``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np

from deepsea.data.folders import ImageFolder
from deepsea.data.images import BadImageError, read_image
from deepsea.data.transforms import (
    NO_AUGMENTATION,
    AugmentParams,
    AugmentRanges,
    Rescale,
    affine_matrix,
    colour_jitter,
    elastic_field,
    sample_params,
    warp,
)
from deepsea.errors import UserError

__all__ = [
    "AugmentedSource",
    "BatchIterator",
    "MixedSource",
    "Preprocess",
    "ProcessSlice",
    "check_images",
    "compute_stats",
    "eval_batches",
    "preprocess_image",
    "preprocess_inputs",
    "read_input",
    "train_batches",
    "tta_batches",
]

log = logging.getLogger(__name__)

EPOCHS_FOREVER = 10**7


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How a decoded image becomes a network input.

    ``size``: the square patch (95 for convroll4, 47 for the multiscale
    branch).  ``rescale``: see :class:`~deepsea.data.transforms.Rescale`.
    ``channels``: 1 (grayscale) or 3 (RGB).  ``background``: the colour around
    the objects, ``"white"`` (plankton photographed in transmitted light, the
    seed's images, and most photographs) or ``"black"`` (dark-field images).
    Grayscale images on white are inverted (bright organism on zero, the
    seed's input); other images are not, and the warp fills outside the image
    with the background colour.  ``mean``/``std``: the global statistics (from
    :func:`compute_stats`; one per channel for RGB), applied after the warp.
    ``extra_rotations`` and ``second_size`` add the cp8 and multiscale inputs
    (same augmentation, one warp each).
    """

    size: int = 95
    rescale: Rescale = Rescale("max_side", 85.0)
    channels: int = 1
    mean: float | tuple[float, ...] = 0.0
    std: float | tuple[float, ...] = 1.0
    extra_rotations: tuple[float, ...] = ()  # cp8: (45.0,) adds a copy rotated by 45 degrees, in channels
    second_size: int = 0  # multiscale: a second patch "image2" of this size (0: none)
    second_rescale: Rescale = Rescale("factor", 0.2)
    background: str = "white"
    gray_to_rgb: bool = False  # RGB: read grayscale files as three equal channels (else they are refused)
    pixel_size: float = 0.0  # micrometres per pixel of the images (0: unknown); the size feature is then physical

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise UserError(f"channels must be 1 or 3, got {self.channels}")
        if self.size < 1:
            raise UserError(f"patch size must be positive, got {self.size}")
        if self.background not in ("white", "black"):
            raise UserError(f"background must be 'white' or 'black', got {self.background!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                if len(value) not in (1, self.channels):
                    raise UserError(f"{name} has {len(value)} values for {self.channels} channel(s)")
                object.__setattr__(self, name, tuple(float(v) for v in value))
        if not np.all(np.asarray(self.std) > 0):
            raise UserError(f"std must be > 0, got {self.std}")
        if not self.pixel_size >= 0:
            raise UserError(f"pixel size must be >= 0 micrometres (0: unknown), got {self.pixel_size}")

    @property
    def inverted(self) -> bool:
        """Whether pixel values are inverted (``1 - x / 255``): grayscale images on a white background."""
        return self.channels == 1 and self.background == "white"

    @property
    def fill(self) -> float:
        """The value outside the image after inversion: 0 for the dark background (or inverted white), else 1."""
        return 1.0 if self.background == "white" and not self.inverted else 0.0

    @classmethod
    def from_config(cls, data: Any) -> Preprocess:
        """The preprocessing an experiment's ``config.data`` asks for (before its statistics are computed)."""
        return cls(
            size=data.size,
            rescale=Rescale.parse(data.rescale),
            channels=data.channels,
            extra_rotations=tuple(data.extra_rotations),
            second_size=data.second_size,
            second_rescale=Rescale.parse(data.second_rescale),
            background=data.background,
            gray_to_rgb=data.gray_to_rgb,
            pixel_size=data.pixel_size,
        )

    def with_stats(self, mean: float | Sequence[float], std: float | Sequence[float]) -> Preprocess:
        as_stat = lambda v: float(v) if np.ndim(v) == 0 else tuple(float(x) for x in v)  # noqa: E731
        return dataclasses.replace(self, mean=as_stat(mean), std=as_stat(std))


def _scaled(image: np.ndarray, pp: Preprocess) -> np.ndarray:
    """uint8 -> float32 in [0, 1], inverted where ``pp`` inverts (the organism bright on dark)."""
    x = image.astype(np.float32) / np.float32(255)
    return np.float32(1) - x if pp.inverted else x


def _forward_map(x: np.ndarray, pp: Preprocess, params: AugmentParams) -> np.ndarray:
    """The forward map of ``pp``'s warp of the scaled image ``x`` (its rescale, then ``params``)."""
    h, w = x.shape[:2]
    if pp.rescale.kind == "moments":
        scale, centre = pp.rescale.by_moments(x)
        return affine_matrix((h, w), pp.size, scale, params, centre)
    return affine_matrix((h, w), pp.size, pp.rescale.factor(h, w), params)


def _unnormalised(image: np.ndarray, pp: Preprocess, params: AugmentParams) -> np.ndarray:
    """The warped float patch before the global statistics: inversion, warp, then colour jitter of the patch as
    displayed (the background the warp filled in too, as torchvision jitters a whole crop)."""
    x = _scaled(image, pp)
    forward = _forward_map(x, pp, params)
    field = elastic_field(params, pp.size) if params.elastic else None
    x = warp(x, forward, pp.size, pp.fill, field)
    if params.jitters:
        x = np.float32(1) - colour_jitter(np.float32(1) - x, params) if pp.inverted else colour_jitter(x, params)
    return x[:, :, None] if x.ndim == 2 else x


def preprocess_image(image: np.ndarray, pp: Preprocess, params: AugmentParams = AugmentParams()) -> np.ndarray:
    """uint8 ``(H, W)`` or ``(H, W, 3)`` -> normalised float32 ``(size, size, channels)``: one warp."""
    if image.ndim != (2 if pp.channels == 1 else 3):
        raise UserError(f"a {pp.channels}-channel preprocessing got an image of shape {image.shape}")
    x = _unnormalised(image, pp, params)
    return ((x - np.asarray(pp.mean, np.float32)) / np.asarray(pp.std, np.float32)).astype(np.float32)


def read_input(path: str, pp: Preprocess) -> np.ndarray:
    """An image file decoded as ``pp`` expects it: grayscale (``channels=1``) or RGB uint8."""
    return read_image(path, "L" if pp.channels == 1 else "RGB", pp.gray_to_rgb)


def _check_one(path: str, pp: Preprocess) -> tuple[str, tuple[int, int] | None, str | None]:
    try:
        img = read_input(path, pp)
        return path, (int(img.shape[0]), int(img.shape[1])), None
    except BadImageError as e:
        return path, None, e.reason


def check_images(
    folder: ImageFolder,
    skip_bad: bool = False,
    workers: int | None = None,
    progress: bool = True,
    pp: Preprocess | None = None,
) -> tuple[ImageFolder, np.ndarray, list[tuple[str, str]]]:
    """Decodes every image once, before training starts, so that a bad file fails now and by name.

    Images are read as ``pp`` reads them (default: grayscale): an RGB ``pp`` also refuses grayscale files
    unless it has ``gray_to_rgb`` (see :func:`deepsea.data.images.read_image`).

    Returns the folder (without the bad files if ``skip_bad``), each kept
    image's raw ``(height, width)`` and the list of ``(path, reason)`` skipped.
    Without ``skip_bad`` the first bad file raises :class:`BadImageError`
    (all bad files are listed in its message).
    """
    from tqdm.auto import tqdm

    workers = workers or min(4, os.cpu_count() or 1)
    results: list[tuple[str, tuple[int, int] | None, str | None]] = []
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        check = functools.partial(_check_one, pp=pp or Preprocess())
        it = pool.map(check, folder.paths, chunksize=64) if workers > 1 else map(check, folder.paths)
        for r in tqdm(it, total=len(folder), desc="checking images", unit="img", disable=not progress):
            results.append(r)
    bad = [(p, reason) for p, _, reason in results if reason is not None]
    if bad and not skip_bad:
        listing = "; ".join(f"{p}: {r}" for p, r in bad[:20]) + ("; ..." if len(bad) > 20 else "")
        err = BadImageError(bad[0][0], bad[0][1])
        err.args = (
            f"{len(bad)} unreadable image(s) (to skip and list them: --set data.skip_bad_images=true when training, "
            f"--skip-bad-images when predicting): {listing}",
        )
        raise err
    for p, reason in bad:
        log.warning("skipping unreadable image %s: %s", p, reason)
    keep = np.array([r[2] is None for r in results], dtype=bool)
    sizes = np.array([r[1] for r in results if r[1] is not None], dtype=np.int32).reshape(-1, 2)
    return folder.subset(np.flatnonzero(keep)), sizes, bad


def compute_stats(
    folder: ImageFolder, pp: Preprocess, max_images: int = 2000, seed: int = 0
) -> tuple[float | tuple[float, ...], float | tuple[float, ...]]:
    """Global mean and standard deviation of the plainly rescaled patches (float64 accumulation): floats for
    grayscale, one per channel for RGB.

    Uses at most ``max_images`` images drawn at random with ``seed``.
    """
    rng = np.random.default_rng(seed)
    n = len(folder)
    idx = rng.permutation(n)[: min(n, max_images)]
    total = np.zeros(pp.channels)
    total_sq = np.zeros(pp.channels)
    count = 0
    for i in idx:
        x = _unnormalised(read_input(folder.paths[i], pp), pp, AugmentParams()).astype(np.float64)
        total += x.sum((0, 1))
        total_sq += (x * x).sum((0, 1))
        count += x.shape[0] * x.shape[1]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    if not np.all(std > 0):
        raise UserError(f"the images of {folder.root!r} have zero variance after preprocessing")
    if pp.channels == 1:
        return float(mean[0]), float(std[0])
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def preprocess_inputs(image: np.ndarray, pp: Preprocess, params: AugmentParams = AugmentParams()) -> dict[str, Any]:
    """All of a model's image inputs: ``image`` (with ``extra_rotations`` copies in channels) and ``image2``."""
    x = preprocess_image(image, pp, params)
    if pp.extra_rotations:
        copies = [x]
        for angle in pp.extra_rotations:
            copies.append(preprocess_image(image, pp, dataclasses.replace(params, rotation=params.rotation + angle)))
        x = np.concatenate(copies, axis=-1)
    out: dict[str, Any] = {"image": x}
    if pp.second_size:
        second = dataclasses.replace(
            pp, size=pp.second_size, rescale=pp.second_rescale, extra_rotations=(), second_size=0
        )
        out["image2"] = preprocess_image(image, second, params)
    return out


def device_inputs(image: np.ndarray, pp: Preprocess, params: AugmentParams, canvas: int) -> dict[str, np.ndarray]:
    """What :func:`deepsea.data.device_warp.warp_inputs` needs to make :func:`preprocess_inputs`'s patches on the
    device: the uint8 image at the top-left of a ``canvas`` x ``canvas`` square (``canvas``), its size
    (``canvas_size``) and the forward maps of its warps (``forward``: the patch, then each of ``extra_rotations``;
    ``forward2``: the second size's).  An image with a side over ``canvas`` is first shrunk by averaging blocks of
    ``k`` x ``k`` pixels (the smallest ``k`` that fits it; the maps see the shrunk image's pixels where the
    original ones were), so only such images differ from the CPU's warp by more than rounding."""
    if params.elastic or params.jitters:
        raise UserError("elastic distortions and colour jitter run on the CPU only (data.augment_on='host')")
    moments = "moments" in (pp.rescale.kind, pp.second_rescale.kind if pp.second_size else "")
    x = _scaled(image, pp) if moments else image  # the moments rescale measures the image as the CPU warp sees it
    passes = [params] + [dataclasses.replace(params, rotation=params.rotation + a) for a in pp.extra_rotations]
    out = {"forward": np.stack([_forward_map(x, pp, p) for p in passes]).astype(np.float32)}
    if pp.second_size:
        second = dataclasses.replace(
            pp, size=pp.second_size, rescale=pp.second_rescale, extra_rotations=(), second_size=0
        )
        out["forward2"] = _forward_map(x, second, params).astype(np.float32)
    h, w = image.shape[:2]
    k = -(-max(h, w) // canvas)
    if k > 1:  # block means, the last partial block of a side averaging the pixels it has
        rows, cols = -(-h // k), -(-w // k)
        padded = np.pad(image.astype(np.float32), [(0, rows * k - h), (0, cols * k - w)] + [(0, 0)] * (image.ndim - 2))
        counts = np.pad(np.ones((h, w), np.float32), [(0, rows * k - h), (0, cols * k - w)])
        blocks = padded.reshape(rows, k, cols, k, *image.shape[2:]).sum((1, 3))
        n = counts.reshape(rows, k, cols, k).sum((1, 3))
        image = np.rint(blocks / (n if image.ndim == 2 else n[..., None])).astype(np.uint8)
        # shrunk pixel (i, j) covers original pixels k*i .. k*i + k - 1: its centre is at k*i + (k - 1) / 2
        to_original = np.array([[k, 0.0, (k - 1) / 2.0], [0.0, k, (k - 1) / 2.0], [0.0, 0.0, 1.0]])
        out["forward"] = (out["forward"].astype(np.float64) @ to_original).astype(np.float32)
        if "forward2" in out:
            out["forward2"] = (out["forward2"].astype(np.float64) @ to_original).astype(np.float32)
        h, w = image.shape[:2]
    square = np.zeros((canvas, canvas, *image.shape[2:]), np.uint8)
    square[:h, :w] = image
    out["canvas"] = square
    out["canvas_size"] = np.array([h, w], np.int32)
    return out


def _example(
    paths: Sequence[str],
    labels: np.ndarray | None,
    index: int,
    pp: Preprocess,
    params: AugmentParams,
    image: np.ndarray | None = None,
    canvas: int = 0,
) -> dict[str, Any]:
    """One example: the warped image(s), its raw ``(height, width)``, its index and (if known) its label.

    ``image``: the decoded ``paths[index]``, when the caller has it already.  ``canvas``: instead of the warped
    images, what the device needs to warp them (:func:`device_inputs`).
    """
    img = read_input(paths[index], pp) if image is None else image
    out: dict[str, Any] = {
        **(device_inputs(img, pp, params, canvas) if canvas else preprocess_inputs(img, pp, params)),
        # the raw size, in micrometres when the pixel size is known
        "raw_size": np.array(img.shape[:2], np.float32) * np.float32(pp.pixel_size or 1.0),
        "index": np.int64(index),
    }
    if labels is not None:
        out["label"] = np.int32(labels[index])
    return out


class AugmentedSource:
    """A random-access source of preprocessed examples over infinite (or ``epochs``) shuffled epochs.

    Global index ``i`` is position ``i mod n`` of epoch ``i // n``; each epoch
    has its own permutation from ``(seed, epoch)`` and each example its own
    transform from ``(seed, epoch, image index)``, so any example can be
    recomputed, in any process, in any order.

    ``cache``: keep every decoded image (uint8, raw size) in memory after its
    first read, so later epochs only warp; each worker process holds its own
    copy of the decoded images.  ``class_weights``: each example gets its
    class's loss ``weight``.  ``balanced``: each epoch draws its examples
    with replacement so that every class is equally likely (long-tailed data).
    ``targets`` (``(N, K)`` probabilities): each example's soft ``target``
    (pseudo-labels); ``teacher`` (``(N, K)`` log-probabilities): each
    example's ``teacher`` predictions (distillation).  ``canvas``: each example holds what the device needs to warp
    it (:func:`device_inputs`, into squares of this side) instead of the warped patches.
    """

    def __init__(
        self,
        paths: Sequence[str],
        labels: np.ndarray | None,
        pp: Preprocess,
        ranges: AugmentRanges = NO_AUGMENTATION,
        seed: int = 0,
        shuffle: bool = True,
        epochs: int | None = None,
        cache: bool = False,
        class_weights: np.ndarray | None = None,
        balanced: bool = False,
        targets: np.ndarray | None = None,
        teacher: np.ndarray | None = None,
        canvas: int = 0,
    ):
        if not paths:
            raise ValueError("no images to load")
        if canvas < 0:
            raise UserError(f"data.device_canvas must be positive, got {canvas}")
        for name, rows in (("targets", targets), ("teacher", teacher)):
            if rows is not None and len(rows) != len(paths):
                raise ValueError(f"{len(rows)} rows of {name} for {len(paths)} images")
        self.targets = None if targets is None else np.asarray(targets, np.float32)
        self.teacher = None if teacher is None else np.asarray(teacher, np.float32)
        self.paths = list(paths)
        self.labels = None if labels is None else np.asarray(labels, np.int32)
        self.pp, self.ranges, self.seed, self.shuffle = pp, ranges, seed, shuffle
        self.epochs = EPOCHS_FOREVER if epochs is None else epochs
        self._perm_epoch = -1
        self._perm: np.ndarray | None = None
        self.cache, self.canvas = cache, canvas
        self._decoded: dict[int, np.ndarray] = {}
        self.class_weights = None if class_weights is None else np.asarray(class_weights, np.float32)
        if self.class_weights is not None and self.labels is None:
            raise ValueError("class weights need labels")
        self.balanced = balanced
        if balanced and self.labels is None:
            raise ValueError("class-balanced sampling needs labels")

    def __len__(self) -> int:
        return len(self.paths) * self.epochs

    def _permutation(self, epoch: int) -> np.ndarray:
        """The order of ``epoch``'s examples: a permutation, or with ``balanced`` a draw with replacement in
        which every class is equally likely."""
        if epoch != self._perm_epoch:
            rng = np.random.default_rng([self.seed, epoch])
            if self.balanced:
                assert self.labels is not None
                counts = np.bincount(self.labels)
                p = 1.0 / counts[self.labels]
                self._perm = rng.choice(len(self.paths), size=len(self.paths), replace=True, p=p / p.sum())
            else:
                self._perm = rng.permutation(len(self.paths))
            self._perm_epoch = epoch
        assert self._perm is not None
        return self._perm

    def example(self, epoch: int, index: int) -> dict[str, Any]:
        """Image ``index`` as drawn in ``epoch``."""
        params = sample_params(np.random.default_rng([self.seed, epoch, index]), self.ranges)
        image = self._decoded.get(index)
        if image is None:
            image = read_input(self.paths[index], self.pp)
            if self.cache:
                self._decoded[index] = image
        out = _example(self.paths, self.labels, index, self.pp, params, image, self.canvas)
        if self.class_weights is not None:
            out["weight"] = self.class_weights[out["label"]]
        if self.targets is not None:
            out["target"] = self.targets[index]
        if self.teacher is not None:
            out["teacher"] = self.teacher[index]
        return out

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_decoded": {}}  # workers decode (and cache) for themselves

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        epoch, pos = divmod(int(i), len(self.paths))
        index = int(self._permutation(epoch)[pos]) if self.shuffle else pos
        return self.example(epoch, index)

    def __repr__(self) -> str:
        return f"AugmentedSource({len(self.paths)} images, size={self.pp.size}, seed={self.seed})"


class MixedSource:
    """Global batches of ``batch_size`` examples of which the last ``pseudo_per_batch`` come from ``pseudo`` (an
    :class:`AugmentedSource` with soft ``targets``) and the others from ``real``, each source walking its own
    shuffled epochs.  Real examples get their one-hot label as ``target``, so one loss serves both.

    Global index ``i`` is position ``i mod B`` of batch ``i // B``: like the sources, a pure function of the
    index, so resuming and several processes see the same batches.
    """

    def __init__(
        self, real: AugmentedSource, pseudo: AugmentedSource, batch_size: int, pseudo_per_batch: int, classes: int
    ):
        if not 0 < pseudo_per_batch < batch_size:
            raise UserError(
                f"a batch of {batch_size} must hold between 1 and {batch_size - 1} pseudo-labelled images, "
                f"not {pseudo_per_batch} (data.pseudo_fraction)"
            )
        if pseudo.targets is None or pseudo.targets.shape[1] != classes:
            raise UserError(f"the pseudo-labelled source needs targets over the {classes} classes")
        self.real, self.pseudo, self.classes = real, pseudo, classes
        self.batch, self.npseudo = batch_size, pseudo_per_batch
        self.nreal = batch_size - pseudo_per_batch

    def __len__(self) -> int:
        return min(len(self.real) // self.nreal, len(self.pseudo) // self.npseudo) * self.batch

    def __getitem__(self, i: int) -> dict[str, Any]:
        k, j = divmod(int(i), self.batch)
        if j >= self.nreal:
            return self.pseudo[k * self.npseudo + j - self.nreal]
        out = self.real[k * self.nreal + j]
        out["target"] = np.zeros(self.classes, np.float32)
        out["target"][out["label"]] = 1.0
        return out

    def __repr__(self) -> str:
        return f"MixedSource({self.real!r} + {self.pseudo!r}, {self.npseudo} of {self.batch} pseudo-labelled)"


def _grain_ready() -> None:
    """Grain's worker processes read absl flags, which programs like ours never parse: mark them parsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class BatchIterator:
    """Iterates over a grain pipeline's batches, copied out of shared memory; ``close()`` stops the workers.

    Also a context manager.  Copying (about a megabyte a batch) frees each
    shared-memory block at once instead of at interpreter exit.
    """

    def __init__(self, it: Any):
        self._it = it

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._it)
        return {k: np.array(v, copy=True) for k, v in batch.items()}

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> BatchIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ProcessSlice:
    """This process's share of each global batch: examples ``k*B + p*B/P`` to ``k*B + (p+1)*B/P - 1`` of batch k.

    With ``P`` processes (hosts) the slices of all processes tile every global
    batch exactly, so a multi-host run sees the same batches as a single host.
    """

    def __init__(self, source: Any, global_batch: int, process_index: int, process_count: int):
        if global_batch % process_count:
            raise UserError(f"global batch {global_batch} is not divisible by {process_count} processes")
        self.source, self.global_batch = source, global_batch
        self.local = global_batch // process_count
        self.offset = process_index * self.local

    def __len__(self) -> int:
        return len(self.source) // self.global_batch * self.local

    def __getitem__(self, i: int) -> Any:
        k, j = divmod(int(i), self.local)
        return self.source[k * self.global_batch + self.offset + j]


def train_batches(
    source: AugmentedSource | MixedSource,
    batch_size: int,
    workers: int = 1,
    start_step: int = 0,
    buffer: int = 2,
    process_index: int = 0,
    process_count: int = 1,
) -> BatchIterator:
    """Infinite fixed-size batches, built in ``workers`` processes (0: in this process).

    Batch ``k`` holds global examples ``k * batch_size`` to ``(k + 1) * batch_size - 1``,
    so ``start_step`` resumes exactly where a run stopped.  With several
    processes (multi-host), each yields its :class:`ProcessSlice` of every batch.
    """
    if batch_size < 1:
        raise UserError(f"batch size must be positive, got {batch_size}")
    _grain_ready()
    local = source if process_count == 1 else ProcessSlice(source, batch_size, process_index, process_count)
    ds = grain.MapDataset.source(local).batch(batch_size // process_count, drop_remainder=True)
    if start_step:
        ds = ds[start_step:]
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0 if workers else 2, prefetch_buffer_size=buffer))
    if workers:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=buffer))
    return BatchIterator(iter(it))


def eval_batches(
    paths: Sequence[str],
    labels: np.ndarray | None,
    pp: Preprocess,
    batch_size: int,
    params: AugmentParams = AugmentParams(),
    workers: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """One pass in order, every image under the same transform ``params``; the last batch is padded.

    Each batch has ``"mask"`` (1 for real examples, 0 for padding).
    """
    n = len(paths)
    _grain_ready()
    source = _FixedSource(list(paths), labels, pp, params)
    ds = grain.MapDataset.source(source).batch(batch_size, drop_remainder=False)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0 if workers else 2))
    if workers:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    done = 0
    for batch in BatchIterator(iter(it)):
        done += len(batch["index"])
        yield _padded(batch, batch_size)
    assert done == n


def _padded(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """``batch`` filled up to ``batch_size`` rows (the last example repeated), with its ``"mask"`` (1: real)."""
    k = len(batch["index"])
    out = {key: np.concatenate([v, np.repeat(v[-1:], batch_size - k, 0)]) for key, v in batch.items()}
    out["mask"] = (np.arange(batch_size) < k).astype(np.float32)
    return out


def _tta_example(
    paths: Sequence[str],
    pp: Preprocess,
    params: AugmentParams,
    idx: range,
    images: list[np.ndarray],
    canvas: int,
    j: int,
) -> dict[str, Any]:
    return _example(paths, None, idx[j], pp, params, images[j], canvas)


def tta_batches(
    paths: Sequence[str],
    pp: Preprocess,
    transforms: Sequence[AugmentParams],
    batch_size: int,
    chunk: int = 1024,
    threads: int = 2,
    prefetch: int = 4,
    images: Sequence[np.ndarray] | None = None,
    canvas: int = 0,
) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
    """Every image of ``paths`` under every transform, each image decoded once (``canvas``: the batches hold what
    the device needs to warp them, :func:`device_inputs`, instead of the warped patches).

    The images go in chunks of ``chunk`` (memory stays bounded at any folder
    size): a chunk is decoded once, in ``threads`` threads, then warped under
    each transform in turn.  Yields ``(transform index, index of the batch's
    first image, batch)``, each batch padded and masked like
    :func:`eval_batches`'.  A background thread builds the batches up to
    ``prefetch`` ahead, so the warps overlap the predictions that consume them;
    an error there (an unreadable image, named) is raised here.  ``images``: the
    decoded images of ``paths``, when the caller has them already.
    """
    import queue
    import threading

    if chunk < batch_size:
        raise ValueError(f"chunk ({chunk}) must hold at least one batch ({batch_size})")
    if images is not None and len(images) != len(paths):
        raise ValueError(f"{len(images)} decoded images for {len(paths)} paths")
    done = object()
    q: queue.Queue[Any] = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
                for start in range(0, len(paths), chunk):
                    idx = range(start, min(start + chunk, len(paths)))
                    if images is None:
                        decoded = list(pool.map(lambda i: read_input(paths[i], pp), idx))
                    else:
                        decoded = [images[i] for i in idx]
                    for t, params in enumerate(transforms):
                        for b in range(0, len(idx), batch_size):
                            part = range(b, min(b + batch_size, len(idx)))
                            warp_one = functools.partial(_tta_example, paths, pp, params, idx, decoded, canvas)
                            examples = list(pool.map(warp_one, part))
                            stacked = {key: np.stack([e[key] for e in examples]) for key in examples[0]}
                            if not put((t, start + b, _padded(stacked, batch_size))):
                                return
            put(done)
        except BaseException as e:  # handed to the consumer, which raises it
            put(e)

    thread = threading.Thread(target=produce, name="tta-batches", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


class _FixedSource:
    def __init__(self, paths: list[str], labels: np.ndarray | None, pp: Preprocess, params: AugmentParams):
        self.paths, self.labels, self.pp, self.params = paths, labels, pp, params

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return _example(self.paths, self.labels, i, self.pp, self.params)
