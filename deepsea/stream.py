"""Predicting a folder tree of any size in one pass: bounded memory, resumable, written as it goes.

:func:`predict_tree` lists the images under a folder (recursively, sorted), then predicts them in chunks: each
chunk is decoded once, in threads (a bad file is skipped and listed, or an error naming it), predicted under
every test-time transform, combined, calibrated if the run has a calibration for that setting, and appended to
the output CSV: ``image`` (the path relative to the folder; the file name for a flat folder, as a Kaggle
submission has it), every class's probability, then the optional ``label`` and top-n columns.  After each
chunk a state file beside the output records the chunks done and the CSV's length, so a killed run started
again with the same arguments cuts the CSV back to its last finished chunk and continues from there.  Memory
holds one chunk's images and probabilities whatever the folder's size.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from deepsea.calibration import UNCLASSIFIED, Thresholds, apply_thresholds
from deepsea.data import BadImageError
from deepsea.data.pipeline import read_input
from deepsea.data.sources import list_images
from deepsea.errors import UserError

__all__ = ["StreamResult", "csv_to_ecotaxa", "csv_to_ifcb_scores", "csv_to_parquet", "embed_csv_images", "predict_tree"]

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 4096


@dataclasses.dataclass(frozen=True)
class StreamResult:
    """What :func:`predict_tree` wrote: images predicted (this call and before a resume), skipped files, speed."""

    out: str
    images: int
    labelled: int  # images given a class rather than 'unclassified' (all of them without thresholds)
    resumed_from: int  # images already in the output when this call started
    skipped: tuple[tuple[str, str], ...]
    seconds: float  # this call's prediction time

    @property
    def images_per_s(self) -> float:
        return (self.images - self.resumed_from) / max(self.seconds, 1e-9)


def _decode(root: str, rel: Sequence[str], pp: Any, skip_bad: bool, pool: Any) -> tuple[list, list, list]:
    def one(r: str) -> tuple[str, np.ndarray | None, str | None]:
        try:
            return r, read_input(os.path.join(root, r), pp), None
        except BadImageError as e:
            if not skip_bad:
                raise
            return r, None, e.reason

    good, images, bad = [], [], []
    for r, img, reason in pool.map(one, rel):
        if img is None:
            bad.append((r, reason))
        else:
            good.append(r)
            images.append(img)
    return good, images, bad


def _chunks(n: int, size: int, start: int) -> Iterator[tuple[int, int]]:
    for lo in range(start * size, n, size):
        yield lo // size, lo


def predict_tree(
    run: Any,
    root: str,
    out: str,
    tta: int | str = 0,
    combine: str = "mean",
    skip_bad: bool = False,
    top: int = 0,
    thresholds: Thresholds | None = None,
    chunk: int = DEFAULT_CHUNK,
    progress: bool = True,
    stop_after_chunks: int | None = None,
) -> StreamResult:
    """Predicts every image under ``root`` with ``run`` (any :class:`deepsea.predictor.Predictor`: a run, an
    exported model, a fused run) into the CSV ``out``; resumes a killed call with the same arguments.
    ``stop_after_chunks``: stop as if killed (for tests).

    With several JAX processes (``jax.distributed``), process ``p`` of ``P`` predicts the ``p``-th contiguous share
    of the sorted image list into ``out.part<p>-of-<P>`` (resumable like ``out``), and after all have finished the
    first joins the parts into ``out``, in order: the same file as one process writes.  Each process returns its
    own share's result; the first, the whole file's.
    """
    import jax

    rel = list_images(root)
    args = (tta, combine, skip_bad, top, thresholds, chunk)
    count, index = jax.process_count(), jax.process_index()
    if count == 1:
        return _predict_list(run, root, rel, out, *args, progress, stop_after_chunks)
    from jax.experimental import multihost_utils

    from deepsea.distributed import process_share

    parts = [f"{out}.part{p}-of-{count}" for p in range(count)]
    mine = rel[process_share(len(rel))]
    res = _predict_list(run, root, mine, parts[index], *args, progress and index == 0, stop_after_chunks)
    multihost_utils.sync_global_devices(f"deepsea predict {out}: every share predicted")
    if index == 0 and stop_after_chunks is None:
        res = _join_parts(parts, out, len(rel))
    multihost_utils.sync_global_devices(f"deepsea predict {out}: parts joined")
    return res


def _join_parts(parts: list[str], out: str, total: int) -> StreamResult:
    """Concatenates the processes' CSVs (one header) into ``out`` atomically, then removes them and their state."""
    images, labelled, skipped = 0, 0, []
    tmp = f"{out}.tmp.{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        for i, part in enumerate(parts):
            state = {"images": 0, "labelled": 0, "skipped": []}  # a process with no share writes no chunk
            if os.path.exists(f"{part}.state.json"):
                with open(f"{part}.state.json") as s:
                    state = json.load(s)
            images, labelled = images + state["images"], labelled + state["labelled"]
            skipped += [tuple(x) for x in state["skipped"]]
            with open(part, newline="") as p:
                header = p.readline()
                if i == 0:
                    f.write(header)
                for line in p:
                    f.write(line)
    if images + len(skipped) != total:
        raise RuntimeError(f"the parts of {out!r} hold {images} images and {len(skipped)} skipped, not {total}")
    os.replace(tmp, out)
    for part in parts:
        for path in (part, f"{part}.state.json"):
            if os.path.exists(path):
                os.remove(path)
    return StreamResult(out, images, labelled, 0, tuple(skipped), 0.0)


def _predict_list(
    run: Any,
    root: str,
    rel: list[str],
    out: str,
    tta: int | str = 0,
    combine: str = "mean",
    skip_bad: bool = False,
    top: int = 0,
    thresholds: Thresholds | None = None,
    chunk: int = DEFAULT_CHUNK,
    progress: bool = True,
    stop_after_chunks: int | None = None,
) -> StreamResult:
    """Predicts the images ``rel`` (relative to ``root``) into the CSV ``out``, resuming a killed call."""
    from tqdm.auto import tqdm

    from deepsea.predictor import check_tta, predictor_calibration, predictor_probs
    from deepsea.submission import submission_header, submission_rows

    check_tta(run, tta)
    classes = list(run.classes)
    predictor_calibration(run, tta, combine)  # warns now, once, if a calibration does not fit this setting
    key = hashlib.sha256(
        json.dumps([rel, run.workdir, run.cache_key, str(tta), combine, top, thresholds is not None, chunk]).encode()
    ).hexdigest()
    state_path = f"{out}.state.json"
    done_chunks, skipped, written, labelled = 0, [], 0, 0
    if os.path.exists(state_path) and os.path.exists(out):
        with open(state_path) as f:
            state = json.load(f)
        if state.get("key") == key:
            done_chunks, written, labelled = state["chunks"], state["images"], state["labelled"]
            skipped = [tuple(s) for s in state["skipped"]]
            with open(out, "r+b") as f:
                f.truncate(state["bytes"])  # whatever a killed chunk had begun to write
        else:
            log.warning(
                "%s holds %d images predicted with other options (model, TTA, combination, top-n, thresholds or "
                "chunk size): predicting all %d again with these", out, state.get("images", 0), len(rel)
            )
    resumed_from = written
    mode = "a" if done_chunks else "w"
    t0 = time.perf_counter()
    with (
        open(out, mode, newline="") as f,
        concurrent.futures.ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool,
        tqdm(total=len(rel), initial=done_chunks * chunk, desc="predict", unit="img", disable=not progress) as bar,
    ):
        w = csv.writer(f)
        if not done_chunks:
            w.writerow(submission_header(classes, top, thresholds is not None))
        for c, lo in _chunks(len(rel), chunk, done_chunks):
            part = rel[lo : lo + chunk]
            good, images, bad = _decode(root, part, run.preprocess, skip_bad, pool)
            skipped += bad
            if good:
                paths = [os.path.join(root, r) for r in good]
                probs = predictor_probs(run, paths, tta, combine, False, True, images, cache=False)
                labels = apply_thresholds(probs, classes, thresholds) if thresholds is not None else None
                labelled += len(good) if labels is None else sum(lab != UNCLASSIFIED for lab in labels)
                w.writerows(submission_rows(good, classes, probs, top, labels))
            f.flush()
            os.fsync(f.fileno())
            written += len(good)
            state = {
                "key": key,
                "chunks": c + 1,
                "images": written,
                "labelled": labelled,
                "bytes": f.tell(),
                "skipped": skipped,
            }
            tmp = f"{state_path}.tmp"
            with open(tmp, "w") as s:
                json.dump(state, s)
            os.replace(tmp, state_path)
            bar.update(len(part))
            if stop_after_chunks is not None and c + 1 - done_chunks >= stop_after_chunks:
                break
    return StreamResult(out, written, labelled, resumed_from, tuple(skipped), time.perf_counter() - t0)


def csv_to_parquet(csv_path: str, parquet_path: str) -> str:
    """The prediction CSV as Parquet (pyarrow, read and written block by block: bounded memory); the image and
    label columns as strings, probabilities as float32."""
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("writing Parquet needs pyarrow: pip install pyarrow") from None
    with open(csv_path, newline="") as f:
        header = next(csv.reader(f))
    text = {"image", "label"} | {h for h in header if h.startswith("top") and not h.endswith("_prob")}
    types = {h: pa.string() if h in text else pa.float32() for h in header}
    reader = pacsv.open_csv(csv_path, convert_options=pacsv.ConvertOptions(column_types=types))
    tmp = f"{parquet_path}.tmp.{os.getpid()}"
    with pq.ParquetWriter(tmp, reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch)
    os.replace(tmp, parquet_path)
    return parquet_path


def csv_to_ecotaxa(csv_path: str, tsv_path: str, classes: Sequence[str]) -> str:
    """The prediction CSV as an EcoTaxa import TSV, row by row: each image's ``label`` column (or, without one,
    its most probable class) as the predicted category, its top probability as the score."""
    from deepsea.data.ecotaxa import category_name, write_ecotaxa_rows

    k = len(classes)

    def rows() -> Iterator[tuple[str, str, str | None, float]]:
        with open(csv_path, newline="") as f:
            reader = csv.reader(f)
            labelled = next(reader)[1 + k : 2 + k] == ["label"]
            for row in reader:
                probs = [float(v) for v in row[1 : 1 + k]]
                best = max(range(k), key=probs.__getitem__)
                label = row[1 + k] if labelled else classes[best]
                category = None if label == UNCLASSIFIED else category_name(label)
                yield os.path.splitext(os.path.basename(row[0]))[0], row[0], category, probs[best]

    write_ecotaxa_rows(tsv_path, rows())
    return tsv_path


_IFCB_NAME = re.compile(r"^(?P<bin>.+)_(?P<roi>\d+)$")


def csv_to_ifcb_scores(csv_path: str, out_dir: str, classes: Sequence[str], model_id: str) -> list[str]:
    """The prediction CSV as IFCB class-score files, one per bin: ``<bin>_class.h5`` in the IFCB dashboard's
    version 3 layout (datasets ``output_scores``, N x C float64; ``class_labels``, ASCII; ``roi_numbers``, int),
    plus ``model_id``, ``output_classes`` (each ROI's top class) and ``version``.  Images must be named as IFCB
    ROIs are, ``<bin>_<roi number>.<ext>`` (``D20240101T120000_IFCB001_00042.png``); a bin's rows are read in
    order and written when the next bin starts, so memory holds one bin."""
    try:
        import h5py
    except ImportError:
        raise ImportError("writing IFCB class scores needs h5py: pip install h5py") from None
    os.makedirs(out_dir, exist_ok=True)
    written: list[str] = []
    labels = np.array([c.encode("ascii", "replace") for c in classes])

    def flush(bin_id: str, rois: list[int], rows: list[list[float]]) -> None:
        path = os.path.join(out_dir, f"{bin_id}_class.h5")
        if path in written:
            raise UserError(f"{csv_path}: the rows of bin {bin_id} are not together; sort the CSV by image first")
        scores = np.asarray(rows, np.float64)
        tmp = f"{path}.tmp.{os.getpid()}"
        with h5py.File(tmp, "w") as f:
            f.create_dataset("output_scores", data=scores)
            f.create_dataset("class_labels", data=labels)
            f.create_dataset("roi_numbers", data=np.asarray(rois, np.int64))
            f.create_dataset("output_classes", data=scores.argmax(1))
            f.attrs["version"] = "v3"
            f.attrs["model_id"] = model_id
            f.attrs["bin_id"] = bin_id
        os.replace(tmp, path)
        written.append(path)

    with open(csv_path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        if header[1 : 1 + len(classes)] != list(classes):
            raise UserError(f"{csv_path}: its class columns are not the model's {len(classes)} classes")
        current, rois, rows = None, [], []
        for row in reader:
            name = os.path.splitext(os.path.basename(row[0]))[0]
            m = _IFCB_NAME.match(name)
            if m is None:
                raise UserError(
                    f"{csv_path}: image {row[0]!r} is not named as an IFCB ROI (<bin>_<roi number>.png), so its "
                    "bin and ROI number are unknown"
                )
            if m["bin"] != current:
                if current is not None:
                    flush(current, rois, rows)
                current, rois, rows = m["bin"], [], []
            rois.append(int(m["roi"]))
            rows.append([float(x) for x in row[1 : 1 + len(classes)]])
        if current is not None:
            flush(current, rois, rows)
    return written


def embed_csv_images(run: Any, csv_path: str, root: str, parquet_path: str, chunk: int = DEFAULT_CHUNK) -> int:
    """Penultimate-layer embeddings (the classifier's input; plain rescale, no TTA) of every image of a prediction
    CSV (paths relative to ``root``), written to Parquet chunk by chunk: an ``image`` column, then ``e0 ...``
    (float32), for clustering and active learning.  Returns the number of images."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("writing Parquet needs pyarrow: pip install pyarrow") from None
    from deepsea.predictor import batch_probs
    from deepsea.tta import transforms_for

    if not hasattr(run, "embed_batch"):
        raise UserError(f"{run.workdir}: embeddings need a trained run (an exported or fused model has no layers)")
    with open(csv_path, newline="") as f:
        names = [row[0] for i, row in enumerate(csv.reader(f)) if i]
    transforms = transforms_for(0, run.preprocess.size)
    tmp = f"{parquet_path}.tmp.{os.getpid()}"
    writer = None
    try:
        for start in range(0, len(names), chunk):
            part = names[start : start + chunk]
            paths = [os.path.join(root, n) for n in part]
            emb = batch_probs(run.embed_batch, paths, run.preprocess, transforms, run.batch_size, progress=False)[0]
            table = pa.table({"image": part, **{f"e{i}": emb[:, i] for i in range(emb.shape[1])}})
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise UserError(f"{csv_path} has no images to embed")
    os.replace(tmp, parquet_path)
    return len(names)
