"""Colour end to end: jitter, RGB preprocessing, the generated colour data, an RGB against a grayscale run."""

import dataclasses
import json
import os

import numpy as np
import pytest
import scipy.stats
import skimage.color
from PIL import Image

from deepsea.data import (
    TRAIN_RANGES,
    AugmentParams,
    AugmentRanges,
    BadImageError,
    Preprocess,
    Rescale,
    check_images,
    compute_stats,
    preprocess_image,
    read_image,
    sample_params,
    scan_labelled_folder,
)
from deepsea.data.pipeline import read_input
from deepsea.data.synthetic import COLOUR_PAIRS, GREEN, RED, colour_classes, draw, make_synthetic
from deepsea.data.transforms import affine_matrix, colour_jitter, warp

JITTER = dataclasses.replace(TRAIN_RANGES, brightness=0.4, contrast=0.3, saturation=0.5, hue=0.1)


def test_jitter_draws_follow_their_ranges_and_leave_the_affine_draw_unchanged():
    rng = np.random.default_rng(0)
    draws = [sample_params(rng, JITTER) for _ in range(3000)]
    got = {k: np.array([getattr(p, k) for p in draws]) for k in ("brightness", "contrast", "saturation", "hue")}
    want = {
        "brightness": scipy.stats.uniform(0.6, 0.8),
        "contrast": scipy.stats.uniform(0.7, 0.6),
        "saturation": scipy.stats.uniform(0.5, 1.0),
        "hue": scipy.stats.uniform(-0.1, 0.2),
    }
    for k, dist in want.items():
        assert scipy.stats.kstest(got[k], dist.cdf).pvalue > 1e-3, k
    assert scipy.stats.kstest(got["hue"], scipy.stats.uniform(0, 0.1).cdf).pvalue < 1e-3  # the test can reject
    # the same (seed, epoch, index) draws the same affine transform with or without jitter
    for seed in range(20):
        a = sample_params(np.random.default_rng([seed, 1, 2]), TRAIN_RANGES)
        b = sample_params(np.random.default_rng([seed, 1, 2]), JITTER)
        assert dataclasses.replace(b, brightness=1.0, contrast=1.0, saturation=1.0, hue=0.0) == a
        assert not a.jitters and b.jitters
    with pytest.raises(ValueError, match="hue"):
        AugmentRanges(hue=0.6)
    with pytest.raises(ValueError, match="brightness"):
        AugmentRanges(brightness=-0.1)
    assert AugmentRanges.from_config({**dataclasses.asdict(TRAIN_RANGES), "hue": 0.05}).hue == 0.05
    old = {k: v for k, v in dataclasses.asdict(TRAIN_RANGES).items() if k not in ("brightness", "hue")}
    assert not AugmentRanges.from_config(old).jitters  # configs written before the jitter keys


def test_colour_jitter_against_independent_formulas(rng):
    x = rng.random((9, 7, 3)).astype(np.float32)
    gray = rng.random((9, 7)).astype(np.float32)
    np.testing.assert_array_equal(colour_jitter(x, AugmentParams()), x)  # the identity, exactly
    np.testing.assert_array_equal(colour_jitter(gray, AugmentParams(saturation=0.2, hue=0.3)), gray)  # no colour
    np.testing.assert_allclose(colour_jitter(x, AugmentParams(brightness=1.3)), np.clip(1.3 * x, 0, 1), rtol=1e-6)
    luma = x @ np.array([0.299, 0.587, 0.114])
    no_contrast = colour_jitter(x, AugmentParams(contrast=0.0))
    np.testing.assert_allclose(no_contrast, np.full_like(x, luma.mean()), rtol=1e-5)
    no_saturation = colour_jitter(x, AugmentParams(saturation=0.0))
    np.testing.assert_allclose(no_saturation, np.repeat(luma[..., None], 3, -1), rtol=1e-5, atol=1e-6)
    # hue against scikit-image's HSV conversion
    shift = 0.23
    hsv = skimage.color.rgb2hsv(x.astype(np.float64))
    hsv[..., 0] = (hsv[..., 0] + shift) % 1.0
    np.testing.assert_allclose(colour_jitter(x, AugmentParams(hue=shift)), skimage.color.hsv2rgb(hsv), atol=1e-5)
    red = np.array([[[1.0, 0.0, 0.0]]], np.float32)  # a third of a turn: red -> green -> blue
    np.testing.assert_allclose(colour_jitter(red, AugmentParams(hue=1 / 3)), [[[0.0, 1.0, 0.0]]], atol=1e-6)
    np.testing.assert_allclose(colour_jitter(red, AugmentParams(hue=-1 / 3)), [[[0.0, 0.0, 1.0]]], atol=1e-6)


def _photo(rng, h=20, w=30):
    return rng.integers(0, 256, (h, w, 3)).astype(np.uint8)


def test_rgb_preprocessing_keeps_colours_fills_the_background_and_normalises_per_channel(rng):
    img = _photo(rng)
    shrink = AugmentParams(zoom=0.5)  # the image covers the middle of the patch only
    for background, fill in (("white", 1.0), ("black", 0.0)):
        pp = Preprocess(size=31, rescale=Rescale("max_side", 30), channels=3, background=background)
        x = preprocess_image(img, pp, shrink)
        assert x.shape == (31, 31, 3) and not pp.inverted
        forward = affine_matrix(img.shape[:2], 31, pp.rescale.factor(20, 30), shrink)
        np.testing.assert_allclose(x, warp(img / np.float32(255), forward, 31, fill), rtol=1e-6)
        assert (x[0, 0] == fill).all() and not np.allclose(x[15, 15], fill)
    # grayscale on white: the seed's inverted input, unchanged
    g = rng.integers(0, 256, (20, 30)).astype(np.uint8)
    pp1 = Preprocess(size=31, rescale=Rescale("max_side", 30))
    forward = affine_matrix((20, 30), 31, pp1.rescale.factor(20, 30))
    np.testing.assert_array_equal(preprocess_image(g, pp1)[..., 0], warp(1.0 - g / np.float32(255), forward, 31))
    pp_stats = Preprocess(size=31, rescale=Rescale("max_side", 30), channels=3, mean=(0.1, 0.2, 0.3), std=(1, 2, 4))
    plain = preprocess_image(img, dataclasses.replace(pp_stats, mean=0.0, std=1.0))
    np.testing.assert_allclose(
        preprocess_image(img, pp_stats), (plain - [0.1, 0.2, 0.3]) / [1, 2, 4], rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="3 values for 1 channel"):
        Preprocess(channels=1, mean=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="background"):
        Preprocess(background="grey")
    with pytest.raises(ValueError, match="3-channel preprocessing got an image of shape"):
        preprocess_image(g, pp_stats)


def test_grayscale_files_are_refused_by_an_rgb_model_unless_replicated(tmp_path, rng):
    folder = tmp_path / "data"
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
        Image.fromarray(_photo(rng)).save(folder / c / "colour.png")
    Image.fromarray(rng.integers(0, 256, (9, 9)).astype(np.uint8)).save(folder / "b" / "gray.png")
    f = scan_labelled_folder(str(folder))
    rgb = Preprocess(size=15, channels=3)
    with pytest.raises(BadImageError, match=r"gray\.png.*grayscale image \(L\).*gray_to_rgb"):
        check_images(f, progress=False, pp=rgb)
    kept, _, bad = check_images(f, skip_bad=True, progress=False, pp=rgb)
    assert len(kept) == 2 and [os.path.basename(p) for p, _ in bad] == ["gray.png"]
    replicated = read_input(str(folder / "b" / "gray.png"), dataclasses.replace(rgb, gray_to_rgb=True))
    assert replicated.shape == (9, 9, 3) and (replicated[..., 0] == replicated[..., 2]).all()
    assert read_image(str(folder / "a" / "colour.png"), "L").ndim == 2  # a grayscale model reads the luma
    assert len(check_images(f, progress=False)[0]) == 3


def test_colour_pairs_have_equal_luma_and_differ_in_colour(tmp_path):
    luma = np.array([0.299, 0.587, 0.114])
    assert luma @ np.array(RED) == pytest.approx(luma @ np.array(GREEN))
    for shape in COLOUR_PAIRS:
        red = draw(shape, np.random.default_rng(3), RED)
        green = draw(shape, np.random.default_rng(3), GREEN)  # the same organism in the other colour
        to_gray = lambda a: np.asarray(Image.fromarray(a).convert("L"), np.int16)  # noqa: E731
        diff = np.abs(to_gray(red) - to_gray(green))  # rounding (and noise clipped per channel) only
        assert diff.max() <= 3 and diff.mean() < 0.1
        assert np.abs(red.astype(int) - green.astype(int)).max() > 100
    root = make_synthetic(tmp_path / "c", per_class=2, colour=True, progress=False)
    f = scan_labelled_folder(root)
    assert list(f.classes) == sorted(colour_classes()) and len(f.classes) == 12 + len(COLOUR_PAIRS)
    assert read_image(f.paths[0], "RGB").shape[-1] == 3
    mean, std = compute_stats(f, Preprocess(size=23, rescale=Rescale("max_side", 20), channels=3))
    assert len(mean) == len(std) == 3 and all(0 < m < 1 for m in mean)


@pytest.mark.slow
def test_an_rgb_run_separates_the_colour_pairs_and_a_grayscale_run_does_not(tmp_path, monkeypatch):
    """Both runs train on the red and green rings only; scored on 40 fresh images of each."""
    from deepsea.configs import apply_overrides, load_experiment
    from deepsea.data import eval_batches
    from deepsea.runs import predict_probs, restore_run
    from deepsea.train import train

    monkeypatch.setenv("DEEPSEA_DATA", str(tmp_path / "cache"))
    pair = ["ring_red", "ring_green"]
    data = make_synthetic(tmp_path / "train", per_class=24, colour=True, classes=pair, progress=False)
    fresh = scan_labelled_folder(
        make_synthetic(tmp_path / "fresh", 40, seed=7, colour=True, classes=pair, progress=False)
    )
    accuracy = {}
    for channels in (3, 1):
        config = load_experiment(os.path.join(os.path.dirname(__file__), "..", "experiments", "synthetic_colour.py"))
        apply_overrides(
            config,
            [
                f"data.path={data}",
                f"data.channels={channels}",
                "data.size=23",
                "data.rescale=max_side:20",
                "data.workers=0",
                "data.validation_fraction=0.2",
                "model.symmetry=none",
                "model.stages=((8,), (16,))",
                "model.dense_features=16",
                "model.size_features=false",
                "optim.name=adam",
                "optim.lr=0.01",
                "train.steps=40",
                "train.batch_size=16",
                "train.eval_every=40",
                "train.checkpoint_every=40",
            ],
        )
        workdir = str(tmp_path / f"run{channels}")
        train(config, workdir, progress=False)
        run = restore_run(workdir, "latest")
        probs = predict_probs(run.model, run.variables, eval_batches(fresh.paths, None, run.preprocess, 40))
        accuracy[channels] = float(np.mean(probs.argmax(1) == fresh.labels))
        with open(os.path.join(workdir, "preprocess.json")) as f:
            assert json.load(f)["channels"] == channels
    assert accuracy[3] > 0.95 and accuracy[1] < 0.7, accuracy
