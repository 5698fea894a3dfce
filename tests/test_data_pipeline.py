import os

import numpy as np
import pytest

from deepsea.data import (
    NO_AUGMENTATION,
    TRAIN_RANGES,
    AugmentedSource,
    BadImageError,
    Preprocess,
    Rescale,
    compute_stats,
    eval_batches,
    preprocess_image,
    read_image,
    scan_labelled_folder,
    stratified_split,
    train_batches,
)
from deepsea.data.synthetic import make_synthetic
from deepsea.rundir import RunDataMismatch, load_json, load_run_data, save_json, save_run_data


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return scan_labelled_folder(make_synthetic(tmp_path_factory.mktemp("syn"), per_class=12, progress=False))


def _check_split(labels, train, val, fraction):
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(labels)
    counts = np.bincount(labels)
    val_counts = np.bincount(labels[val], minlength=len(counts))
    assert (val_counts[counts >= 10] >= 1).all()
    assert (val_counts < counts).all()  # every class keeps training images
    assert abs(len(val) / len(labels) - fraction) < 0.02


def test_stratified_split_properties():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(30), rng.integers(2, 200, 30))
    train, val = stratified_split(labels, 0.1, seed=3)
    _check_split(labels, train, val, 0.1)
    _t2, v2 = stratified_split(labels, 0.1, seed=3)
    np.testing.assert_array_equal(val, v2)
    bags = [stratified_split(labels, 0.1, seed=3 + i) for i in range(4)]  # deepsea bag: split seed + i
    for t, v in bags:
        _check_split(labels, t, v, 0.1)
    assert all(not np.array_equal(bags[0][1], b[1]) for b in bags[1:])
    with pytest.raises(ValueError, match="fraction"):
        stratified_split(labels, 1.5)


def test_ndsb_images(ndsb_root):
    f = scan_labelled_folder(ndsb_root)
    assert len(f.classes) == 121 and len(f) == 27287
    counts = f.class_counts()
    assert counts.min() == 8 and 1700 <= counts.max() <= 1900
    assert f.classes == tuple(sorted(f.classes)) and "acantharia_protist" in f.classes
    train, val = stratified_split(f.labels, 0.1, seed=0)
    _check_split(f.labels, train, val, 0.1)
    assert len(np.unique(f.labels[val])) == 121  # even the 8-image classes round to one
    img = read_image(f.paths[0])
    assert img.dtype == np.uint8 and img.ndim == 2 and img.min() < 128 < img.max()


def test_preprocess_normalises_with_global_stats(synth, tmp_path):
    pp = Preprocess(size=47, rescale=Rescale("max_side", 40))
    mean, std = compute_stats(synth, pp, max_images=50)
    assert 0 < mean < 0.5 and 0 < std < 0.5
    x = np.stack([preprocess_image(read_image(p), pp.with_stats(mean, std)) for p in synth.paths[:50]])
    # compute_stats drew its own random sample; on these images the moments are near 0 and 1
    assert abs(x.mean()) < 0.5 and 0.5 < x.std() < 1.5
    stats_file = str(tmp_path / "stats.json")
    save_json(stats_file, {"mean": mean, "std": std})
    assert load_json(stats_file) == {"mean": mean, "std": std}
    with pytest.raises(ValueError, match="std must be > 0"):
        Preprocess(std=0.0)


def test_source_is_reproducible_from_seed_epoch_index(synth):
    pp = Preprocess(size=31, rescale=Rescale("max_side", 28))
    a = AugmentedSource(synth.paths, synth.labels, pp, TRAIN_RANGES, seed=1)
    b = AugmentedSource(synth.paths, synth.labels, pp, TRAIN_RANGES, seed=1)
    n = len(synth)
    # the same global index in any order, from any instance
    idx = [5, n + 2, 3 * n - 1]
    first = [a[i] for i in idx]
    from_b = {i: b[i] for i in reversed(idx)}
    for i, ex in zip(idx, first, strict=True):
        np.testing.assert_array_equal(from_b[i]["image"], ex["image"])
    # each epoch is a permutation of all images, with fresh transforms
    epoch0 = sorted(int(a[i]["index"]) for i in range(n))
    assert epoch0 == list(range(n))
    same_image = next(i for i in range(n, 2 * n) if int(a[i]["index"]) == int(first[0]["index"]))
    assert not np.array_equal(a[same_image]["image"], first[0]["image"])
    c = AugmentedSource(synth.paths, synth.labels, pp, TRAIN_RANGES, seed=2)
    assert [int(c[i]["index"]) for i in range(10)] != [int(a[i]["index"]) for i in range(10)]
    plain = AugmentedSource(synth.paths, synth.labels, pp, NO_AUGMENTATION, seed=1)
    ex = plain[0]
    np.testing.assert_array_equal(ex["image"], preprocess_image(read_image(synth.paths[int(ex["index"])]), pp))
    assert ex["label"] == synth.labels[int(ex["index"])]
    assert tuple(ex["raw_size"]) == read_image(synth.paths[int(ex["index"])]).shape


def test_cached_source_decodes_each_image_once_and_gives_the_same_examples(synth, tmp_path):
    import pickle
    import shutil

    paths = [shutil.copy(p, tmp_path / f"{i}.png") for i, p in enumerate(synth.paths[:6])]
    pp = Preprocess(size=23, rescale=Rescale("max_side", 20))
    plain = AugmentedSource(paths, synth.labels[:6], pp, TRAIN_RANGES, seed=3)
    cached = AugmentedSource(paths, synth.labels[:6], pp, TRAIN_RANGES, seed=3, cache=True)
    want = [plain[i] for i in range(12)]
    for i in range(6):  # the first epoch decodes and keeps every image
        np.testing.assert_array_equal(cached[i]["image"], want[i]["image"])
    assert pickle.loads(pickle.dumps(cached))._decoded == {}  # a worker starts empty, not with a copy
    for p in paths:
        os.remove(p)
    for i in range(6, 12):  # the second epoch reads nothing
        for k in want[i]:
            np.testing.assert_array_equal(cached[i][k], want[i][k])
    with pytest.raises(BadImageError, match=r"0\.png"):  # the uncached source still reads
        plain.example(0, 0)


def test_train_batches_resume_exactly(synth):
    pp = Preprocess(size=23, rescale=Rescale("max_side", 20))
    src = AugmentedSource(synth.paths, synth.labels, pp, TRAIN_RANGES, seed=0)
    with train_batches(src, 8, workers=0) as it:
        batches = [next(it) for _ in range(5)]
    assert batches[0]["image"].shape == (8, 23, 23, 1) and batches[0]["label"].shape == (8,)
    with train_batches(src, 8, workers=0, start_step=3) as it:
        resumed = next(it)
    for k in batches[3]:
        np.testing.assert_array_equal(resumed[k], batches[3][k])


def test_worker_processes_give_the_same_batches(synth):
    pp = Preprocess(size=23, rescale=Rescale("max_side", 20))
    src = AugmentedSource(synth.paths, synth.labels, pp, TRAIN_RANGES, seed=0)
    with train_batches(src, 8, workers=0) as it:
        here = [next(it) for _ in range(3)]
    with train_batches(src, 8, workers=2) as it:
        there = [next(it) for _ in range(3)]
    for a, b in zip(here, there, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_eval_batches_cover_every_image_once_and_pad(synth):
    pp = Preprocess(size=23, rescale=Rescale("max_side", 20))
    n = len(synth)
    batches = list(eval_batches(synth.paths, synth.labels, pp, batch_size=10))
    assert len(batches) == -(-n // 10)
    mask = np.concatenate([b["mask"] for b in batches])
    idx = np.concatenate([b["index"] for b in batches])[mask > 0]
    np.testing.assert_array_equal(idx, np.arange(n))
    assert mask.sum() == n and all(b["image"].shape == (10, 23, 23, 1) for b in batches)
    labels = np.concatenate([b["label"] for b in batches])[mask > 0]
    np.testing.assert_array_equal(labels, synth.labels)


def test_run_data_round_trips_and_mismatches_are_named(synth, tmp_path):
    import shutil

    train, val = stratified_split(synth.labels, 0.2, seed=4)
    pp = Preprocess(size=47, rescale=Rescale("factor", 0.5), mean=0.1, std=0.2)
    run = str(tmp_path / "run")
    save_run_data(run, synth, train, val, pp, seed=4, fraction=0.2)
    t2, v2, pp2 = load_run_data(run, synth)
    np.testing.assert_array_equal(t2, train)
    np.testing.assert_array_equal(v2, val)
    assert pp2 == pp
    split = load_json(f"{run}/split.json")
    assert split["validation_ids"] == [synth.ids[i] for i in val]
    # a folder with a class fewer: the error names the missing class
    copy = tmp_path / "copy"
    shutil.copytree(synth.root, copy)
    shutil.rmtree(copy / "ring")
    with pytest.raises(RunDataMismatch, match=r"missing \['ring'\]"):
        load_run_data(run, scan_labelled_folder(copy))


def test_process_slices_tile_every_global_batch():
    from deepsea.data.pipeline import ProcessSlice

    source = list(range(10 * 12))
    slices = [ProcessSlice(source, 12, p, 3) for p in range(3)]
    assert all(len(s) == 40 for s in slices)
    for k in range(10):  # batch k of every process, concatenated in process order, is global batch k
        merged = [x for s in slices for x in (s[k * 4 + j] for j in range(4))]
        assert merged == source[k * 12 : (k + 1) * 12]
    with pytest.raises(ValueError, match="not divisible by 5 processes"):
        ProcessSlice(source, 12, 0, 5)
