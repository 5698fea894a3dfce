import itertools
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepsea import metrics as M
from deepsea.data import AugmentParams, Preprocess, Rescale, eval_batches, scan_labelled_folder
from deepsea.data.synthetic import make_synthetic
from deepsea.ensemble import blend, cross_validated_selection, fit_blend_weights
from deepsea.models import tiny_rollnet
from deepsea.plots import save_confusion_png
from deepsea.predictor import cached_probs
from deepsea.runs import predict_probs, tta_probs
from deepsea.submission import read_submission, write_submission
from deepsea.tta import combine_probs, identity_transforms, transforms_for


def _random_probs(rng, n=200, k=7):
    logits = rng.standard_normal((n, k)) * 2
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True), rng.integers(0, k, n)


def test_log_loss_as_kaggle_scored_it(rng):
    p, y = _random_probs(rng)
    want = -np.mean([np.log(p[i, y[i]]) for i in range(len(y))])
    assert M.log_loss(p, y) == pytest.approx(want, rel=1e-12)
    # zeros and ones are clipped to [1e-15, 1 - 1e-15] and rows renormalised
    hard = np.eye(7)[rng.integers(0, 7, 50)]
    y2 = rng.integers(0, 7, 50)
    clipped = np.clip(hard, 1e-15, 1 - 1e-15)
    clipped /= clipped.sum(1, keepdims=True)
    want2 = -np.mean(np.log(clipped[np.arange(50), y2]))
    assert M.log_loss(hard, y2) == pytest.approx(want2, rel=1e-12) and np.isfinite(M.log_loss(hard, y2))
    # unnormalised rows are renormalised
    assert M.log_loss(p * 0.5, y) == pytest.approx(M.log_loss(p, y), rel=1e-12)  # rows are renormalised


def test_accuracy_top_k_confusion_and_per_class(rng, tmp_path):
    p, y = _random_probs(rng)
    assert M.accuracy(p, y) == pytest.approx(np.mean([np.argmax(r) == t for r, t in zip(p, y, strict=True)]))
    for k in (1, 3, 7):
        brute = np.mean([t in np.argsort(-r)[:k] for r, t in zip(p, y, strict=True)])
        assert M.top_k_accuracy(p, y, k) == pytest.approx(brute)
    cm = M.confusion_matrix(p, y)
    for t, q in itertools.product(range(7), repeat=2):
        assert cm[t, q] == np.sum((y == t) & (p.argmax(1) == q))
    np.testing.assert_allclose(M.per_class_accuracy(p, y), np.diag(cm) / cm.sum(1))
    classes = [f"class_with_a_long_name_{i}" for i in range(121)]
    p121, y121 = _random_probs(rng, 500, 121)
    png = save_confusion_png(p121, y121, classes, str(tmp_path / "c.png"))
    assert Path(png).read_bytes()[:4] == b"\x89PNG"


def test_combining_transforms(rng):
    per = np.stack([_random_probs(rng)[0] for _ in range(5)])
    np.testing.assert_allclose(combine_probs(per, "mean"), per.mean(0))
    logits = np.log(per) + rng.standard_normal((5, 200, 1))  # logits: log-probabilities plus any row constant
    mean_logits = np.exp(logits.mean(0))
    mean_logits /= mean_logits.sum(1, keepdims=True)
    np.testing.assert_allclose(combine_probs(per, "logits"), mean_logits, rtol=1e-10)
    np.testing.assert_allclose(combine_probs(per, "geometric"), mean_logits, rtol=1e-10)
    with pytest.raises(ValueError, match="unknown combination"):
        combine_probs(per, "median")  # type: ignore[arg-type]


def test_blend_weights_recover_a_planted_best_model(rng):
    n, k = 600, 10
    y = rng.integers(0, k, n)
    good = np.full((n, k), 0.3 / (k - 1))
    good[np.arange(n), y] = 0.7
    noise = [_random_probs(rng, n, k)[0] for _ in range(3)]
    probs = np.stack([noise[0], good, noise[1], noise[2]])
    w = fit_blend_weights(probs, y)
    assert w.argmax() == 1 and w[1] > 0.9 and w.sum() == pytest.approx(1)
    # the optimum: no weight vector on a grid does better
    best_grid = min(M.log_loss(blend(probs[:2], np.array([a, 1 - a])), y) for a in np.linspace(0, 1, 101))
    w2 = fit_blend_weights(probs[:2], y)
    assert M.log_loss(blend(probs[:2], w2), y) <= best_grid + 1e-9
    sel = cross_validated_selection(probs, y, folds=5)
    assert sel.models[0] == 1 and sel.cv_log_loss <= min(sel.single_log_loss) + 1e-9


def test_two_complementary_models_blend_better_than_either(rng):
    n, k = 400, 4
    y = rng.integers(0, k, n)
    a = np.full((n, k), 0.25)
    b = np.full((n, k), 0.25)
    half = np.arange(n) < n // 2  # a knows the first half, b the second
    a[half] = 0.05
    a[half, y[half]] = 0.85
    b[~half] = 0.05
    b[~half, y[~half]] = 0.85
    sel = cross_validated_selection(np.stack([a, b]), y)
    assert set(sel.models) == {0, 1} and sel.cv_log_loss < min(sel.single_log_loss)


def test_submission_round_trips(tmp_path, rng):
    p, _ = _random_probs(rng, 5, 3)
    names = [f"{i}.jpg" for i in range(5)]
    write_submission(str(tmp_path / "s.csv"), names, ["a", "b", "c"], p * 2)
    n2, c2, p2 = read_submission(str(tmp_path / "s.csv"))
    assert n2 == names and c2 == ["a", "b", "c"]
    np.testing.assert_allclose(p2, p, rtol=1e-5)
    with pytest.raises(ValueError, match="do not match"):
        write_submission(str(tmp_path / "x.csv"), names, ["a", "b"], p)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = scan_labelled_folder(make_synthetic(tmp_path_factory.mktemp("syn"), per_class=2, progress=False))
    model = tiny_rollnet(num_classes=len(folder.classes), size_features=True)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 23, 23, 1)), raw_size=jnp.ones((1, 2)))
    pp = Preprocess(size=23, rescale=Rescale("max_side", 20))
    return folder, model, variables, pp


def test_tta_with_the_identity_equals_plain_prediction(tiny_run):
    folder, model, variables, pp = tiny_run
    plain = predict_probs(model, variables, eval_batches(folder.paths, None, pp, 8))
    per = tta_probs(model, variables, folder.paths, pp, identity_transforms(), batch_size=8, progress=False)
    assert per.shape == (1, len(folder), len(folder.classes))
    np.testing.assert_array_equal(combine_probs(per), plain / plain.sum(1, keepdims=True))


def test_tta_batches_decode_each_image_once_and_cover_every_transform(tiny_run, monkeypatch):
    from deepsea.data import pipeline
    from deepsea.tta import transforms_for

    folder, _, _, pp = tiny_run
    transforms = transforms_for(3, pp.size)
    reads = []
    real = pipeline.read_input
    monkeypatch.setattr(pipeline, "read_input", lambda path, pp: reads.append(path) or real(path, pp))
    seen = {}
    for t, start, batch in pipeline.tta_batches(folder.paths, pp, transforms, batch_size=4, chunk=8):
        k = int(batch["mask"].sum())
        assert batch["image"].shape == (4, 23, 23, 1) and 0 < k <= 4 and batch["mask"][k:].sum() == 0
        for j in range(k):
            seen[t, start + j] = batch["image"][j]
    assert sorted(reads) == sorted(folder.paths)  # once each, not once per transform
    assert set(seen) == {(t, i) for t in range(3) for i in range(len(folder))}
    for t, params in enumerate(transforms):  # the same images as the one-transform loader's
        for batch in eval_batches(folder.paths, None, pp, 4, params=params):
            for j in range(int(batch["mask"].sum())):
                np.testing.assert_array_equal(seen[t, int(batch["index"][j])], batch["image"][j])


def test_tta_batches_name_an_unreadable_image_and_stop(tiny_run, tmp_path):
    from deepsea.data import BadImageError, pipeline

    folder, _, _, pp = tiny_run
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    paths = [*folder.paths[:5], str(bad)]
    with pytest.raises(BadImageError, match=r"broken\.jpg"):
        list(pipeline.tta_batches(paths, pp, identity_transforms(), batch_size=2, chunk=4))
    it = pipeline.tta_batches(folder.paths, pp, identity_transforms() * 50, batch_size=2, prefetch=1)
    next(it)
    it.close()  # stops the producer thread instead of leaving it blocked on a full queue
    import threading

    assert not [t for t in threading.enumerate() if t.name == "tta-batches"]


def test_tta_predictions_are_cached(tiny_run, tmp_path):
    import dataclasses

    from deepsea.tta import transforms_for

    folder = tiny_run[0]
    run = _tiny_run_object(tiny_run, tmp_path)
    first = cached_probs(run, folder.paths, transforms_for(3, 23), progress=False)
    assert first.shape == (3, len(folder), len(folder.classes))
    assert len(os.listdir(tmp_path / "predictions")) == 1
    # the second call reads the file: a model that cannot predict is not asked
    unusable = dataclasses.replace(run, model=None, variables=None)
    np.testing.assert_array_equal(first, cached_probs(unusable, folder.paths, transforms_for(3, 23), progress=False))
    # another checkpoint is another entry
    cached_probs(dataclasses.replace(run, step=2), folder.paths, transforms_for(3, 23), progress=False)
    assert len(os.listdir(tmp_path / "predictions")) == 2
    # a model folder where the cache cannot be written (read-only; here a file in the way): predicted, not cached
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "predictions").write_text("in the way")
    ro = cached_probs(_tiny_run_object(tiny_run, tmp_path / "ro"), folder.paths, transforms_for(3, 23), progress=False)
    np.testing.assert_array_equal(ro, first)


def test_tta_ranges_never_exceed_the_training_ranges():
    from deepsea.data import TTA_RANGES, AugmentRanges
    from deepsea.tta import tta_ranges_for

    r = tta_ranges_for(AugmentRanges(rotation=360, shift=10, zoom=1.3, shear=20, stretch=1.15, flip=True))
    assert (r.zoom, r.stretch, r.shift, r.shear, r.rotation, r.flip) == (1.3, 1.15, 8.0, 10.0, 360.0, True)
    assert tta_ranges_for(TTA_RANGES) == TTA_RANGES
    none = tta_ranges_for(AugmentRanges(rotation=0, shift=0, zoom=1, shear=0, stretch=1, flip=False))
    assert (none.zoom, none.rotation, none.flip) == (1.0, 0.0, False)


def test_repeated_predictions_reuse_one_compiled_function(tiny_run):
    """Validation runs every few thousand steps: it must not trace and compile anew each time."""
    from deepsea.runs import _predict_fn

    folder, model, variables, pp = tiny_run
    for _ in range(3):
        predict_probs(model, variables, eval_batches(folder.paths, None, pp, 8))
    assert _predict_fn(model)._cache_size() == 1


def test_tencrop_is_five_crops_of_the_enlarged_image_and_their_mirrors(rng):
    from deepsea.data.transforms import affine_matrix, warp
    from deepsea.tta import tencrop_params

    img = rng.random((13, 9)).astype(np.float32)
    size, frac = 16, 0.8  # the enlarged image is 20 pixels; crops are 16
    crops = tencrop_params(size, frac)
    assert len(crops) == 10 and len({(c.shift_row, c.shift_col, c.flip) for c in crops}) == 10
    for mirrored in (False, True):
        big = warp(img, affine_matrix(img.shape, 20, 1.0, AugmentParams(zoom=1.25, flip=mirrored)), 20)
        want = {  # (row shift, col shift) -> the crop of the enlarged image
            (2.0, 2.0): big[:16, :16],
            (2.0, -2.0): big[:16, 4:],
            (-2.0, 2.0): big[4:, :16],
            (-2.0, -2.0): big[4:, 4:],
            (0.0, 0.0): big[2:18, 2:18],
        }
        for c in (c for c in crops if c.flip == mirrored):
            got = warp(img, affine_matrix(img.shape, size, 1.0, c), size)
            np.testing.assert_allclose(got, want[(c.shift_row, c.shift_col)], atol=1e-5)
    with pytest.raises(ValueError, match="crop_fraction"):
        tencrop_params(16, 1.5)


def test_tencrop_predictions_through_the_cache(tiny_run, tmp_path):
    from deepsea.tta import transforms_for

    folder = tiny_run[0]
    run = _tiny_run_object(tiny_run, tmp_path)
    per = cached_probs(run, folder.paths, transforms_for("tencrop", 23), progress=False)
    assert per.shape == (10, len(folder), len(folder.classes))
    np.testing.assert_allclose(per.sum(-1), 1.0, rtol=1e-5)
    assert len(transforms_for(0, 23)) == 1 and len(transforms_for(5, 23)) == 5
    with pytest.raises(ValueError, match="tencrop"):
        transforms_for("tenfold", 23)


def _tiny_run_object(tiny_run, workdir):
    from deepsea.configs import base_config
    from deepsea.runs import Run

    folder, model, variables, pp = tiny_run
    config = base_config()
    config.train.eval_batch_size = 8
    return Run(str(workdir), model, variables, pp, tuple(folder.classes), config, "best", 1)


def test_streamed_prediction_resumes_after_a_kill_and_equals_one_pass(tiny_run, tmp_path):
    import shutil

    from deepsea.data.sources import list_images
    from deepsea.stream import predict_tree

    folder, model, variables, pp = tiny_run
    tree = tmp_path / "tree"
    for i, p in enumerate(folder.paths):  # a nested tree: two levels, and a stray file
        sub = tree / f"site{i % 2}" / f"cast{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, sub / f"{i}.jpg")
    (tree / "notes.txt").write_text("not an image")
    rel = list_images(str(tree))
    assert len(rel) == len(folder) and rel == sorted(rel) and rel[0].startswith("site0/cast0/")
    run = _tiny_run_object(tiny_run, tmp_path / "run")
    whole = predict_tree(run, str(tree), str(tmp_path / "whole.csv"), tta=2, top=2, chunk=5, progress=False)
    assert whole.images == len(folder) and whole.resumed_from == 0
    killed = predict_tree(
        run, str(tree), str(tmp_path / "part.csv"), tta=2, top=2, chunk=5, progress=False, stop_after_chunks=2
    )
    assert killed.images == 10
    with open(tmp_path / "part.csv", "a") as f:
        f.write("site1/cast2/half-written,0.1")  # what a kill in the middle of a chunk leaves
    resumed = predict_tree(run, str(tree), str(tmp_path / "part.csv"), tta=2, top=2, chunk=5, progress=False)
    assert resumed.resumed_from == 10 and resumed.images == len(folder)
    assert (tmp_path / "part.csv").read_text() == (tmp_path / "whole.csv").read_text()
    names, classes, probs = read_submission(str(tmp_path / "whole.csv"))
    assert names == rel and classes == list(folder.classes)
    from deepsea.data.ecotaxa import read_ecotaxa
    from deepsea.stream import csv_to_ecotaxa

    for r in rel:  # EcoTaxa names images relative to its TSV
        (tmp_path / r).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tree / r, tmp_path / r)
    eco = read_ecotaxa(csv_to_ecotaxa(str(tmp_path / "whole.csv"), str(tmp_path / "eco.tsv"), classes), ("predicted",))
    assert list(eco.categories) == [classes[i] for i in probs.argmax(1)]  # no label column: the top class
    import pyarrow.parquet as pq  # a dependency of tensorflow-datasets

    from deepsea.stream import csv_to_parquet

    table = pq.read_table(csv_to_parquet(str(tmp_path / "whole.csv"), str(tmp_path / "whole.parquet")))
    assert table.column("image").to_pylist() == rel and table.column("top1").to_pylist()[0] in folder.classes
    np.testing.assert_allclose(np.stack([table.column(c).to_numpy() for c in classes], 1), probs, rtol=1e-6)
    # the same probabilities as the in-memory TTA path
    per = tta_probs(model, variables, [str(tree / r) for r in rel], pp, transforms_for(2, 23), 8, progress=False)
    np.testing.assert_allclose(probs, combine_probs(per), atol=2e-6)


def test_pixel_size_makes_the_size_feature_physical_and_is_required_to_predict(tiny_run, tmp_path):
    import dataclasses

    from deepsea.data.pipeline import _example
    from deepsea.errors import UserError
    from deepsea.predictor import with_pixel_size
    from deepsea.rundir import load_preprocess, save_run_data

    folder, _, _, pp = tiny_run
    img = np.zeros((30, 40), np.uint8)
    um = dataclasses.replace(pp, pixel_size=12.5)
    np.testing.assert_array_equal(_example(["x"], None, 0, pp, AugmentParams(), img)["raw_size"], [30, 40])
    np.testing.assert_array_equal(_example(["x"], None, 0, um, AugmentParams(), img)["raw_size"], [375, 500])
    save_run_data(str(tmp_path), folder, np.arange(2), np.arange(2, 4), um, 0, 0.1)
    assert load_preprocess(str(tmp_path)).pixel_size == 12.5
    with pytest.raises(ValueError, match="pixel size"):
        Preprocess(pixel_size=-1.0)
    physical = dataclasses.replace(_tiny_run_object(tiny_run, tmp_path), preprocess=um)
    with pytest.raises(UserError, match="give these images' pixel size"):
        with_pixel_size(physical, None)
    assert with_pixel_size(physical, 7.0).preprocess.pixel_size == 7.0
    with pytest.raises(UserError, match="learnt sizes in pixels"):
        with_pixel_size(_tiny_run_object(tiny_run, tmp_path), 7.0)


def test_a_prediction_restarted_with_other_options_says_it_starts_again(tiny_run, tmp_path, caplog):
    from deepsea.stream import predict_tree

    folder = tiny_run[0]
    tree = tmp_path / "flat"
    tree.mkdir()
    import shutil

    for i, p in enumerate(folder.paths[:10]):
        shutil.copy(p, tree / f"{i}.jpg")
    run = _tiny_run_object(tiny_run, tmp_path / "run")
    out = str(tmp_path / "p.csv")
    predict_tree(run, str(tree), out, tta=2, chunk=5, progress=False, stop_after_chunks=1)
    res = predict_tree(run, str(tree), out, tta=0, chunk=5, progress=False)
    assert res.resumed_from == 0 and res.images == 10
    assert "holds 5 images predicted with other options" in caplog.text
