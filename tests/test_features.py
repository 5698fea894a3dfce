"""Image features: invariant to every rotation and mirror of the pixel grid, equal to direct computations, in
micrometres with a pixel size, computed once per image; and their late fusion with frozen convnets."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import scipy.ndimage

from deepsea.data.images import read_image
from deepsea.errors import UserError
from deepsea.features import FEATURE_GROUPS, FEATURE_NAMES, FeatureTable, folder_features, group_names, image_features


def _organism(rng, h, w):
    """A bright, asymmetric blob with texture on a white background (the raw image's convention)."""
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    r = ((yy - cy) / (0.3 * h)) ** 2 + ((xx - cx) / (0.2 * w)) ** 2 + 0.3 * np.sin(xx / 3.0) * (yy > cy)
    dark = np.clip(1.2 - r, 0, 1) * rng.uniform(0.5, 1, (h, w))
    return (255 - 230 * dark).astype(np.uint8)


def _d4_copies(img):
    """The eight images of the D4 orbit (rectangular images too: D4.act needs square maps)."""
    return [np.ascontiguousarray(np.rot90(m, k)) for m in (img, img[:, ::-1]) for k in range(4)]


@pytest.mark.parametrize("shape", [(31, 40), (64, 64), (17, 90)])
def test_every_feature_is_invariant_to_the_eight_rotations_and_mirrors(shape, rng):
    img = _organism(rng, *shape)
    ref = image_features(img)
    assert ref.shape == (len(FEATURE_NAMES),) and np.all(np.isfinite(ref)) and np.count_nonzero(ref) > 80
    for g, copy in enumerate(_d4_copies(img)):
        np.testing.assert_allclose(image_features(copy), ref, rtol=1e-6, atol=1e-9, err_msg=f"element {g}")


def test_features_are_invariant_on_real_plankton_images(ndsb_root):
    paths = sorted(glob.glob(os.path.join(ndsb_root, "*", "*.jpg")))[::2000][:8]
    for p in paths:
        img = read_image(p)
        ref = image_features(img)
        for copy in _d4_copies(img)[1:]:
            np.testing.assert_allclose(image_features(copy), ref, rtol=1e-6, atol=1e-9, err_msg=p)


def _hu_float64(x):
    """Hu's seven invariants from their definition (the normalised central moments of the image)."""
    y, x_ = np.mgrid[: x.shape[0], : x.shape[1]].astype(np.float64)
    m00 = x.sum()
    cy, cx = (y * x).sum() / m00, (x_ * x).sum() / m00
    eta = lambda p, q: ((y - cy) ** p * (x_ - cx) ** q * x).sum() / m00 ** (1 + (p + q) / 2)  # noqa: E731
    n20, n02, n11, n30, n03, n21, n12 = eta(2, 0), eta(0, 2), eta(1, 1), eta(3, 0), eta(0, 3), eta(2, 1), eta(1, 2)
    a, b = n30 + n12, n21 + n03
    return np.array(
        [
            n20 + n02,
            (n20 - n02) ** 2 + 4 * n11**2,
            (n30 - 3 * n12) ** 2 + (3 * n21 - n03) ** 2,
            a**2 + b**2,
            (n30 - 3 * n12) * a * (a**2 - 3 * b**2) + (3 * n21 - n03) * b * (3 * a**2 - b**2),
            (n20 - n02) * (a**2 - b**2) + 4 * n11 * a * b,
            (3 * n21 - n03) * a * (a**2 - 3 * b**2) - (n30 - 3 * n12) * b * (3 * a**2 - b**2),
        ]
    )


def test_features_match_direct_computations_and_scale_with_the_pixel_size(rng):
    from skimage.filters import threshold_otsu

    img = _organism(rng, 45, 60)
    f = dict(zip(FEATURE_NAMES, image_features(img), strict=True))
    inv = 255 - img
    mask = inv > threshold_otsu(inv)
    labels, n = scipy.ndimage.label(mask, structure=np.ones((3, 3)))
    assert (f["size_short"], f["size_long"]) == (45, 60) and f["regions"] == n
    assert f["area"] == np.bincount(labels.ravel())[1:].max()
    assert f["foreground_share"] == pytest.approx(mask.mean())
    assert f["image_mean"] == pytest.approx(inv.mean() / 255)
    hu = _hu_float64(inv / 255.0)
    hu[6] = abs(hu[6])
    np.testing.assert_allclose(
        [f[f"hu{i}"] for i in range(1, 8)], -np.sign(hu) * np.log10(np.abs(hu) + 1e-30), rtol=1e-6
    )
    um = dict(zip(FEATURE_NAMES, image_features(img, pixel_size=2.5), strict=True))
    for name in FEATURE_NAMES:
        scale = 2.5 if name in ("size_short", "size_long", "perimeter", "major_axis", "minor_axis") else 1.0
        scale = 2.5**2 if name == "area" else 2.5 if name == "equivalent_diameter" else scale
        assert um[name] == pytest.approx(f[name] * scale, rel=1e-9), name


def test_a_blank_image_and_a_single_pixel_give_finite_features():
    for img in (np.full((20, 30), 255, np.uint8), np.zeros((1, 1), np.uint8), np.full((1, 7), 9, np.uint8)):
        assert np.all(np.isfinite(image_features(img)))


def test_folder_features_are_computed_once_and_name_a_corrupt_image(tmp_path, monkeypatch, rng):
    from PIL import Image

    from deepsea import features
    from deepsea.data import BadImageError

    monkeypatch.setenv("DEEPSEA_DATA", str(tmp_path / "cache"))
    paths = []
    for i in range(5):
        paths.append(str(tmp_path / "imgs" / f"{i}.png"))
        os.makedirs(os.path.dirname(paths[-1]), exist_ok=True)
        Image.fromarray(_organism(rng, 20 + i, 30)).save(paths[-1])
    table = folder_features(str(tmp_path / "imgs"), paths, workers=2, progress=False)
    np.testing.assert_allclose(table.values[3], image_features(read_image(paths[3])), rtol=1e-6)

    class NoPool:
        def __init__(self, *args, **kwargs):
            raise AssertionError("computed again")

    monkeypatch.setattr(features.concurrent.futures, "ProcessPoolExecutor", NoPool)
    again = folder_features(str(tmp_path / "imgs"), paths[::-1], workers=2, progress=False)
    np.testing.assert_array_equal(again.values, table.values[::-1])
    monkeypatch.undo()
    monkeypatch.setenv("DEEPSEA_DATA", str(tmp_path / "cache"))
    (tmp_path / "imgs" / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(BadImageError, match=r"bad\.png"):
        folder_features(str(tmp_path / "imgs"), [str(tmp_path / "imgs" / "bad.png")], workers=1, progress=False)


def test_fusion_starts_at_the_convnets_and_learns_what_the_features_add(rng):
    from deepsea.fusion import FusionSettings, fit_fusion, fusion_probs

    n, k = 600, 4
    labels = rng.integers(0, k, n)
    feats = rng.standard_normal((n, 6)).astype(np.float32)
    feats[:, 0] += 3.0 * (labels % 2)  # the features tell odd from even classes (Bayes accuracy 0.93)
    logp = np.log(np.full((n, k), 1.0 / k, np.float32))
    logp[np.arange(n), labels // 2 * 2] += 0.0  # the convnets know nothing
    untrained = fit_fusion(feats, logp, labels, FusionSettings(steps=0, restarts=2))
    np.testing.assert_allclose(fusion_probs(untrained, feats, logp, 80, 0.5), np.full((n, k), 0.25), rtol=1e-6)
    params = fit_fusion(feats[:400], logp[:400], labels[:400], FusionSettings(steps=300, restarts=3, lr=1e-3))
    assert len(params) == 3
    probs = fusion_probs(params, feats[400:], logp[400:], 80, 0.5)
    odd = probs[:, 1] + probs[:, 3]
    assert np.mean((odd > 0.5) == (labels[400:] % 2 == 1)) > 0.85  # held-out images
    assert -np.mean(np.log(probs[np.arange(200), labels[400:]])) < np.log(k) - 0.2


def test_fusion_with_uninformative_features_stays_at_the_convnets(rng):
    """Early stopping on held-out images: noise features cannot make the fused predictions worse than the
    convnets' beyond a small margin (without it they did, overfitting the fitting images)."""
    from deepsea.fusion import FusionSettings, fit_fusion, fusion_probs

    n, k = 900, 10
    labels = rng.integers(0, k, n)
    logits = rng.standard_normal((n, k)) + 2.0 * np.eye(k)[labels]
    logp = (logits - np.log(np.exp(logits).sum(1, keepdims=True))).astype(np.float32)
    feats = rng.standard_normal((n, 40)).astype(np.float32)
    params = fit_fusion(feats[:600], logp[:600], labels[:600], FusionSettings(steps=300, restarts=2, lr=1e-3))
    fused = fusion_probs(params, feats[600:], logp[600:], 80, 0.5)
    before = -np.mean(logp[600:][np.arange(300), labels[600:]])
    after = -np.mean(np.log(fused[np.arange(300), labels[600:]]))
    assert after < before + 0.01


def test_local_binary_patterns_are_the_histogram_of_uniform_codes(rng):
    """The lbp features against a direct count of rotation-invariant uniform patterns (8 neighbours at radius 1,
    sampled bilinearly as skimage does), on the inverted image."""
    from skimage.feature import local_binary_pattern

    img = _organism(rng, 33, 41)
    f = dict(zip(FEATURE_NAMES, image_features(img), strict=True))
    lbp = np.array([f[f"lbp{i}"] for i in range(10)])
    inv = 255 - img.astype(np.int64)
    codes = local_binary_pattern(inv.astype(np.uint8), 8, 1, method="default").astype(np.int64)
    bits = (codes[..., None] >> np.arange(8)) & 1
    transitions = (bits != np.roll(bits, 1, axis=-1)).sum(-1)
    uniform = np.where(transitions <= 2, bits.sum(-1), 9)  # rotation-invariant uniform: the count of ones, else 9
    np.testing.assert_allclose(lbp, np.bincount(uniform.ravel(), minlength=10) / uniform.size, atol=1e-12)
    assert lbp.sum() == pytest.approx(1.0) and np.count_nonzero(lbp) >= 3


def test_feature_groups_select_their_columns_and_an_unknown_group_is_named():
    """``deepsea fuse --features``: a group's columns by name, in the table's order; no group, or an unknown
    one, is an error that names it and the known groups."""
    table = FeatureTable(("a", "b"), FEATURE_NAMES, np.arange(2.0 * len(FEATURE_NAMES)).reshape(2, -1), "")
    sub = table.select(["lbp", "shape"])
    assert sub.names == FEATURE_GROUPS["shape"] + FEATURE_GROUPS["lbp"] and len(sub.names) == len(set(sub.names))
    np.testing.assert_array_equal(sub.values, table.values[:, [FEATURE_NAMES.index(n) for n in sub.names]])
    assert sum(map(len, FEATURE_GROUPS.values())) == len(FEATURE_NAMES) == len(set(FEATURE_NAMES))
    with pytest.raises(UserError, match=r"\['texture'\]: expected some of \['haralick', 'hu', 'lbp'"):
        group_names(["texture"])
    with pytest.raises(UserError, match="expected some of"):
        group_names([])
