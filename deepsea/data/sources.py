"""Where images come from: the labelled folder an experiment trains on (a folder, a tensorflow-datasets dataset, an
EcoTaxa export, or the generated dataset), every image under a folder tree, and the cache folder that holds what
is made or exported once."""

from __future__ import annotations

import os
from typing import Any

from deepsea.data.folders import FolderError
from deepsea.data.images import IMAGE_EXTENSIONS
from deepsea.data.synthetic import DEFAULT_PER_CLASS, SYNTHETIC_VERSION, make_synthetic

__all__ = ["data_cache_dir", "default_synthetic_dir", "list_images", "resolve_data"]


def data_cache_dir() -> str:
    """Where generated and exported datasets are kept: ``$DEEPSEA_DATA``, else ``~/.cache/deepsea``."""
    return os.environ.get("DEEPSEA_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "deepsea")


def resolve_data(config: Any) -> str:
    """The labelled folder to train on: ``config.data.path``; for ``tfds:DIR``, a tensorflow-datasets dataset built
    by :func:`deepsea.data.tfds_plankton.build_tfds`, and for ``ecotaxa:EXPORT.tsv`` an EcoTaxa export, each
    exported once as a folder under the cache; or, if empty, the generated dataset (made on first use)."""
    path = config.data.path
    for prefix in ("tfds:", "ecotaxa:"):
        if path.startswith(prefix):
            return _exported(prefix[:-1], os.path.abspath(os.path.expanduser(path[len(prefix) :])))
    if path:
        return path
    return default_synthetic_dir(per_class=config.data.synthetic_per_class, colour=config.data.synthetic_colour)


def _exported(kind: str, source: str) -> str:
    """A tensorflow-datasets dataset (``tfds``) or an EcoTaxa export (``ecotaxa``) as a labelled folder, made once
    under the data cache (keyed by the source's path)."""
    import hashlib

    out = os.path.join(data_cache_dir(), kind, hashlib.sha256(source.encode()).hexdigest()[:12])
    if kind == "ecotaxa":
        from deepsea.data.ecotaxa import export_labelled_folder

        return export_labelled_folder(source, out)
    from deepsea.data.tfds_plankton import export_folder

    if not os.path.isdir(source):
        raise FileNotFoundError(f"no tensorflow-datasets dataset at {source!r} (from --data tfds:{source})")
    return export_folder(source, out)


def list_images(root: str) -> list[str]:
    """Every image file under ``root`` (recursively; hidden files and folders left out), as sorted paths
    relative to ``root``."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FolderError(f"image folder {root!r} does not exist or is not a folder")
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = os.path.relpath(dirpath, root)
        for f in sorted(filenames):
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                out.append(f if rel == "." else os.path.join(rel, f))
    if not out:
        raise FolderError(f"image folder {root!r} has no images")
    return out


def default_synthetic_dir(
    per_class: int = DEFAULT_PER_CLASS, seed: int = 0, generate: bool = True, colour: bool = False
) -> str:
    """The default generated dataset, made on first use under ``$DEEPSEA_DATA`` (or ``~/.cache/deepsea``).

    Generation writes to a temporary folder renamed into place, so an
    interrupted run never leaves a half-written dataset behind.
    """
    base = data_cache_dir()
    path = os.path.join(base, f"synthetic-v{SYNTHETIC_VERSION}{'-colour' if colour else ''}-{per_class}-{seed}")
    if generate and not os.path.isdir(path):
        os.makedirs(base, exist_ok=True)
        tmp = f"{path}.tmp.{os.getpid()}"
        make_synthetic(tmp, per_class=per_class, seed=seed, colour=colour)
        try:
            os.rename(tmp, path)
        except OSError:  # another process finished first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return path
