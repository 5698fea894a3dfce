import os
import zipfile

import numpy as np
import pytest

from deepsea.data import BadImageError, read_image, scan_labelled_folder
from deepsea.data.synthetic import make_synthetic
from deepsea.data.tfds_plankton import build_tfds, load_tfds


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return scan_labelled_folder(make_synthetic(tmp_path_factory.mktemp("syn"), per_class=3, progress=False))


def _check_against_folder(source, folder):
    assert len(source) == len(folder)
    by_id = {i: (p, int(label)) for p, label, i in zip(folder.paths, folder.labels, folder.ids, strict=True)}
    for k in range(len(source)):
        ex = source[k]
        path, label = by_id[ex["id"].decode()]
        assert int(ex["label"]) == label
        np.testing.assert_array_equal(np.asarray(ex["image"])[..., 0], read_image(path))  # lossless


def test_builds_from_a_folder_without_tensorflow(synth, tmp_path):
    import importlib.util

    assert importlib.util.find_spec("tensorflow") is None
    path = build_tfds(synth.root, str(tmp_path / "tfds"))
    _check_against_folder(load_tfds(path), synth)
    import tensorflow_datasets as tfds

    assert tfds.builder_from_directory(path).info.features["label"].names == list(synth.classes)


def test_builds_from_the_competition_zip_and_names_bad_files(synth, tmp_path):
    zpath = tmp_path / "train.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for p in synth.paths:
            z.write(p, "train/" + os.path.relpath(p, synth.root))
        z.writestr("__MACOSX/train/._junk.jpg", b"junk")
    _check_against_folder(load_tfds(build_tfds(str(zpath), str(tmp_path / "z"))), synth)
    with zipfile.ZipFile(zpath, "a") as z:
        z.writestr("train/disc_small/999.jpg", b"not a jpeg")
    with pytest.raises(BadImageError, match=r"train\.zip:disc_small/999"):
        build_tfds(str(zpath), str(tmp_path / "bad"))


def test_training_reads_a_built_dataset_as_its_folder(synth, tmp_path, monkeypatch):
    """``deepsea train --data tfds:DIR``: the built dataset is exported once to a labelled folder, the same
    images (losslessly) under the same classes, and reused on the next call."""
    from deepsea.configs import base_config
    from deepsea.data.sources import resolve_data

    monkeypatch.setenv("DEEPSEA_DATA", str(tmp_path / "cache"))
    path = build_tfds(synth.root, str(tmp_path / "tfds"))
    config = base_config()
    config.data.path = f"tfds:{path}"
    folder = scan_labelled_folder(resolve_data(config))
    assert folder.classes == synth.classes and len(folder) == len(synth)
    by_id = dict(zip(synth.ids, synth.paths, strict=True))
    for p, label in zip(folder.paths, folder.labels, strict=True):
        original = by_id[os.path.splitext(os.path.basename(p))[0]]
        assert os.path.basename(os.path.dirname(original)) == folder.classes[label]
        np.testing.assert_array_equal(read_image(p), read_image(original))
    mtime = os.path.getmtime(folder.paths[0])
    assert resolve_data(config) == folder.root and os.path.getmtime(folder.paths[0]) == mtime  # exported once
    config.data.path = f"tfds:{tmp_path / 'nowhere'}"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        resolve_data(config)
