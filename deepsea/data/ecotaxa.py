"""EcoTaxa in and out: its exports as labelled datasets, and predictions in its import format.

EcoTaxa (https://ecotaxa.obs-vlfr.fr) keeps plankton images with their metadata and validated labels.

- **Exports** are tab-separated files, one object per row, with ``object_id``, ``img_file_name`` (the image,
  relative to the TSV's folder), ``object_annotation_category`` (the display name of the taxon) and
  ``object_annotation_status`` (``validated``, ``predicted``, ``dubious`` or empty); values may be quoted.
  Import-format files carry a second header row of column types (``[t]`` text, ``[f]`` number), which is skipped.
  :func:`read_ecotaxa` reads one (validated objects only by default) and :func:`export_labelled_folder` turns it
  into a labelled folder ``<category>/<image>`` of links to the images, which everything in deepsea trains on
  (``deepsea train ... --data ecotaxa:export.tsv``).
- **Imports**: :func:`write_ecotaxa` writes predictions as EcoTaxa's import TSV: ``img_file_name``,
  ``object_id``, ``object_annotation_category``, ``object_annotation_status`` = ``predicted`` and the score as
  the numeric ``object_deepsea_score``, under the ``[t]``/``[f]`` type row.  Objects left unclassified by
  per-class thresholds get no category (EcoTaxa shows them as unclassified, to be sorted by hand).

Category names may hold any character but ``/`` in a folder name, so a class folder quotes ``%`` and ``/``
(:func:`folder_name`, :func:`category_name`).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import logging
import os
from collections.abc import Iterable, Sequence

from deepsea.errors import UserError

__all__ = [
    "EcoTaxaError",
    "EcoTaxaObjects",
    "category_name",
    "export_labelled_folder",
    "folder_name",
    "read_ecotaxa",
    "write_ecotaxa",
    "write_ecotaxa_rows",
]

log = logging.getLogger(__name__)

REQUIRED = ("object_id", "img_file_name", "object_annotation_category")


class EcoTaxaError(UserError):
    """A TSV that is not an EcoTaxa export, or that names images that are not there."""


@dataclasses.dataclass(frozen=True)
class EcoTaxaObjects:
    """The objects of an EcoTaxa TSV: ids, image paths (absolute), categories and annotation statuses."""

    source: str
    object_ids: tuple[str, ...]
    paths: tuple[str, ...]
    categories: tuple[str, ...]
    statuses: tuple[str, ...]


def folder_name(category: str) -> str:
    """A category as a folder name: ``%`` and ``/`` quoted (reversed by :func:`category_name`)."""
    return category.replace("%", "%25").replace("/", "%2F")


def category_name(folder: str) -> str:
    return folder.replace("%2F", "/").replace("%25", "%")


def _decoded(tsv: str) -> str:
    """The TSV's text: UTF-8 with or without a byte-order mark (as spreadsheets write it), else Latin-1 (every
    byte is a character there, so an old export still reads; logged)."""
    with open(tsv, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        log.warning("%s is not UTF-8 (byte %d): read as Latin-1", tsv, e.start)
        return raw.decode("latin-1")


def read_ecotaxa(tsv: str, statuses: Sequence[str] | None = ("validated",)) -> EcoTaxaObjects:
    """The objects of ``tsv`` whose annotation status is in ``statuses`` (``None``: every object with a
    category).  Raises :class:`EcoTaxaError` naming the file, the line or the missing column."""
    tsv = os.fspath(tsv)
    if not os.path.isfile(tsv):
        raise EcoTaxaError(f"no EcoTaxa TSV at {tsv!r}")
    rows = list(csv.reader(io.StringIO(_decoded(tsv), newline=""), delimiter="\t"))
    if not rows:
        raise EcoTaxaError(f"{tsv!r} is empty")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise EcoTaxaError(f"{tsv!r} is not an EcoTaxa export: no column {', '.join(missing)} (it has {header[:6]}...)")
    body = rows[1:]
    if body and all(v.strip() in ("[t]", "[f]") for v in body[0]):
        body = body[1:]  # the import format's type row
    col = {name: i for i, name in enumerate(header)}
    status_col = col.get("object_annotation_status")
    root = os.path.dirname(os.path.abspath(tsv))
    ids, paths, cats, stats = [], [], [], []
    for line, row in enumerate(body, start=2 + (len(rows) - 1 - len(body))):
        if not any(v.strip() for v in row):
            continue
        if len(row) != len(header):
            raise EcoTaxaError(f"{tsv!r} line {line}: {len(row)} fields for {len(header)} columns")
        category = row[col["object_annotation_category"]].strip()
        status = row[status_col].strip() if status_col is not None else ""
        if not category or (statuses is not None and status not in statuses):
            continue
        ids.append(row[col["object_id"]].strip())
        paths.append(os.path.join(root, row[col["img_file_name"]].strip()))
        cats.append(category)
        stats.append(status)
    lost = [p for p in paths if not os.path.isfile(p)]
    if lost:
        raise EcoTaxaError(f"{len(lost)} image(s) named in {tsv!r} are not there: {lost[:5]}")
    return EcoTaxaObjects(tsv, tuple(ids), tuple(paths), tuple(cats), tuple(stats))


def export_labelled_folder(tsv: str, out: str, statuses: Sequence[str] | None = ("validated",)) -> str:
    """A labelled folder ``<out>/<category>/<object id><ext>`` of symbolic links (copies where links are not
    possible) to the images of ``tsv``'s objects; made once and reused while the TSV is unchanged.  Returns
    ``out``."""
    import shutil

    objects = read_ecotaxa(tsv, statuses)
    if not objects.paths:
        raise EcoTaxaError(f"{tsv!r} has no objects with status in {statuses} and a category")
    with open(tsv, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    done = os.path.join(out, ".complete")
    if os.path.exists(done):
        with open(done) as f:
            if f.read().split()[0] == digest:
                return out
    if os.path.exists(out):  # another version of the export, or one a failure left half-made: rebuilt
        shutil.rmtree(out)
    tmp = f"{out}.tmp.{os.getpid()}"  # made aside and renamed into place: a failure leaves no entry behind
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _link_objects(tsv, objects, tmp)
        with open(os.path.join(tmp, ".complete"), "w") as f:
            f.write(f"{digest} {len(objects.paths)} objects from {tsv}\n")
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _link_objects(tsv: str, objects: EcoTaxaObjects, out: str) -> None:
    import shutil

    seen: set[str] = set()
    for oid, path, cat in zip(objects.object_ids, objects.paths, objects.categories, strict=True):
        folder = os.path.join(out, folder_name(cat))
        os.makedirs(folder, exist_ok=True)
        name = folder_name(oid) + os.path.splitext(path)[1].lower()
        if name in seen:
            raise EcoTaxaError(f"object id {oid!r} appears twice in {tsv!r}")
        seen.add(name)
        target = os.path.join(folder, name)
        try:
            os.symlink(path, target)
        except OSError:
            shutil.copyfile(path, target)


def write_ecotaxa(
    path: str,
    object_ids: Sequence[str],
    image_files: Sequence[str],
    categories: Sequence[str | None],
    scores: Sequence[float],
) -> None:
    """Predictions as an EcoTaxa import TSV (status ``predicted``; an object whose category is ``None`` is left
    unclassified, without a status)."""
    if not len(object_ids) == len(image_files) == len(categories) == len(scores):
        raise ValueError("object ids, image files, categories and scores must have one entry per object")
    write_ecotaxa_rows(path, zip(object_ids, image_files, categories, scores, strict=True))


def write_ecotaxa_rows(
    path: str, rows: Iterable[tuple[str, str, str | None, float]], status: str = "predicted"
) -> None:
    """:func:`write_ecotaxa` from ``(object id, image file, category or None, score)`` rows, written as they
    come (any number of objects in bounded memory); ``status``: the annotation status of categorised objects
    (``predicted``, or ``validated`` for labels a person checked)."""
    columns = ["img_file_name", "object_id", "object_annotation_category", "object_annotation_status"]
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow([*columns, "object_deepsea_score"])
        w.writerow(["[t]", "[t]", "[t]", "[t]", "[f]"])
        for oid, img, cat, score in rows:
            w.writerow([img, oid, cat or "", status if cat else "", f"{float(score):.6g}"])
    os.replace(tmp, path)
