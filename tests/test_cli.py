"""The command line, run in-process (``deepsea.cli.main``), and one subprocess smoke test of the installed entry."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from deepsea.features import FEATURE_GROUPS
from deepsea.groups import D4
from deepsea.submission import read_submission, write_submission
from deepsea.tools import bench_ops, demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flat_test_folder(tmp_path: Path) -> Path:
    """A flat folder of 12 generated images (one per class) and a stray file: the NDSB test layout."""
    from deepsea.data.synthetic import make_synthetic

    images = make_synthetic(tmp_path / "t", per_class=1, progress=False)
    flat = tmp_path / "flat"
    flat.mkdir()
    for cls in os.listdir(images):
        for f in os.listdir(os.path.join(images, cls)):
            os.rename(os.path.join(images, cls, f), flat / f)
    (flat / "Thumbs.db").write_bytes(b"")
    return flat


def test_the_installed_command_answers_help_fast_without_importing_jax():
    """The one subprocess test: the entry point runs, and --help and a bad argument answer before any
    JAX import."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "deepsea", "--help"], capture_output=True, text=True, timeout=60
    )
    seconds = time.perf_counter() - t0
    assert out.returncode == 0 and "train" in out.stdout and "bench-kernels" in out.stdout
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert "jax" not in imported and "flax" not in imported and "numpy" not in imported
    assert seconds < 5  # typically 0.1 s; generous for a loaded machine
    bad = subprocess.run([sys.executable, "-m", "deepsea", "trian"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "invalid choice: 'trian'" in bad.stderr and "Traceback" not in bad.stderr


def _plain_scores(out: str) -> list[float]:
    """The log loss, accuracy and top-5 of ``deepsea evaluate``'s plain row (calibrated or not)."""
    row = next(line for line in out.splitlines() if line.startswith("plain"))
    return [float(x) for x in row.split()[-3:]]


@pytest.mark.slow
def test_train_evaluate_predict_and_ensemble(cli, tmp_path):
    run = str(tmp_path / "run")
    assert "best validation log loss" in cli("train", "synthetic", "--small", "--workdir", run)
    out = cli("evaluate", "--workdir", run, "--tta", "2")
    assert "plain" in out and "TTA 2" in out and os.path.exists(os.path.join(run, "confusion.png"))
    assert "TenCrop" in cli("evaluate", "--workdir", run, "--tta", "tencrop")
    assert "tencrop" in cli("evaluate", "--workdir", run, "--tta", "ten", rc=2)
    plain = _plain_scores(out)
    # the C4 run averaged over D4 (its mirror images are new copies): other numbers; over C4: the same (invariant)
    mirrored = _plain_scores(cli("evaluate", "--workdir", run, "--orbit-average", "d4"))
    assert mirrored != plain and abs(mirrored[0] - plain[0]) < 0.5
    np.testing.assert_allclose(_plain_scores(cli("evaluate", "--workdir", run, "--orbit-average", "c4")), plain,
                               atol=1e-4)  # fmt: skip
    flat = _flat_test_folder(tmp_path)
    cli("predict", "--workdir", run, "--images", str(flat), "--out", str(tmp_path / "sub.csv"))
    lines = (tmp_path / "sub.csv").read_text().splitlines()
    classes = json.loads(Path(run, "classes.json").read_text())
    assert lines[0].split(",") == ["image", *classes] and len(lines) == 1 + 12
    for line in lines[1:]:
        name, *probs = line.split(",")
        assert name.endswith(".jpg") and abs(sum(map(float, probs)) - 1) < 1e-4
    cli("predict", "--workdir", run, "--images", str(flat), "--out", str(tmp_path / "tta.csv"), "--tta", "3")
    assert len((tmp_path / "tta.csv").read_text().splitlines()) == 13
    # --orbit-average in prediction and export: over C4 the C4 network's own predictions, over D4 others, the
    # same from the run and from a model exported with that average
    probs = {}
    for orbit in ("c4", "d4"):
        csv = tmp_path / f"orbit_{orbit}.csv"
        cli("predict", "--workdir", run, "--images", str(flat), "--out", str(csv), "--orbit-average", orbit)
        probs[orbit] = read_submission(str(csv))[2]
    np.testing.assert_allclose(probs["c4"], read_submission(str(tmp_path / "sub.csv"))[2], atol=1e-5)
    assert np.abs(probs["d4"] - probs["c4"]).max() > 1e-3
    exported = tmp_path / "exported_d4"
    cli("export", "--workdir", run, "--out", str(exported), "--orbit-average", "d4", "--platforms", "cpu")
    cli("predict", "--model", str(exported), "--images", str(flat), "--out", str(tmp_path / "m_d4.csv"))
    np.testing.assert_allclose(read_submission(str(tmp_path / "m_d4.csv"))[2], probs["d4"], atol=1e-5)
    assert "its orbit average was fixed" in cli(
        "predict", "--model", str(exported), "--images", str(flat), "--out", "z.csv", "--orbit-average", "c4", rc=2
    )
    out = cli("ensemble", run, run, "--images", str(flat), "--out", str(tmp_path / "ens.csv"), "--folds", "2")
    assert "blend of" in out and (tmp_path / "ens.csv").exists()
    # --uniform keeps every run (no selection), on one split as on several
    scores = tmp_path / "scores" / "ens.json"
    out = cli("ensemble", run, run, "--uniform", "--scores", str(scores))
    assert f"blend of {[run, run]} with weights [0.5, 0.5]" in out
    saved = json.loads(scores.read_text())  # a run blended with itself scores as the run
    assert saved["runs"] == [run, run] and saved["uniform"] and saved["weights"] == [0.5, 0.5]
    assert abs(saved["validation"]["log_loss"] - saved["single_log_loss"][0]) < 1e-6
    cli("predict", "--workdir", run, "--images", str(flat), "--out", str(tmp_path / "top.csv"), "--top", "3")
    header, first = (tmp_path / "top.csv").read_text().splitlines()[:2]
    assert header.split(",")[-6:] == ["top1", "top1_prob", "top2", "top2_prob", "top3", "top3_prob"]
    cells = first.split(",")
    probs = dict(zip(classes, map(float, cells[1 : 1 + len(classes)]), strict=True))
    ranked = sorted(probs, key=lambda c: -probs[c])[:3]
    assert cells[-6::2] == ranked and [float(p) for p in cells[-5::2]] == [probs[c] for c in ranked]
    assert read_submission(str(tmp_path / "top.csv"))[1] == classes
    half = _plain_scores(cli("evaluate", "--workdir", run, "--precision", "bfloat16"))
    assert half[0] != plain[0] and abs(half[0] - plain[0]) < 0.05  # bfloat16 rounding: close, not equal
    # calibration and thresholds, stored in the run and used by evaluate and predict
    out = cli("calibrate", "--workdir", run)
    assert "T = " in out and "ECE" in out and Path(run, "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads(Path(run, "calibration.json").read_text())["tta"] == 0
    assert "plain calibrated" in cli("evaluate", "--workdir", run)
    assert "has no thresholds" in cli(
        "predict", "--workdir", run, "--images", str(flat), "--out", str(tmp_path / "t.csv"), "--thresholds", rc=2
    )
    assert "cross-validated" in cli("thresholds", "--workdir", run, "--target-precision", "0.5")
    out = cli(
        "predict", "--workdir", run, "--images", str(flat), "--out", str(tmp_path / "t.csv"), "--thresholds",
        "--ecotaxa", str(tmp_path / "eco.tsv"),
    )  # fmt: skip
    assert "labelled at target precision 0.5" in out and "EcoTaxa import" in out
    eco = (tmp_path / "eco.tsv").read_text().splitlines()
    assert eco[1] == "[t]\t[t]\t[t]\t[t]\t[f]" and len(eco) == 2 + 12
    rows = (tmp_path / "t.csv").read_text().splitlines()
    assert rows[0].split(",")[-1] == "label" and all(r.split(",")[-1] in [*classes, "unclassified"] for r in rows[1:])
    assert "were chosen for --tta 0" in cli(
        "predict",
        "--workdir",
        run,
        "--images",
        str(flat),
        "--out",
        str(tmp_path / "t2.csv"),
        "--thresholds",
        "--tta",
        "2",
        rc=2,
    )
    # a corrupt image: an error naming it, or skipped and listed when asked
    (flat / "broken.jpg").write_bytes(b"not a jpeg")
    out = cli("predict", "--workdir", run, "--images", str(flat), "--out", str(tmp_path / "x.csv"), rc=2)
    assert "broken.jpg" in out and "Traceback" not in out
    out = cli("predict", "--workdir", run, "--images", str(flat), "--out", str(tmp_path / "x.csv"), "--skip-bad-images")
    assert "skipped" in out and "broken.jpg" in out
    assert len((tmp_path / "x.csv").read_text().splitlines()) == 13
    out = cli("predict", "--workdir", run, "--images", str(tmp_path / "nowhere"), "--out", "y.csv", rc=2)
    assert "nowhere" in out
    assert "neither a run (config.json)" in cli("evaluate", "--workdir", str(tmp_path / "flat"), rc=2)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A small synthetic run with its calibration and thresholds, and a flat folder of new images: shared by the
    tests below (each xdist worker trains its own)."""
    from deepsea.cli import main

    base = tmp_path_factory.mktemp("trained")
    run = str(base / "run")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        mp.setenv("DEEPSEA_DATA", str(tmp_path_factory.getbasetemp() / "deepsea-data"))
        main(["train", "synthetic", "--small", "--workdir", run])
        main(["calibrate", "--workdir", run])
        main(["thresholds", "--workdir", run, "--target-precision", "0.5"])
    return run, _flat_test_folder(base)


def test_students_learn_from_pseudo_labels_and_a_teacher(cli, trained_run, tmp_path):
    """deepsea pseudolabel: the run's predictions for a folder (those predict writes), then students trained on
    them as pseudo-labels and, for the training images, as a teacher; and the errors for what does not fit."""
    import numpy as np

    from deepsea.teachers import load_teacher_predictions

    run, flat = trained_run
    pseudo = str(tmp_path / "pseudo.npz")
    out = cli("pseudolabel", run, "--images", str(flat), "--out", pseudo)
    assert "12 images x 12 classes from 1 teacher(s)" in out
    tp = load_teacher_predictions(pseudo)
    cli("predict", "--workdir", run, "--images", str(flat), "--out", str(tmp_path / "plain.csv"))
    names, classes, probs = read_submission(str(tmp_path / "plain.csv"))
    assert list(tp.images) == names and list(tp.classes) == classes
    np.testing.assert_allclose(tp.probs, probs, atol=1e-6)  # calibrated like predict's (calibration.json)
    split = json.loads(Path(run, "split.json").read_text())
    teacher = str(tmp_path / "teacher.npz")
    cli("pseudolabel", run, run, "--images", split["root"], "--out", teacher, "--weights", "uniform")
    student = ["synthetic", "--small", "--set", "train.steps=2"]
    out = cli("train", *student, "--set", f"data.pseudo_labels={pseudo}", "--workdir", str(tmp_path / "s1"))
    assert "best validation" in out
    out = cli("train", *student, "--set", f"data.distill={teacher}", "--workdir", str(tmp_path / "s2"))
    assert "best validation" in out
    assert "neither a run (config.json)" in cli("pseudolabel", str(flat), "--images", str(flat), "--out", pseudo, rc=2)
    leak = str(tmp_path / "leak.npz")
    cli("pseudolabel", run, "--images", split["root"], "--out", leak)
    out = cli("train", *student, "--set", f"data.pseudo_labels={leak}", "--workdir", str(tmp_path / "s3"), rc=2)
    assert "validation image(s)" in out
    assert "no predictions for" in cli(
        "train", *student, "--set", f"data.distill={pseudo}", "--workdir", str(tmp_path / "s4"), rc=2
    )
    import dataclasses

    from deepsea.teachers import save_teacher_predictions

    renamed = dataclasses.replace(tp, classes=(*tp.classes[:-1], "another"))
    other = save_teacher_predictions(str(tmp_path / "other.npz"), renamed)
    out = cli("train", *student, "--set", f"data.pseudo_labels={other}", "--workdir", str(tmp_path / "s5"), rc=2)
    assert "other classes than this run's" in out


def test_scoring_on_a_held_aside_folder_and_late_fusion(cli, trained_run, tmp_path):
    """evaluate --data: the validation split's scores when the folder is that split; deepsea fuse: cross-validated
    on the validation split, evaluated and predicting like a run; unknown classes are an error."""
    run, flat = trained_run
    split = json.loads(Path(run, "split.json").read_text())
    held = tmp_path / "held"
    for rel in split["validation"]:
        (held / os.path.dirname(rel)).mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.join(split["root"], rel), held / rel)
    out = cli("evaluate", "--workdir", run, "--per-class")
    plain = out.splitlines()[2]
    assert "rarest third (4 classes, by training images)" in out
    rows = Path(run, "per_class.csv").read_text().splitlines()
    assert rows[0] == "class,training_images,validation_images,recall" and len(rows) == 13
    assert sum(int(r.split(",")[1]) for r in rows[1:]) == len(split["train"])
    out = cli("evaluate", "--workdir", run, "--data", str(held))
    assert f"images of {held}" in out and out.splitlines()[2] == plain
    fused = str(tmp_path / "fused")
    assert "expected some of" in cli("fuse", run, "--out", fused, "--features", "shape,texture", rc=2)
    scores = tmp_path / "fused_scores.json"
    out = cli("fuse", run, "--out", fused, "--restarts", "2", "--steps", "30", "--features", "lbp,hu", "--scores",
              str(scores))  # fmt: skip
    assert "convnets" in out and "fused (cross-validated)" in out
    fused_on = json.loads(Path(fused, "fused.json").read_text())["features"]
    assert fused_on == [*FEATURE_GROUPS["hu"], *FEATURE_GROUPS["lbp"]]  # FEATURE_NAMES' order
    saved = json.loads(scores.read_text())  # what deepsea claims reads as a measure
    cv_row = next(line.split() for line in out.splitlines() if line.startswith("fused (cross-validated)"))
    assert f"{saved['validation']['log_loss']:.4f}" in cv_row and saved["features"] == ["lbp", "hu"]
    assert "cross_validated" in cli("evaluate", "--workdir", fused)
    out = cli("evaluate", "--workdir", fused, "--data", str(held))
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith(("fused ", "convnets"))}
    assert set(rows) == {"fused", "convnets"} and rows["convnets"] == plain.split()[2:]
    cli("predict", "--workdir", fused, "--images", str(flat), "--out", str(tmp_path / "fused.csv"))
    names = read_submission(str(tmp_path / "fused.csv"))[0]
    assert sorted(names) == names and len(names) == 12
    # a fused run is a predictor like any other: it streams, takes thresholds chosen for it on held-aside images
    assert "has no thresholds" in cli(
        "predict", "--workdir", fused, "--images", str(flat), "--out", "f.csv", "--thresholds", rc=2
    )
    assert "no validation split of its own" in cli("thresholds", "--workdir", fused, "--target-precision", "0.1", rc=2)
    cli("thresholds", "--workdir", fused, "--target-precision", "0.1", "--data", str(held))
    cli("predict", "--workdir", fused, "--images", str(flat), "--out", str(tmp_path / "f.csv"), "--thresholds")
    header = (tmp_path / "f.csv").read_text().splitlines()[0].split(",")
    assert header[-1] == "label" and read_submission(str(tmp_path / "f.csv"))[0] == names
    fixed = cli("predict", "--workdir", fused, "--images", str(flat), "--out", "g.csv", "--tta", "2", rc=2)
    assert "fused with" in fixed
    (held / "zzz_unknown").mkdir()
    os.symlink(os.path.join(split["root"], split["validation"][0]), held / "zzz_unknown" / "a.jpg")
    assert "not trained on: ['zzz_unknown']" in cli("evaluate", "--workdir", run, "--data", str(held), rc=2)


def test_abundance_of_samples_from_folders_and_from_a_predictions_csv(cli, trained_run, tmp_path):
    """deepsea abundance: a sub-folder per sample (predicted first) or a predictions CSV with an image,sample
    table; counts per method that add up to each sample, intervals around them, volumes, a plot; and the errors."""
    import csv
    import shutil

    run, flat = trained_run
    cruise = tmp_path / "cruise"
    images = sorted(f for f in os.listdir(flat) if f.endswith(".jpg"))
    for i, f in enumerate(images):
        (cruise / f"st{i % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(flat / f, cruise / f"st{i % 2}" / f)
    (tmp_path / "vol.csv").write_text("sample,volume\nst0,2.0\nst1,4.0\n")
    out_csv, png = str(tmp_path / "ab.csv"), str(tmp_path / "ab.png")
    args = ["--by", "folder", "--volumes", str(tmp_path / "vol.csv"), "--bootstrap", "5", "--plot", png]
    out = cli("abundance", "--workdir", run, "--images", str(cruise), "--out", out_csv, *args)
    assert "st0: 6 images" in out and "st1: 6 images" in out and os.path.getsize(png) > 0
    rows = list(csv.DictReader(Path(out_csv).read_text().splitlines()))
    assert len(rows) == 2 * 12 * 5  # samples x classes x methods
    for sample, volume in (("st0", 2.0), ("st1", 4.0)):
        for m in ("cc", "pcc", "acc", "pacc", "em"):
            mine = [r for r in rows if r["sample"] == sample and r["method"] == m]
            assert sum(float(r["count"]) for r in mine) == pytest.approx(6, abs=1e-3)
            assert all(0 <= float(r["low"]) <= float(r["high"]) <= 6 + 1e-3 for r in mine)
            per_volume = [pytest.approx(float(r["count"]) / volume, rel=1e-3, abs=1e-4) for r in mine]
            assert [float(r["per_volume"]) for r in mine] == per_volume
    preds = str(tmp_path / "p.csv")
    cli("predict", "--workdir", run, "--images", str(flat), "--out", preds)
    names, _, _ = read_submission(preds)
    (tmp_path / "g.csv").write_text("image,sample\n" + "".join(f"{n},{'ab'[i % 2]}\n" for i, n in enumerate(names)))
    out = cli("abundance", "--workdir", run, "--predictions", preds, "--groups", str(tmp_path / "g.csv"),
              "--bootstrap", "0", "--methods", "cc,em", "--volume", "1", "--out", out_csv, rc=2)  # fmt: skip
    assert "--volume is one sample's; these images are 2 samples" in out
    out = cli("abundance", "--workdir", run, "--predictions", preds, "--groups", str(tmp_path / "g.csv"),
              "--bootstrap", "0", "--methods", "cc,em", "--out", out_csv)  # fmt: skip
    assert "a: 6 images" in out and "b: 6 images" in out
    (tmp_path / "g.csv").write_text("image,sample\n" + f"{names[0]},a\n")
    out = cli("abundance", "--workdir", run, "--predictions", preds, "--groups", str(tmp_path / "g.csv"),
              "--out", out_csv, rc=2)  # fmt: skip
    assert "g.csv names no sample for 11 image(s)" in out
    other = str(tmp_path / "other.csv")
    write_submission(other, names, [f"c{i}" for i in range(12)], np.full((12, 12), 1 / 12))
    assert "has other classes than" in cli(
        "abundance", "--workdir", run, "--predictions", other, "--out", out_csv, rc=2
    )
    assert "--pixel-size applies to --images" in cli(
        "abundance", "--workdir", run, "--predictions", preds, "--pixel-size", "2", "--out", out_csv, rc=2
    )
    (tmp_path / "g.csv").write_text("image,sample\n" + "".join(f"{n},{'ab'[i % 2]}\n" for i, n in enumerate(names)))
    (tmp_path / "v.csv").write_text("sample,volume\na,1.0\n")
    assert "gives no volume for sample(s) ['b']" in cli(
        "abundance", "--workdir", run, "--predictions", preds, "--groups", str(tmp_path / "g.csv"), "--volumes",
        str(tmp_path / "v.csv"), "--out", out_csv, rc=2,
    )  # fmt: skip
    assert "unknown abundance method 'median'" in cli(
        "abundance", "--workdir", run, "--predictions", preds, "--methods", "cc,median", "--out", out_csv, rc=2
    )


def test_ifcb_class_scores_and_embeddings_beside_the_predictions(cli, trained_run, tmp_path):
    """predict --ifcb-scores: one <bin>_class.h5 per bin in the IFCB dashboard's v3 layout, read back as its reader
    does; --embeddings: the classifier's input per image, which the classifier maps to the run's probabilities."""
    import shutil

    import h5py
    import pyarrow.parquet as pq

    from deepsea.predictor import predictor_probs
    from deepsea.runs import restore_run

    run, flat = trained_run
    ifcb = tmp_path / "ifcb"
    ifcb.mkdir()
    images = sorted(f for f in os.listdir(flat) if f.endswith(".jpg"))
    bins = ["D20240101T120000_IFCB001", "D20240101T140000_IFCB001"]
    for i, f in enumerate(images):
        shutil.copy(flat / f, ifcb / f"{bins[i // 6]}_{i % 6 + 1:05d}.jpg")
    preds, scores, emb = str(tmp_path / "p.csv"), str(tmp_path / "scores"), str(tmp_path / "emb.parquet")
    out = cli("predict", "--workdir", run, "--images", str(ifcb), "--out", preds, "--ifcb-scores", scores,
              "--embeddings", emb)  # fmt: skip
    assert "wrote 2 IFCB class-score file(s)" in out and "the embeddings of 12 images" in out
    names, classes, probs = read_submission(preds)
    for b, bin_id in enumerate(bins):
        with h5py.File(os.path.join(scores, f"{bin_id}_class.h5"), "r") as f:  # as the dashboard reads v3
            got = f["output_scores"][:]
            labels = [label.decode("ascii") for label in f["class_labels"][:]]
            rois = f["roi_numbers"][:]
        assert labels == classes and list(rois) == [1, 2, 3, 4, 5, 6]
        np.testing.assert_allclose(got, probs[6 * b : 6 * b + 6], rtol=1e-6)
    table = pq.read_table(emb).to_pandas()
    assert list(table["image"]) == names
    features = table.drop(columns="image").to_numpy(np.float64)
    r = restore_run(run)
    head = r.variables["params"]["logits"]
    logits = features @ np.asarray(head["kernel"], np.float64) + np.asarray(head["bias"], np.float64)
    direct = np.exp(logits - logits.max(1, keepdims=True))
    direct /= direct.sum(1, keepdims=True)
    expected = predictor_probs(r, [str(ifcb / n) for n in names], calibrated=False, cache=False, progress=False)
    np.testing.assert_allclose(direct, expected, atol=1e-5)
    out = cli("predict", "--workdir", run, "--images", str(flat), "--out", preds, "--ifcb-scores", scores, rc=2)
    assert "is not named as an IFCB ROI" in out


def test_onnx_export_predicts_like_its_run_at_batch_sizes_it_never_saw(cli, trained_run, tmp_path):
    """export --format onnx, then predict --model with onnxruntime: the run's predictions (to 1e-4) with its
    classes, calibration and thresholds; batches of 3 and 7 images straight through the session too."""
    from deepsea.data import AugmentParams, tta_batches
    from deepsea.data.sources import list_images
    from deepsea.export import load_model
    from deepsea.runs import restore_run

    run, flat = trained_run
    model_dir = tmp_path / "onnx"
    assert "--platforms is for --format jax" in cli(
        "export", "--workdir", run, "--out", str(model_dir), "--format", "onnx", "--platforms", "cuda", rc=2
    )
    out = cli("export", "--workdir", run, "--out", str(model_dir), "--format", "onnx")
    assert "predict with: deepsea predict --model" in out and (model_dir / "model.onnx").is_file()
    args = ("--images", str(flat), "--thresholds")
    cli("predict", "--workdir", run, "--out", str(tmp_path / "r.csv"), *args)
    cli("predict", "--model", str(model_dir), "--out", str(tmp_path / "m.csv"), *args)
    names_r, classes, probs_r = read_submission(str(tmp_path / "r.csv"))
    names_m, classes_m, probs_m = read_submission(str(tmp_path / "m.csv"))
    assert (names_m, classes_m) == (names_r, classes)
    np.testing.assert_allclose(probs_m, probs_r, atol=1e-4)
    model, restored = load_model(str(model_dir)), restore_run(run)
    assert model.meta["runtime"] == "onnx" and model.classes == restored.classes
    paths = [str(flat / n) for n in list_images(str(flat))]
    for size in (3, 7):
        (_, _, batch), *_ = tta_batches(paths[:size], model.preprocess, [AugmentParams()], batch_size=size)
        batch = {k: v for k, v in batch.items() if k != "mask"}
        np.testing.assert_allclose(model.predict_batch(batch), restored.predict_batch(batch), atol=1e-4)
    (model_dir / "model.onnx").write_bytes(b"not onnx")
    assert "not a readable ONNX model" in cli("evaluate", "--workdir", str(model_dir), "--data", str(flat), rc=2)


def test_exported_model_predicts_like_its_run(cli, trained_run, tmp_path):
    """deepsea export, then predict --model: the same CSV as the run (with its calibration and thresholds), and
    bitwise the run's own network computed with XLA's operations (what the export serializes)."""
    import dataclasses
    import subprocess
    import sys

    import numpy as np

    from deepsea.data import AugmentParams, tta_batches
    from deepsea.data.sources import list_images
    from deepsea.export import load_model
    from deepsea.models import build_model
    from deepsea.runs import restore_run

    run, flat = trained_run
    model_dir = tmp_path / "exported"
    assert "predict with: deepsea predict --model" in cli("export", "--workdir", run, "--out", str(model_dir))
    assert "unknown platform" in cli("export", "--workdir", run, "--out", str(model_dir), "--platforms", "gpu", rc=2)
    args = ("--images", str(flat), "--thresholds", "--top", "2")
    cli("predict", "--workdir", run, "--out", str(tmp_path / "r.csv"), *args)
    cli("predict", "--model", str(model_dir), "--out", str(tmp_path / "m.csv"), *args)
    names_r, classes, probs_r = read_submission(str(tmp_path / "r.csv"))
    names_m, classes_m, probs_m = read_submission(str(tmp_path / "m.csv"))
    assert (names_m, classes_m) == (names_r, classes)
    np.testing.assert_allclose(probs_m, probs_r, atol=1e-5)  # oneDNN and XLA sum the convolutions differently
    labels = lambda p: [r.split(",")[-5] for r in p.read_text().splitlines()[1:]]  # noqa: E731
    assert labels(tmp_path / "m.csv") == labels(tmp_path / "r.csv")
    assert "an exported model: its precision was fixed" in cli(
        "predict", "--model", str(model_dir), "--out", "z.csv", "--images", str(flat), "--precision", "float32", rc=2
    )
    assert "neither a run" in cli("predict", "--model", str(flat), "--out", "z.csv", "--images", str(flat), rc=2)
    (model_dir / "params.npz").rename(model_dir / "p.npz")
    assert "params.npz is missing" in cli("evaluate", "--workdir", str(model_dir), rc=2)
    (model_dir / "p.npz").rename(model_dir / "params.npz")
    # an exported model evaluates and calibrates like a run, on a labelled folder (it keeps no validation split)
    assert "no validation split of its own" in cli("evaluate", "--workdir", str(model_dir), rc=2)
    data = json.loads(Path(run, "split.json").read_text())["root"]
    score = lambda out: [float(x) for x in out.splitlines()[2].split()[-3:]]  # noqa: E731
    by_run = score(cli("evaluate", "--workdir", run, "--data", data))  # the run's calibration applies
    by_model = score(cli("evaluate", "--workdir", str(model_dir), "--data", data))
    np.testing.assert_allclose(by_model, by_run, atol=1e-4)
    cli("calibrate", "--workdir", str(model_dir), "--data", data)
    assert (model_dir / "calibration.json").exists() and (model_dir / "reliability.png").exists()
    refit = score(cli("evaluate", "--workdir", str(model_dir), "--data", data))
    assert refit[0] <= by_model[0] + 1e-6  # fitted on these very images: no worse there
    # it is a teacher and an ensemble member like a run
    cli("pseudolabel", str(model_dir), "--images", str(flat), "--out", str(tmp_path / "pl.npz"))
    with np.load(tmp_path / "pl.npz") as f:
        assert f["probs"].shape == (12, len(classes))
    assert "--uniform" in cli("ensemble", run, str(model_dir), rc=2)  # no shared split to fit weights on
    cli("ensemble", run, str(model_dir), "--uniform", "--images", str(flat), "--out", str(tmp_path / "e.csv"))
    assert read_submission(str(tmp_path / "e.csv"))[0] == names_r
    restored = restore_run(run)
    mc = restored.config.model
    mc.conv_impl, mc.max_pool_impl, mc.dense_impl = "xla", "slices", "xla"
    reference = dataclasses.replace(restored, model=build_model(mc, len(restored.classes)))
    from deepsea.backends import onednn
    from deepsea.errors import UserError

    exported, portable = load_model(str(model_dir)), load_model(str(model_dir), onednn=False)
    assert exported.module == ("model_onednn.jax" if onednn.available() else "model.jax")
    assert portable.module == "model.jax" and portable.cache_key != exported.cache_key
    from deepsea.predictor import Predictor

    assert isinstance(exported, Predictor) and isinstance(restored, Predictor)  # the protocol, every member
    paths = [str(flat / r) for r in list_images(str(flat))]
    for _, _, batch in tta_batches(paths, exported.preprocess, [AugmentParams()], 5):  # any batch size
        # model.jax is the network with XLA's operations, model_onednn.jax the run's own (oneDNN's)
        np.testing.assert_array_equal(portable.predict_batch(batch), reference.predict_batch(batch))
        np.testing.assert_array_equal(exported.predict_batch(batch), restored.predict_batch(batch))
    meta = json.loads((model_dir / "model.json").read_text())
    (model_dir / "model.json").write_text(
        json.dumps({**meta, "onednn_module": {**meta["onednn_module"], "targets": ["deepsea_conv_v9"]}})
    )
    with pytest.raises(UserError, match=r"calls oneDNN handlers this deepsea does not have: \['deepsea_conv_v9'\]"):
        load_model(str(model_dir), onednn=True)
    assert load_model(str(model_dir)).module == "model.jax"  # where the oneDNN module cannot run: the portable one
    (model_dir / "model.json").write_text(json.dumps(meta))
    # loading and predicting imports neither the models nor Flax or Optax
    code = (
        "import sys; from deepsea.export import load_model; import numpy as np; "
        f"m = load_model({str(model_dir)!r}); "
        "s = m.preprocess.size; p = m.predict_batch({'image': np.zeros((3, s, s, 1)), "
        "'raw_size': np.ones((3, 2))}); "
        "assert p.shape == (3, len(m.classes)), p.shape; "
        f"assert m.module == {exported.module!r}, m.module; "
        "bad = [k for k in ('flax', 'optax', 'deepsea.models', 'deepsea.step', 'deepsea.train') if k in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_bag_trains_copies_on_different_splits_and_averages_them(cli, tmp_path):
    prefix = str(tmp_path / "bag")
    out = cli("bag", "synthetic", "--small", "-k", "2", "--workdir", prefix, "--set", "train.steps=2")
    runs = [f"{prefix}_0", f"{prefix}_1"]
    assert "--uniform" in out and all(r in out for r in runs)
    splits = [json.loads(Path(r, "split.json").read_text()) for r in runs]
    assert splits[0]["validation"] != splits[1]["validation"]
    assert [json.loads(Path(r, "config.json").read_text())["data"]["split_seed"] for r in runs] == [0, 1]
    # different splits: blend weights cannot be fitted, averaging can
    assert "--uniform" in cli("ensemble", *runs, rc=2)
    flat = _flat_test_folder(tmp_path)
    cli("ensemble", *runs, "--uniform", "--images", str(flat), "--out", str(tmp_path / "bag.csv"))
    assert "share a validation split" in cli("ensemble", *runs, "--uniform", "--scores", str(tmp_path / "s.json"), rc=2)
    assert len((tmp_path / "bag.csv").read_text().splitlines()) == 13
    # the bag as one member of a fitted blend, scored out of bag on the first run's split
    out = cli(
        "ensemble", runs[0], "+".join(runs), "--folds", "2", "--images", str(flat), "--out", str(tmp_path / "b.csv")
    )
    assert f"{'+'.join(runs)}" in out and "blend of" in out


def test_every_error_is_a_message_not_a_traceback(cli, tmp_path):
    assert "unknown config key 'model.dropuot'" in cli("params", "convroll4", "--set", "model.dropuot=0.1", rc=2)
    assert "model.width" in cli("params", "convroll4", "--set", "model.width=wide", rc=2)
    assert "no experiment module" in cli("train", "nonexistent", rc=2)
    assert "does not exist" in cli("train", "synthetic", "--small", "--data", str(tmp_path / "nowhere"), rc=2)
    assert "nowhere" in cli("preview", "--data", str(tmp_path / "nowhere"), rc=2)
    assert "--copies must be at least 1" in cli("bag", "synthetic", "-k", "0", rc=2)
    assert "unrecognized arguments: --bogus" in cli("info", "--bogus", rc=2)


@pytest.mark.parametrize(
    "experiment", sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "experiments")) if f.endswith(".py"))
)
def test_params_for_every_experiment(cli, experiment):
    out = cli("params", experiment)
    lines = out.strip().splitlines()
    total = int(next(ln for ln in lines if ln.startswith("total")).split()[-1].replace(",", ""))
    assert total > 0
    costs = re.findall(r"([\d,.]+) (?:training|prediction)", lines[-1])
    train, step, predict = (float(x.replace(",", "")) for x in costs)
    assert 0 < train and step == pytest.approx(3 * train, rel=1e-3) and predict >= train
    if experiment == "convroll4":
        assert total == 15_600_105  # the published table


@pytest.mark.parametrize("model", ["resnet50", "resnext50", "plain", "rollnet"])  # cp8, multiscale: experiments
def test_params_for_every_model(cli, model):
    out = cli("params", "convroll4", "--set", f"model.name={model}", "--set", "model.width=0.25")
    assert out.strip().splitlines()[-2].startswith("total") and "MFLOP per image" in out


def test_a_model_that_does_not_fit_its_inputs_is_a_message(cli):
    out = cli("params", "convroll4", "--set", "model.name=cp8", rc=2)
    assert "2 rotated inputs need a channel count divisible by 2" in out and "Traceback" not in out


def test_info_names_versions_and_backends(cli):
    out = cli("info")
    for key in ("jax: 0.10.2", "flax:", "optax:", "onednn-cpu-gomp:", "cpu:", "avx512_bf16", "devices: cpu:0"):
        assert key in out, key
    assert "convolution: oneDNN" in out or "convolution: XLA (" in out
    assert "pallas kernels: interpret mode" in out and "XLA_FLAGS:" in out


@pytest.mark.slow
def test_make_synthetic_preview_and_bench_data(cli, tmp_path):
    cli("make-synthetic", str(tmp_path / "syn"), "--per-class", "6")
    assert len(os.listdir(tmp_path / "syn")) == 12
    png = tmp_path / "grid.png"
    cli("preview", "--data", str(tmp_path / "syn"), "--out", str(png), "--images", "3", "--augmented", "2")
    assert png.read_bytes()[:4] == b"\x89PNG"
    data = ["--data", str(tmp_path / "syn"), "--batches", "2", "--steps", "0"]
    out = cli("bench-data", *data, "--loader-workers", "1")
    assert "95x95 (largest side 85)" in out and '"size_47"' in out and "1 worker " in out
    assert json.loads(out.strip().splitlines()[-1])["size_47"].keys() == {"in_process", "workers_1"}
    for bad in ("0", "1,x"):
        refused = cli("bench-data", *data, "--loader-workers", bad, rc=2)
        assert f"--loader-workers: expected positive worker counts, e.g. 1,2; got {bad!r}" in refused


@pytest.mark.slow
def test_demo_writes_its_views_and_its_results_are_exactly_invariant(cli, tmp_path):
    out = cli("demo", "--size", "47", "--width", "0.25", "--out", str(tmp_path))
    assert (tmp_path / "views.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [line.split() for line in out.splitlines() if "4 convroll4" in line]
    table = {row[0]: [float(v) for v in row[2:]] for row in rows}
    assert sorted(table) == ["C4", "D4"] and all(len(row) == 8 for row in table.values())
    assert max(table["D4"]) <= 1e-5  # every rotation and mirror image
    assert max(table["C4"][:4]) <= 1e-5  # every rotation (columns e, r, r2, r3)
    # the organism is chiral, so the cyclic net tells a mirror image apart
    assert min(table["C4"][4:]) > 1e-3


def test_organism_has_no_symmetry_of_its_own():
    img = demo.draw_organism(47)
    assert img.shape == (47, 47) and img.dtype.name == "float32"
    for a in range(1, 8):
        assert not (D4.act(a, img, (0, 1)) == img).all()


def test_bench_ops_smoke(capsys):
    rows = bench_ops.run(batch=1, repeats=1)
    assert [r["op"] for r in rows][:2] == ["slice 95x95x1", "conv_roll 47x47x16"]
    for r in rows:
        assert r["op_fwd_ms"] > 0 and r["next_fwdbwd_ms"] > 0 and r["ratio_fwdbwd"] > 0
    print(bench_ops.format_table(rows))
    assert "conv_roll 5x5x128" in capsys.readouterr().out


def test_flop_count_is_analytic():
    import jax.numpy as jnp

    from deepsea.tools.bench import count_flops

    x, w = jnp.zeros((2, 7, 7, 3)), jnp.zeros((3, 3, 3, 5))
    conv = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    assert count_flops(conv, x, w) == 2 * 2 * 7 * 7 * 5 * 3 * 3 * 3
    assert count_flops(lambda a, b: a @ b, jnp.zeros((4, 6)), jnp.zeros((6, 8))) == 2 * 4 * 6 * 8
    assert count_flops(jax.jit(lambda a, b: a @ b), jnp.zeros((4, 6)), jnp.zeros((6, 8))) == 2 * 4 * 6 * 8


@pytest.mark.slow
def test_bench_training_step(cli, tmp_path):
    out_path = tmp_path / "bench.jsonl"
    out = cli(
        "bench", "experiments/synthetic.py", "--small", "--batch", "4", "--steps", "1", "--rounds", "2",
        "--compare", "model.conv_impl=xla", "--out", str(out_path), "--plot", str(tmp_path / "bench.png"),
    )  # fmt: skip
    lines = [json.loads(s) for s in out.strip().splitlines() if s.startswith("{")]
    assert [(rec.get("round"), rec.get("variant")) for rec in lines[:4]] == [
        (0, None),
        (0, "model.conv_impl=xla"),
        (1, None),
        (1, "model.conv_impl=xla"),
    ]
    summary = lines[-1]
    assert summary["summary"] and summary["images_per_s"] > 0 and summary["gflop_per_s"] > 0
    assert summary["variants"]["model.conv_impl=xla"]["images_per_s"] > 0
    assert 0 < summary["symmetry_share"] < 1
    assert {op["layer"] for op in summary["symmetry_ops"]} >= {"Slice", "ConvRoll", "Pool"}
    assert len(out_path.read_text().strip().splitlines()) == 5
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_bench_kernels(cli):
    out = cli("bench-kernels", "--batch", "1", "--repeats", "1")
    assert "conv_roll 47x47x16" in out and "pallas=interpret" in out
    rows = [line for line in out.splitlines() if line.startswith(("conv_roll", "roll"))]
    assert len(rows) == 5 and all(line.split()[-1] == "True" for line in rows)  # bitwise equal


def test_bench_plot_draws_every_series(tmp_path):
    from deepsea.plots import plot_rounds

    lines = [
        {"round": r, "images_per_s": 100.0 + r} | extra
        for r in range(3)
        for extra in ({}, {"variant": "model.conv_impl=xla"}, {"impl": "torch"})
    ]
    lines.append({"summary": True, "experiment": "x", "size": 47, "width": 0.5, "batch": 32, "ratio_vs_torch": 1.2})
    path = tmp_path / "rounds.png"
    labels = plot_rounds(lines, str(path))
    assert labels == [
        "deepsea: median 101.0 images/s",
        "model.conv_impl=xla: median 101.0 images/s",
        "PyTorch: median 101.0 images/s",
    ]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="summary line"):
        plot_rounds(lines[:-1], str(tmp_path / "none.png"))  # no summary line


def test_bench_counts_the_training_steps_flops_not_the_orbit_averaged_evaluation():
    from deepsea.configs import load_experiment
    from deepsea.tools.bench import _OurStep

    cfg = load_experiment(os.path.join(ROOT, "experiments", "synthetic.py"), small=True)
    cfg.model.symmetry = None
    plain = _OurStep(cfg, batch_size=2)
    cfg.model.orbit_average = "d4"
    averaged = _OurStep(cfg, batch_size=2)
    assert averaged.train_flops == plain.train_flops > 0
    cfg.model.conv_impl = "xla"  # "auto" computes the first layer without a convolution: counted all the same
    assert _OurStep(cfg, batch_size=2).train_flops == plain.train_flops
    assert np.isfinite(plain.compile_s)


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    """A UserError (bad input, named) is printed as one line with exit code 2; a plain ValueError is a bug: it
    propagates with its traceback instead of being dressed up as the user's mistake."""
    from deepsea import cli as cli_module
    from deepsea.errors import UserError

    def failing(error):
        def run(args):
            raise error

        return run

    parser = cli_module._parser

    def patched(error):
        def make():
            p = parser()
            p.set_defaults(func=failing(error))
            for action in p._subparsers._group_actions:  # every command runs the failing function
                for sub in action.choices.values():
                    sub.set_defaults(func=failing(error))
            return p

        return make

    monkeypatch.setattr(cli_module, "_parser", patched(UserError("bad value 'x' in file.csv")))
    with pytest.raises(SystemExit) as exit_info:
        cli_module.main(["info"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "deepsea info: error: bad value 'x' in file.csv"
    monkeypatch.setattr(cli_module, "_parser", patched(ValueError("an internal bug")))
    with pytest.raises(ValueError, match="an internal bug"):
        cli_module.main(["info"])


def test_resume_refuses_settings_that_change_the_run(cli, trained_run, tmp_path):
    """Issue 33: starting a run again with other settings trained on with them silently (or failed in orbax with
    asyncio tracebacks); now it is refused by name and the run folder keeps describing its model."""
    import shutil

    run = str(tmp_path / "run")
    shutil.copytree(trained_run[0], run)
    before = Path(run, "config.json").read_text()
    out = cli("train", "synthetic", "--small", "--workdir", run, "--set", "optim.lr=0.05", "--set", "train.steps=9",
              rc=2)  # fmt: skip
    assert "optim.lr: 0.01 in the run, 0.05 now" in out and "train.steps: 6 in the run, 9 now" in out
    assert "another --workdir" in out and "Traceback" not in out
    out = cli("train", "synthetic", "--small", "--workdir", run, "--set", "model.dense_features=32", rc=2)
    assert "model.dense_features: 16 in the run, 32 now" in out and "Traceback" not in out
    assert Path(run, "config.json").read_text() == before
    assert "best validation" in cli("train", "synthetic", "--small", "--workdir", run, "--set", "train.log_every=1")


def test_outputs_are_checked_before_the_work_and_damaged_files_are_named(cli, trained_run, tmp_path):
    """Issue 33: a folder where a file goes (and the reverse), a folder that cannot be made, a truncated exported
    model, an emptied checkpoint, an export over an existing model and a fusion that learns nothing: one line
    each, before any work."""
    import shutil

    run, flat = trained_run
    (tmp_path / "a_file").write_text("x")
    under_a_file = str(tmp_path / "a_file" / "out.csv")
    args = ("--workdir", run, "--images", str(flat))
    assert "--out" in (out := cli("predict", *args, "--out", str(tmp_path), rc=2)) and "is a folder" in out
    assert "cannot be made" in cli("predict", *args, "--out", under_a_file, rc=2)
    assert "--ecotaxa" in cli("predict", *args, "--out", str(tmp_path / "p.csv"), "--ecotaxa", str(tmp_path), rc=2)
    assert not (tmp_path / "p.csv").exists()  # refused before predicting
    assert "is a file" in cli("train", "synthetic", "--small", "--workdir", str(tmp_path / "a_file"), rc=2)
    assert "is a file" in cli("export", "--workdir", run, "--out", str(tmp_path / "a_file"), rc=2)
    (tmp_path / "dir.npz").mkdir()
    assert "is a folder" in cli("pseudolabel", run, "--images", str(flat), "--out", str(tmp_path / "dir.npz"), rc=2)
    assert "cannot be made" in cli("holdout", str(flat), "--out", str(tmp_path / "a_file" / "h"), rc=2)
    labelled, held = json.loads(Path(run, "split.json").read_text())["root"], tmp_path / "new" / "held"
    out = cli("holdout", labelled, "--out", str(held), "--fraction", "0.34")  # its --out checked, not made first
    assert "wrote" in out and sorted(os.listdir(held)) == ["aside", "aside_images", "train"]
    assert "exists" in cli("holdout", labelled, "--out", str(held), rc=2)
    model = str(tmp_path / "model")
    cli("export", "--workdir", run, "--out", model)
    assert "--overwrite" in cli("export", "--workdir", run, "--out", model, rc=2)
    cli("export", "--workdir", run, "--out", model, "--overwrite")
    params = Path(model, "params.npz")
    params.write_bytes(params.read_bytes()[:100])
    out = cli("predict", "--model", model, "--images", str(flat), "--out", str(tmp_path / "m.csv"), rc=2)
    assert "params.npz: not a readable parameter file" in out and "Traceback" not in out
    damaged = str(tmp_path / "damaged")
    shutil.copytree(run, damaged)
    for ckpt in ("checkpoints", "best"):
        steps = [d for d in Path(damaged, ckpt).iterdir() if d.name.isdigit()]
        for d in steps:
            shutil.rmtree(d)
            d.mkdir()
    out = cli("evaluate", "--workdir", damaged, rc=2)
    assert "cannot be read" in out and "Traceback" not in out
    assert "--steps must be at least 1" in cli("fuse", run, "--out", str(tmp_path / "f"), "--steps", "0", rc=2)


def test_bad_values_of_my_own_trials_are_one_line_before_any_work(cli, trained_run, tmp_path, caplog):
    """Trials beyond the issue's list: each was a traceback, a silent acceptance or an error after the work."""
    run, flat = trained_run
    args = ("--workdir", run, "--images", str(flat), "--out", str(tmp_path / "x.csv"))
    assert "--chunk: expected a whole number >= 1" in cli("predict", *args, "--chunk", "0", rc=2)  # was range()'s
    out = cli("predict", *args, "--top", "500", rc=2)  # was refused only after predicting
    assert "--top 500: " in out and "img/s" not in out  # no progress bar: nothing was predicted
    assert "expected a precision in (0, 1]" in cli("thresholds", "--workdir", run, "--target-precision", "1.5", rc=2)
    cli("ensemble", run, run, "--images", str(flat), "--out", str(tmp_path / "e.csv"))
    assert "more than once" in caplog.text  # harmless, but rarely meant: said
    assert "model.width must be > 0" in cli("params", "ndsb_cpu", "--set", "model.width=0", rc=2)  # built 1 channel
