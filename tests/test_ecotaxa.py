"""EcoTaxa exports read as labelled datasets, and predictions written in its import format."""

import csv
import os

import numpy as np
import pytest
from PIL import Image

from deepsea.data import scan_labelled_folder
from deepsea.data.ecotaxa import (
    EcoTaxaError,
    category_name,
    export_labelled_folder,
    folder_name,
    read_ecotaxa,
    write_ecotaxa,
)

CATEGORIES = ["Calanidae", "egg<other", "part/Crustacea"]


def _export(tmp_path, rng, typed_row=False, extra=()):
    """An export like EcoTaxa's: quoted values, images in a sub-folder, validated and other statuses."""
    (tmp_path / "imgs").mkdir(exist_ok=True)
    header = ["object_id", "object_lat", "object_annotation_category", "object_annotation_status", "img_file_name"]
    rows = []
    for i in range(12):
        name = f"imgs/obj_{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (9 + i, 11), dtype=np.uint8)).save(tmp_path / name)
        status = ["validated", "predicted", "dubious", "validated"][i % 4]
        rows.append([f"obj_{i}", "43.65", CATEGORIES[i % 3], status, name])
    rows += list(extra)
    path = tmp_path / "export.tsv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONNUMERIC if not typed_row else csv.QUOTE_MINIMAL)
        w.writerow(header)
        if typed_row:
            w.writerow(["[t]", "[f]", "[t]", "[t]", "[t]"])
        w.writerows(rows)
    return str(path)


@pytest.mark.parametrize("typed_row", [False, True], ids=["export", "import-format"])
def test_reads_validated_objects_by_default(tmp_path, rng, typed_row):
    tsv = _export(tmp_path, rng, typed_row)
    objs = read_ecotaxa(tsv)
    assert objs.object_ids == ("obj_0", "obj_3", "obj_4", "obj_7", "obj_8", "obj_11")
    assert set(objs.statuses) == {"validated"} and objs.categories[:2] == ("Calanidae", "Calanidae")
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in objs.paths)
    assert len(read_ecotaxa(tsv, statuses=None).object_ids) == 12
    assert len(read_ecotaxa(tsv, statuses=("validated", "dubious")).object_ids) == 9


def test_bad_exports_are_named(tmp_path, rng):
    tsv = _export(tmp_path, rng, extra=[["obj_x", "1", "Calanidae", "validated", "imgs/missing.jpg"]])
    with pytest.raises(EcoTaxaError, match=r"not there.*missing\.jpg"):
        read_ecotaxa(tsv)
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\n1\t2\n")
    with pytest.raises(EcoTaxaError, match="no column object_id"):
        read_ecotaxa(str(bad))
    short = tmp_path / "short.tsv"
    short.write_text("object_id\timg_file_name\tobject_annotation_category\nx\ty\n")
    with pytest.raises(EcoTaxaError, match="line 2: 2 fields for 3 columns"):
        read_ecotaxa(str(short))
    with pytest.raises(EcoTaxaError, match="no EcoTaxa TSV"):
        read_ecotaxa(str(tmp_path / "nowhere.tsv"))


def test_an_export_becomes_a_labelled_folder_and_back(tmp_path, rng):
    tsv = _export(tmp_path, rng)
    out = export_labelled_folder(tsv, str(tmp_path / "folder"))
    folder = scan_labelled_folder(out)
    assert [category_name(c) for c in folder.classes] == sorted(CATEGORIES)
    assert "part%2FCrustacea" in folder.classes and len(folder) == 6
    assert all(category_name(folder_name(c)) == c for c in [*CATEGORIES, "100%/x"])
    first = os.path.getmtime(os.path.join(out, ".complete"))
    assert export_labelled_folder(tsv, out) == out and os.path.getmtime(os.path.join(out, ".complete")) == first
    # a changed export is exported again
    _export(tmp_path, rng, extra=[["obj_new", "1", "Calanidae", "validated", "imgs/obj_0.jpg"]])
    assert len(scan_labelled_folder(export_labelled_folder(tsv, out))) == 7


def test_predictions_round_trip_through_the_import_format(tmp_path):
    path = str(tmp_path / "predicted.tsv")
    write_ecotaxa(path, ["a", "b", "c"], ["a.jpg", "b.jpg", "c.jpg"], ["Calanidae", None, "egg<other"], [0.9, 0.3, 0.7])
    with open(path) as f:
        lines = f.read().splitlines()
    assert lines[0].split("\t") == [
        "img_file_name",
        "object_id",
        "object_annotation_category",
        "object_annotation_status",
        "object_deepsea_score",
    ]
    assert lines[1].split("\t") == ["[t]", "[t]", "[t]", "[t]", "[f]"]
    assert lines[3].split("\t") == ["b.jpg", "b", "", "", "0.3"]  # unclassified: left to sort by hand
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        Image.new("L", (3, 3)).save(tmp_path / name)
    back = read_ecotaxa(path, statuses=("predicted",))
    assert back.object_ids == ("a", "c") and back.categories == ("Calanidae", "egg<other")
    with pytest.raises(ValueError, match="one entry per object"):
        write_ecotaxa(path, ["a"], [], [], [])


def test_training_data_can_be_an_ecotaxa_export(tmp_path, rng, monkeypatch):
    from deepsea.configs import base_config
    from deepsea.data.sources import resolve_data

    monkeypatch.setenv("DEEPSEA_DATA", str(tmp_path / "cache"))
    config = base_config()
    config.data.path = "ecotaxa:" + _export(tmp_path, rng)
    folder = scan_labelled_folder(resolve_data(config))
    assert len(folder) == 6 and str(tmp_path / "cache") in folder.root


def test_a_failed_export_leaves_no_entry_and_the_corrected_file_builds(tmp_path, rng):
    """A duplicate object id fails the export; the cache entry is not half-written, so the corrected file
    exports (it failed with shutil.SameFileError until the entry was deleted by hand)."""
    dup = [["obj_0", "1", "Calanidae", "validated", "imgs/obj_1.jpg"]]
    tsv = _export(tmp_path, rng, extra=dup)
    out = str(tmp_path / "folder")
    with pytest.raises(EcoTaxaError, match="object id 'obj_0' appears twice"):
        export_labelled_folder(tsv, out)
    assert not os.path.exists(out) and not [p for p in os.listdir(tmp_path) if p.startswith("folder.tmp")]
    os.makedirs(os.path.join(out, "Calanidae"))  # a half-made entry from an older version is rebuilt too
    os.symlink(tmp_path / "imgs" / "obj_0.jpg", os.path.join(out, "Calanidae", "obj_0.jpg"))
    _export(tmp_path, rng)
    assert len(scan_labelled_folder(export_labelled_folder(tsv, out))) == 6


@pytest.mark.parametrize("encoding", ["utf-8-sig", "latin-1"])
def test_spreadsheet_encodings_are_read(tmp_path, rng, encoding):
    """A byte-order mark (spreadsheets write one) and Latin-1 (older exports) read like plain UTF-8."""
    tsv = _export(tmp_path, rng, extra=[["obj_é", "1", "Calanidae", "validated", "imgs/obj_0.jpg"]])
    with open(tsv, encoding="utf-8", newline="") as f:
        text = f.read()
    with open(tsv, "w", encoding=encoding, newline="") as f:
        f.write(text)
    objs = read_ecotaxa(tsv)
    assert objs.object_ids[0] == "obj_0" and "obj_é" in objs.object_ids
