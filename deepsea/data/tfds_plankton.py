"""The labelled plankton images as a tensorflow-datasets builder, without TensorFlow.

tensorflow-datasets works without TensorFlow only through ArrayRecord files
read with ``tfds.data_source`` (which grain reads).  Encoding an image array
needs TensorFlow, so the builder stores each file's original bytes (lossless,
and any format PIL reads); TFDS decodes them with PIL on reading.  Images that
are not grayscale are converted to grayscale PNG bytes with PIL first.

    path = build_tfds("../shared/data/ndsb/train", data_dir="~/tensorflow_datasets")
    source = load_tfds(path, "train")       # random access: source[i] -> {"image", "label", "id"}

The manual directory may be a labelled folder ``<class>/<image>`` or the
competition's ``train.zip`` (members ``train/<class>/<image>``).
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterator
from typing import Any

from PIL import Image

from deepsea.data.folders import FolderError, scan_labelled_folder
from deepsea.data.images import IMAGE_EXTENSIONS, BadImageError

__all__ = ["build_tfds", "export_folder", "iter_labelled", "load_tfds"]

NAME = "deepsea_plankton"


def _grayscale_bytes(data: bytes, where: str) -> bytes:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode == "L":
                return data
            buf = io.BytesIO()
            im.convert("L").save(buf, format="PNG")
            return buf.getvalue()
    except Exception as e:  # PIL raises many types for bad data
        raise BadImageError(where, f"corrupt or truncated ({type(e).__name__}: {e})") from None


def iter_labelled(source: str) -> tuple[list[str], Iterator[tuple[str, str, bytes]]]:
    """Class names and an iterator of ``(class, image id, bytes)`` from a labelled folder or a zip."""
    if zipfile.is_zipfile(source):
        zf = zipfile.ZipFile(source)
        members = []
        for info in zf.infolist():
            parts = [p for p in info.filename.split("/") if p]
            if info.is_dir() or len(parts) < 2 or any(p.startswith((".", "__MACOSX")) for p in parts):
                continue
            if os.path.splitext(parts[-1])[1].lower() in IMAGE_EXTENSIONS:
                members.append((parts[-2], info))
        if not members:
            raise FolderError(f"zip {source!r} holds no <class>/<image> members")
        classes = sorted({c for c, _ in members})

        def gen_zip() -> Iterator[tuple[str, str, bytes]]:
            with zf:
                for cls, info in sorted(members, key=lambda m: m[1].filename):
                    name = os.path.basename(info.filename)
                    yield cls, os.path.splitext(name)[0], zf.read(info)

        return classes, gen_zip()
    folder = scan_labelled_folder(source)

    def gen_folder() -> Iterator[tuple[str, str, bytes]]:
        for path, label, image_id in zip(folder.paths, folder.labels, folder.ids, strict=True):
            with open(path, "rb") as f:
                yield folder.classes[int(label)], image_id, f.read()

    return list(folder.classes), gen_folder()


def _builder_class() -> type:
    import tensorflow_datasets as tfds

    registered = getattr(_builder_class, "_cls", None)
    if registered is not None:
        return registered

    class DeepseaPlankton(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """Labelled plankton images (NDSB 2015 layout), stored as their original bytes."""

        VERSION = tfds.core.Version("1.0.0")
        MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass a labelled folder <class>/<image> or the competition's train.zip."

        def __init__(self, *, source: str, skip_bad: bool = False, **kwargs: Any):
            self._source = source
            self._skip_bad = skip_bad
            self._classes, _ = iter_labelled(source)
            self.skipped: list[tuple[str, str]] = []
            super().__init__(**kwargs)

        @property
        def name(self) -> str:  # type: ignore[override]
            return NAME

        def _info(self) -> Any:
            return tfds.core.DatasetInfo(
                builder=self,
                description=__doc__,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(None, None, 1), encoding_format="jpeg"),
                        "label": tfds.features.ClassLabel(names=self._classes),
                        "id": tfds.features.Text(),
                    }
                ),
                supervised_keys=("image", "label"),
            )

        def _split_generators(self, dl_manager: Any) -> Any:
            return {"train": self._generate_examples()}

        def _generate_examples(self) -> Iterator[tuple[str, dict[str, Any]]]:
            _, items = iter_labelled(self._source)
            for cls, image_id, data in items:
                where = f"{self._source}:{cls}/{image_id}"
                try:
                    data = _grayscale_bytes(data, where)
                except BadImageError as e:
                    if not self._skip_bad:
                        raise
                    self.skipped.append((where, e.reason))
                    continue
                yield f"{cls}/{image_id}", {"image": data, "label": cls, "id": image_id}

    DeepseaPlankton.__name__ = NAME
    _builder_class._cls = DeepseaPlankton  # type: ignore[attr-defined]
    return DeepseaPlankton


def build_tfds(source: str, data_dir: str, skip_bad: bool = False) -> str:
    """Prepares the ArrayRecord dataset from ``source``; returns its directory for :func:`load_tfds`."""
    cls = _builder_class()
    builder = cls(
        source=os.fspath(source),
        skip_bad=skip_bad,
        data_dir=os.path.expanduser(data_dir),
        file_format="array_record",
    )
    builder.download_and_prepare()
    return os.fspath(builder.data_dir)


def load_tfds(path: str, split: str = "train") -> Any:
    """A random-access ``tfds`` data source (``len``, ``[i]``; grain can read it) over a built dataset."""
    import tensorflow_datasets as tfds

    return tfds.builder_from_directory(path).as_data_source(split=split)


def export_folder(path: str, out: str, split: str = "train") -> str:
    """Writes a built dataset's images as a labelled folder ``<out>/<class>/<id>.png`` (once: a finished export
    is marked and reused), so that everything that reads image folders reads it; returns ``out``."""
    import numpy as np
    import tensorflow_datasets as tfds

    done = os.path.join(out, ".complete")
    if os.path.exists(done):
        return out
    builder = tfds.builder_from_directory(os.path.expanduser(path))
    names = builder.info.features["label"].names
    source = builder.as_data_source(split=split)
    for name in names:
        os.makedirs(os.path.join(out, name), exist_ok=True)
    for i in range(len(source)):
        ex = source[i]
        image_id = ex["id"].decode() if isinstance(ex["id"], bytes) else str(ex["id"])
        image = np.asarray(ex["image"])[..., 0]
        Image.fromarray(image).save(os.path.join(out, names[int(ex["label"])], f"{image_id}.png"))
    with open(done, "w") as f:
        f.write(f"{len(source)} images from {path}\n")
    return out
