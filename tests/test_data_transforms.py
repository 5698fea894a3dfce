import dataclasses
import math

import numpy as np
import pytest
import scipy.stats
import skimage.transform

from deepsea.data import (
    NO_AUGMENTATION,
    TRAIN_RANGES,
    TTA_RANGES,
    AugmentParams,
    AugmentRanges,
    Rescale,
    affine_matrix,
    halton,
    sample_params,
    tta_params,
    warp,
)

N_DRAWS = 4000


def _draws(ranges, n=N_DRAWS, seed=0):
    rng = np.random.default_rng(seed)
    ps = [sample_params(rng, ranges) for _ in range(n)]
    return {k: np.array([getattr(p, k) for p in ps], dtype=np.float64) for k in AugmentParams.__annotations__}


def test_sampled_parameters_stay_in_range_and_follow_their_distributions():
    r = TRAIN_RANGES
    d = _draws(r)
    assert d["rotation"].min() >= 0 and d["rotation"].max() < 360
    for k in ("shift_row", "shift_col"):
        assert np.abs(d[k]).max() <= 10
    assert np.abs(d["shear"]).max() <= 20
    assert d["zoom"].min() >= 1 / 1.6 and d["zoom"].max() <= 1.6
    assert d["stretch"].min() >= 1 / 1.3 and d["stretch"].max() <= 1.3
    # Kolmogorov-Smirnov against the specified distributions
    tests = {
        "rotation": scipy.stats.uniform(0, 360),
        "shift_row": scipy.stats.uniform(-10, 20),
        "shift_col": scipy.stats.uniform(-10, 20),
        "shear": scipy.stats.uniform(-20, 40),
        "zoom": scipy.stats.loguniform(1 / 1.6, 1.6),
        "stretch": scipy.stats.loguniform(1 / 1.3, 1.3),
    }
    for k, dist in tests.items():
        assert scipy.stats.kstest(d[k], dist.cdf).pvalue > 1e-3, k
    # and against a wrong distribution the test does reject: uniform (not log-uniform) zoom
    assert scipy.stats.kstest(d["zoom"], scipy.stats.uniform(1 / 1.6, 1.6 - 1 / 1.6).cdf).pvalue < 1e-3
    assert scipy.stats.binomtest(int(d["flip"].sum()), N_DRAWS, 0.5).pvalue > 1e-3


def test_zero_ranges_give_the_plain_rescale():
    d = _draws(NO_AUGMENTATION, n=50)
    assert (d["rotation"] == 0).all() and (d["zoom"] == 1).all() and not d["flip"].any()
    assert (d["shift_row"] == 0).all() and (d["shear"] == 0).all() and (d["stretch"] == 1).all()


def test_invalid_ranges():
    with pytest.raises(ValueError, match=r"zoom=0\.5 must be >= 1"):
        AugmentRanges(zoom=0.5)
    with pytest.raises(ValueError, match="unknown rescale kind 'fit'"):
        Rescale("fit", 1.0)  # type: ignore[arg-type]


def _explicit_source_coords(r, c, in_shape, out_size, scale, p):
    """Inverts each step of the composed transform one by one, in float64 (no matrices)."""
    h, w = in_shape
    co = (out_size - 1) / 2
    y, x = r - co - p.shift_row, c - co - p.shift_col
    t = math.radians(p.rotation)
    y, x = math.cos(t) * y + math.sin(t) * x, -math.sin(t) * y + math.cos(t) * x  # undo rotation
    x = x - math.tan(math.radians(p.shear)) * y  # undo shear
    y, x = y / (scale * p.zoom / p.stretch), x / (scale * p.zoom * p.stretch)  # undo zoom and stretch
    if p.flip:
        x = -x
    return y + (h - 1) / 2, x + (w - 1) / 2


def _bilinear_reference(img, y, x):
    h, w = img.shape
    if not (-0.5 <= y <= h - 0.5 and -0.5 <= x <= w - 0.5):
        return 0.0
    y, x = min(max(y, 0.0), h - 1.0), min(max(x, 0.0), w - 1.0)
    y0, x0 = min(math.floor(y), h - 2) if h > 1 else 0, min(math.floor(x), w - 2) if w > 1 else 0
    dy, dx = y - y0, x - x0
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    return (
        img[y0, x0] * (1 - dy) * (1 - dx)
        + img[y0, x1] * (1 - dy) * dx
        + img[y1, x0] * dy * (1 - dx)
        + img[y1, x1] * dy * dx
    )


@pytest.mark.parametrize("seed", range(4))
def test_warp_matches_an_independent_step_by_step_computation(seed):
    rng = np.random.default_rng(seed)
    img = rng.random((23, 17))
    p = sample_params(rng, TRAIN_RANGES)
    scale = Rescale("max_side", 25).factor(23, 17)
    out = warp(img, affine_matrix(img.shape, 29, scale, p), 29)
    want = np.array(
        [
            [_bilinear_reference(img, *_explicit_source_coords(r, c, img.shape, 29, scale, p)) for c in range(29)]
            for r in range(29)
        ]
    )
    np.testing.assert_allclose(out, want, atol=2e-5)


def test_warp_agrees_with_skimage_inside_the_image():
    rng = np.random.default_rng(7)
    img = rng.random((40, 40))
    m = affine_matrix(img.shape, 40, 0.9, AugmentParams(rotation=33, zoom=1.1, shear=8, stretch=1.1, flip=True))
    ours = warp(img, m, 40)
    # skimage works in (x, y) = (col, row): swap the axes of the inverse map
    swap = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=np.float64)
    tform = skimage.transform.AffineTransform(matrix=swap @ np.linalg.inv(m) @ swap)
    theirs = skimage.transform.warp(img, tform, output_shape=(40, 40), order=1, mode="edge", preserve_range=True)
    inside = ours != 0
    assert inside.mean() > 0.5
    np.testing.assert_allclose(ours[inside], theirs[inside], atol=1e-5)


def test_known_transforms_are_exact_permutations():
    img = np.random.default_rng(1).random((31, 31)).astype(np.float32)
    quarter = warp(img, affine_matrix(img.shape, 31, 1.0, AugmentParams(rotation=90)), 31)
    np.testing.assert_allclose(quarter, np.rot90(img), atol=1e-5)
    mirror = warp(img, affine_matrix(img.shape, 31, 1.0, AugmentParams(flip=True)), 31)
    np.testing.assert_allclose(mirror, img[:, ::-1], atol=1e-6)
    shifted = warp(img, affine_matrix(img.shape, 31, 1.0, AugmentParams(shift_row=3, shift_col=-2)), 31)
    np.testing.assert_allclose(shifted[3:, :-2], img[:-3, 2:], atol=1e-6)
    assert (shifted[:3] == 0).all() and (shifted[:, -2:] == 0).all()


def test_rescale_strategies():
    assert Rescale("max_side", 85).factor(170, 40) == 0.5
    assert Rescale("factor", 0.2).factor(170, 40) == 0.2
    assert Rescale("none").factor(170, 40) == 1.0
    # 400 px wide -> 85 px wide centred in 95: columns 5..89 are inside
    img = np.zeros((100, 400))
    out = warp(img + 1, affine_matrix(img.shape, 95, 85 / 400), 95)
    cols = np.flatnonzero(out[47] > 0.5)
    assert cols.min() == 5 and cols.max() == 89


def test_halton_points():
    pts = halton(70)
    assert pts.shape == (70, 7)
    # the first point is the radical inverse of 1 in the first seven primes
    np.testing.assert_allclose(pts[0], [1 / 2, 1 / 3, 1 / 5, 1 / 7, 1 / 11, 1 / 13, 1 / 17])
    np.testing.assert_allclose(pts[1, :2], [1 / 4, 2 / 3])
    # more uniform than random points: every marginal's KS distance is small, discrepancy lower
    for d in range(7):
        assert scipy.stats.kstest(pts[:, d], "uniform").statistic < 0.1
    rand = np.random.default_rng(0).random((70, 7))
    from scipy.stats import qmc

    assert qmc.discrepancy(pts) < qmc.discrepancy(rand)


def test_ghalton_gives_scipys_points_or_a_clear_error():
    """ghalton is optional (it needs clang): where installed, its points are scipy's; where not, asking for it
    says how to install it and the default falls back to scipy."""
    scipy_pts = halton(70, engine="scipy")
    np.testing.assert_array_equal(halton(70), halton(70, engine="auto"))
    try:
        import ghalton  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"ghalton is not installed: pip install 'deepsea\[ghalton\]'"):
            halton(5, engine="ghalton")
        np.testing.assert_array_equal(halton(70), scipy_pts)
    else:
        np.testing.assert_allclose(halton(70, engine="ghalton"), scipy_pts, rtol=0, atol=1e-12)


def test_tta_transforms_use_the_milder_ranges():
    ps = tta_params(70)
    assert len(ps) == 70 and len(set(ps)) == 70
    assert max(abs(p.shear) for p in ps) <= TTA_RANGES.shear == 10
    assert max(max(abs(p.shift_row), abs(p.shift_col)) for p in ps) <= 8
    assert all(1 / 1.4 <= p.zoom <= 1.4 and 1 / 1.2 <= p.stretch <= 1.2 for p in ps)
    assert 25 <= sum(p.flip for p in ps) <= 45
    assert tta_params(70) == ps  # deterministic


def test_moments_rescale_centres_the_centroid_and_scales_the_radius_of_gyration(rng):
    """data.rescale=moments:R: the organism's intensity centroid lands on the patch centre and its radius of
    gyration becomes R pixels (measured on the patch, float64), for any shift of the organism in its image; and
    the preprocessing commutes with the eight symmetries, as the max-side rescale does."""
    from deepsea.data.pipeline import Preprocess, preprocess_image
    from deepsea.data.transforms import Rescale

    pp = Preprocess(size=47, rescale=Rescale.parse("moments:8"))
    img = np.full((40, 52), 255, np.uint8)
    img[8:20, 30:44] = rng.integers(0, 120, (12, 14))  # a dark organism off-centre on white
    x = preprocess_image(img, pp)[..., 0].astype(np.float64) * pp.std + pp.mean  # the inverted patch: bright on dark
    rows, cols = np.mgrid[0:47, 0:47]
    m = x.sum()
    cr, cc = (rows * x).sum() / m, (cols * x).sum() / m
    assert abs(cr - 23) < 0.3 and abs(cc - 23) < 0.3
    radius = np.sqrt((((rows - cr) ** 2 + (cols - cc) ** 2) * x).sum() / m)
    assert abs(radius - 8) < 0.4  # bilinear resampling blurs a little
    for k in range(4):
        for flip in (False, True):
            copy = np.rot90(img[:, ::-1] if flip else img, k)
            want = np.rot90(
                (preprocess_image(img, pp)[..., 0])[:, ::-1] if flip else preprocess_image(img, pp)[..., 0], k
            )
            np.testing.assert_allclose(preprocess_image(np.ascontiguousarray(copy), pp)[..., 0], want, atol=1e-5)
    with pytest.raises(ValueError, match="depends on the image"):
        Rescale.parse("moments:8").factor(10, 10)


def test_elastic_distortion_is_a_smooth_displacement_drawn_last(rng):
    """aug.elastic: a Gaussian-smoothed random displacement of the output pixels, as large as asked; a constant
    displacement is the translated affine warp (the reference path); the affine draws are those without it."""
    import dataclasses

    from deepsea.data.transforms import AugmentRanges, elastic_field, sample_params

    plain = sample_params(np.random.default_rng(5), AugmentRanges())
    ela = sample_params(np.random.default_rng(5), AugmentRanges(elastic=3.0, elastic_sigma=4.0))
    assert dataclasses.replace(ela, elastic=0.0, elastic_sigma=4.0, elastic_seed=0) == plain
    field = elastic_field(ela, 47)
    assert field.shape == (2, 47, 47) and np.abs(field).max() == pytest.approx(3.0)
    np.testing.assert_array_equal(field, elastic_field(ela, 47))  # a function of the seed
    assert np.corrcoef(field[0, :, :-1].ravel(), field[0, :, 1:].ravel())[0, 1] > 0.9  # smooth
    image = rng.uniform(size=(30, 36)).astype(np.float32)
    forward = affine_matrix((30, 36), 31, 0.8, AugmentParams(rotation=30.0))
    const = np.stack([np.full((31, 31), 1.25), np.full((31, 31), -0.5)])
    moved = np.array([[1, 0, -1.25], [0, 1, 0.5], [0, 0, 1.0]]) @ forward
    np.testing.assert_allclose(warp(image, forward, 31, displacement=const), warp(image, moved, 31), atol=1e-5)
    assert not np.allclose(warp(image, forward, 31, displacement=field[:, :31, :31]), warp(image, forward, 31))
    from deepsea.errors import UserError

    with pytest.raises(UserError, match=r"aug\.elastic=-1\.0"):
        AugmentRanges(elastic=-1.0)


def _scipy_warp(image, forward, out_size, fill, displacement=None):
    """The reference: SciPy's order-1 sampling with mode 'nearest', channel by channel, and the fill outside."""
    import scipy.ndimage

    inv = np.linalg.inv(forward)
    image = np.asarray(image, np.float32)
    h, w = image.shape[:2]
    rows, cols = np.mgrid[0:out_size, 0:out_size].astype(np.float64)
    if displacement is not None:
        rows, cols = rows + displacement[0], cols + displacement[1]
    src_r = inv[0, 0] * rows + inv[0, 1] * cols + inv[0, 2]
    src_c = inv[1, 0] * rows + inv[1, 1] * cols + inv[1, 2]
    inside = (src_r >= -0.5) & (src_r <= h - 0.5) & (src_c >= -0.5) & (src_c <= w - 0.5)
    out = []
    for ch in [image] if image.ndim == 2 else [image[..., i] for i in range(image.shape[-1])]:
        if displacement is None:
            warped = scipy.ndimage.affine_transform(ch, inv[:2, :2], offset=inv[:2, 2], output_shape=(out_size,) * 2,
                                                    order=1, mode="nearest", prefilter=False)  # fmt: skip
        else:
            warped = scipy.ndimage.map_coordinates(ch, [src_r, src_c], order=1, mode="nearest", prefilter=False)
        out.append(np.where(inside, warped, fill).astype(np.float32))
    return out[0] if image.ndim == 2 else np.stack(out, axis=-1)


@pytest.mark.parametrize("shape", [(1, 1), (30, 19), (23, 40, 3), (64, 64)], ids=str)
def test_the_warp_is_scipys_order_1_sampling(shape, rng):
    from deepsea.data.transforms import TRAIN_RANGES, affine_matrix, elastic_field, params_from_unit, warp

    image = rng.uniform(0, 1, shape).astype(np.float32)
    for k in range(6):
        p = params_from_unit(rng.uniform(size=7), TRAIN_RANGES)
        out_size = (17, 31, 47)[k % 3]
        forward = affine_matrix(shape[:2], out_size, 30.0 / max(shape[:2]), p)
        field = elastic_field(dataclasses.replace(p, elastic=3.0, elastic_seed=k), out_size) if k % 2 else None
        got, ref = warp(image, forward, out_size, 0.25, field), _scipy_warp(image, forward, out_size, 0.25, field)
        assert got.shape == ref.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, ref, atol=1e-6)


def test_the_affine_map_is_the_product_of_its_five_factors(rng):
    """affine_matrix, multiplied out, against T(c_out + shift) . R . Shear . Zoom . Mirror . T(-c_in) in float64."""
    from deepsea.data.transforms import TRAIN_RANGES, affine_matrix, params_from_unit

    def lin(m):
        out = np.eye(3)
        out[:2, :2] = m
        return out

    def move(dr, dc):
        return np.array([[1.0, 0.0, dr], [0.0, 1.0, dc], [0.0, 0.0, 1.0]])

    for _ in range(20):
        p = params_from_unit(rng.uniform(size=7), TRAIN_RANGES)
        h, w, out = (int(v) for v in rng.integers((1, 1, 5), (90, 90, 96)))
        scale = rng.uniform(0.1, 2)
        centre = (rng.uniform(0, h), rng.uniform(0, w)) if rng.uniform() < 0.5 else None
        cr, cc = ((h - 1) / 2, (w - 1) / 2) if centre is None else centre
        t, s = math.radians(p.rotation), math.radians(p.shear)
        expected = (move((out - 1) / 2 + p.shift_row, (out - 1) / 2 + p.shift_col)
                    @ lin([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]]) @ lin([[1, 0], [math.tan(s), 1]])
                    @ lin(np.diag([scale * p.zoom / p.stretch, scale * p.zoom * p.stretch]))
                    @ lin(np.diag([1, -1 if p.flip else 1])) @ move(-cr, -cc))  # fmt: skip
        np.testing.assert_allclose(affine_matrix((h, w), out, scale, p, centre), expected, rtol=1e-12, atol=1e-10)
