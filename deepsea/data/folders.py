"""Image folders: labelled ``<root>/<class>/<image>`` (NDSB train, WHOI, ZooScan exports) and flat ones.

Class names are the sorted sub-folder names.  Hidden files (``.DS_Store``,
``._x.jpg``) and files that are not images (``Thumbs.db``, ``notes.txt``) are
ignored, counted and listed, never silently dropped.  A root with no class
folders, an empty class folder or a missing folder is an error naming it.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from deepsea.data.images import IMAGE_EXTENSIONS
from deepsea.errors import UserError

__all__ = [
    "FolderError",
    "HoldOut",
    "ImageFolder",
    "hold_out",
    "map_classes",
    "read_class_map",
    "scan_flat_folder",
    "scan_labelled_folder",
]

log = logging.getLogger(__name__)


class FolderError(UserError):
    """A dataset folder that cannot be used as given; the message names it."""


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """The files of a dataset folder.

    Attributes:
      root: the folder scanned.
      paths: image paths, sorted by class then file name (flat folders: by name).
      labels: class index of each path (int32), or ``None`` for an unlabelled folder.
      classes: sorted class names (empty for an unlabelled folder).
      ignored: files skipped because they are hidden or not images, relative to ``root``.
    """

    root: str
    paths: tuple[str, ...]
    labels: np.ndarray | None
    classes: tuple[str, ...]
    ignored: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def ids(self) -> tuple[str, ...]:
        """Image ids: file names without their extension (NDSB ids), e.g. ``'12345'``."""
        return tuple(os.path.splitext(os.path.basename(p))[0] for p in self.paths)

    @property
    def names(self) -> tuple[str, ...]:
        """File names, e.g. ``'12345.jpg'`` (the NDSB submission's ``image`` column)."""
        return tuple(os.path.basename(p) for p in self.paths)

    def class_counts(self) -> np.ndarray:
        if self.labels is None:
            raise ValueError("an unlabelled folder has no class counts")
        return np.bincount(self.labels, minlength=len(self.classes))

    def subset(self, indices: np.ndarray) -> ImageFolder:
        """The images at ``indices``, keeping the class list."""
        idx = np.asarray(indices, dtype=np.int64)
        return dataclasses.replace(
            self,
            paths=tuple(self.paths[i] for i in idx),
            labels=None if self.labels is None else self.labels[idx],
        )


def map_classes(folder: ImageFolder, mapping: dict[str, str | None]) -> ImageFolder:
    """Renames, merges (several classes mapped to one name) or drops (mapped to ``None`` or ``""``) classes of a
    labelled folder; classes not in ``mapping`` keep their name.  The classes are sorted again and the images
    of dropped classes left out.  A mapping key that is not a class of the folder is an error naming it."""
    if folder.labels is None:
        raise FolderError(f"{folder.root!r} is not labelled: a class mapping needs class folders")
    unknown = sorted(set(mapping) - set(folder.classes))
    if unknown:
        raise FolderError(f"the class mapping names classes that {folder.root!r} does not have: {unknown[:10]}")
    target = [mapping.get(c, c) or None for c in folder.classes]
    classes = tuple(sorted({t for t in target if t}))
    if not classes:
        raise FolderError(f"the class mapping drops every class of {folder.root!r}")
    index = {c: i for i, c in enumerate(classes)}
    new = np.array([index[t] if t else -1 for t in target], np.int64)[folder.labels]
    keep = np.flatnonzero(new >= 0)
    return ImageFolder(
        folder.root,
        tuple(folder.paths[i] for i in keep),
        new[keep].astype(np.int32),
        classes,
        folder.ignored,
    )


def read_class_map(path: str) -> dict[str, str | None]:
    """A class mapping file: JSON (``{"old": "new", "dropped": null}``) or two columns of CSV/TSV
    (``old,new``; an empty ``new`` drops the class)."""
    import csv
    import json

    if not os.path.isfile(path):
        raise FolderError(f"no class mapping file at {path!r}")
    if path.endswith(".json"):
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise FolderError(f"{path!r}: a JSON class mapping is an object {{old: new or null}}")
        return {str(k): (None if v in (None, "") else str(v)) for k, v in data.items()}
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f, delimiter="\t" if path.endswith(".tsv") else ",") if r]
    bad = [i + 1 for i, r in enumerate(rows) if len(r) not in (1, 2)]
    if bad:
        raise FolderError(f"{path!r} line(s) {bad[:5]}: a class mapping row is 'old,new' (empty new: drop)")
    return {r[0].strip(): (r[1].strip() or None) if len(r) == 2 else None for r in rows}


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _log_ignored(root: str, ignored: list[str]) -> None:
    if ignored:
        shown = ", ".join(ignored[:10]) + (f", ... ({len(ignored) - 10} more)" if len(ignored) > 10 else "")
        log.warning("%s: ignored %d hidden or non-image file(s): %s", root, len(ignored), shown)


def scan_labelled_folder(root: str | os.PathLike) -> ImageFolder:
    """Scans ``<root>/<class>/<image>``; classes are the sorted sub-folder names."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FolderError(f"dataset folder {root!r} does not exist or is not a folder")
    entries = sorted(os.listdir(root))
    classes = [e for e in entries if not e.startswith(".") and os.path.isdir(os.path.join(root, e))]
    ignored = [e for e in entries if e not in classes]
    if not classes:
        raise FolderError(
            f"dataset folder {root!r} has no class folders; expected <root>/<class>/<image> "
            f"(found {len(entries)} entries, none a folder)"
        )
    paths: list[str] = []
    labels: list[int] = []
    empty = []
    for label, name in enumerate(classes):
        folder = os.path.join(root, name)
        files = sorted(os.listdir(folder))
        images = [f for f in files if _is_image(f) and os.path.isfile(os.path.join(folder, f))]
        ignored += [os.path.join(name, f) for f in files if f not in images]
        if not images:
            empty.append(folder)
        paths += [os.path.join(folder, f) for f in images]
        labels += [label] * len(images)
    if empty:
        raise FolderError(
            f"class folder(s) with no images: {', '.join(repr(e) for e in empty)}; "
            "remove them or add images, since every class must have examples"
        )
    _log_ignored(root, ignored)
    log.info("%s: %d images in %d classes", root, len(paths), len(classes))
    return ImageFolder(root, tuple(paths), np.asarray(labels, np.int32), tuple(classes), tuple(ignored))


def scan_flat_folder(root: str | os.PathLike) -> ImageFolder:
    """Scans a flat folder of unlabelled images (the NDSB test layout)."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FolderError(f"image folder {root!r} does not exist or is not a folder")
    paths: list[str] = []
    ignored: list[str] = []
    with os.scandir(root) as it:  # one pass; DirEntry knows its type without another system call
        for entry in sorted(it, key=lambda e: e.name):
            if _is_image(entry.name) and entry.is_file():
                paths.append(entry.path)
            else:
                ignored.append(entry.name)
    if not paths:
        raise FolderError(f"image folder {root!r} has no images ({len(ignored)} other entries)")
    _log_ignored(root, ignored)
    return ImageFolder(root, tuple(paths), None, (), tuple(ignored))


@dataclasses.dataclass(frozen=True)
class HoldOut:
    """What :func:`hold_out` wrote: the images linked for training and set aside."""

    out: str
    train: int
    aside: int


def stratified_split(
    labels: np.ndarray, fraction: float = 0.1, seed: int = 0, min_class_size: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class random split: ``round(fraction * n_c)`` validation images of each class.

    Every class with at least ``min_class_size`` images has at least one
    validation image, and every class keeps at least one training image.
    Returns sorted ``(train_indices, validation_indices)``.
    """
    if not 0 < fraction < 1:
        raise UserError(f"validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    val: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_val = int(np.floor(fraction * len(idx) + 0.5))
        if len(idx) >= min_class_size:
            n_val = max(n_val, 1)
        n_val = min(n_val, len(idx) - 1)
        val.append(rng.permutation(idx)[:n_val])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx


def hold_out(root: str | os.PathLike, out: str | os.PathLike, fraction: float = 0.1, seed: int = 0) -> HoldOut:
    """Sets ``fraction`` of every class of the labelled folder ``root`` aside, as symbolic links (no copies):
    ``out/train/<class>/`` (the rest, to train on), ``out/aside/<class>/`` (labelled, touched only to score) and
    ``out/aside_images/`` (the same images flat, named ``<n>_<file>`` without their class: what pseudo-labelling
    may see).  Refuses an ``out`` that exists."""
    folder = scan_labelled_folder(root)
    out = os.fspath(out)
    if os.path.exists(out):
        raise FolderError(f"{out!r} exists; hold_out writes a new folder")
    assert folder.labels is not None
    train_idx, aside_idx = stratified_split(folder.labels, fraction, seed)
    os.makedirs(os.path.join(out, "aside_images"))
    for part, idx in (("train", train_idx), ("aside", aside_idx)):
        for n, i in enumerate(idx):
            path = os.path.abspath(folder.paths[i])
            cls = folder.classes[folder.labels[i]]
            os.makedirs(os.path.join(out, part, cls), exist_ok=True)
            os.symlink(path, os.path.join(out, part, cls, os.path.basename(path)))
            if part == "aside":
                os.symlink(path, os.path.join(out, "aside_images", f"{n:06d}_{os.path.basename(path)}"))
    return HoldOut(out, len(train_idx), len(aside_idx))
