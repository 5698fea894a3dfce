"""The JAX affine warp against the SciPy warp of deepsea.data.transforms (the reference), its gradients against
finite differences of that reference, and the batched form against one image at a time."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from xla_flags import COMMAND_LINE_EMITTERS

from deepsea.data import device_warp as dw
from deepsea.data.transforms import TRAIN_RANGES, affine_matrix, params_from_unit, warp

SHAPES = [(1, 1), (30, 19), (23, 40, 3)]


def _draw(rng, n):
    return [params_from_unit(rng.uniform(size=7), TRAIN_RANGES) for _ in range(n)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_the_jax_warp_is_the_scipy_warp_to_float_rounding(shape, rng):
    image = rng.uniform(size=shape).astype(np.float32)
    out_size, scale = 31, 25.0 / max(shape[:2])
    for p in _draw(rng, 5):
        ref = warp(image, affine_matrix(shape[:2], out_size, scale, p), out_size, fill=0.25)
        forward = dw.affine_matrix(shape[:2], out_size, scale, dw.WarpParams.from_params(p))
        np.testing.assert_allclose(np.asarray(forward), affine_matrix(shape[:2], out_size, scale, p), atol=1e-4)
        got = np.asarray(jax.jit(dw.warp, static_argnums=2)(image, forward, out_size, 0.25))
        assert got.shape == ref.shape
        close = np.isclose(got, ref, atol=1e-4)
        # float32 coordinates may put an output pixel that lies within rounding of the image's edge on the other
        # side of it (the fill instead of the border value): at most a few pixels a transform
        assert (~close).sum() <= 3, (p, np.abs(got - ref).max())


def test_the_gradients_are_the_references_finite_differences(rng):
    """d/dparams and d/dimage of a weighted sum of the warped image, against central differences of the SciPy
    warp in float64.  The image is a linear ramp, which bilinear interpolation reproduces exactly, and every output
    pixel samples inside it: the sum is then smooth in the parameters (elsewhere it has kinks at pixel boundaries,
    where a difference quotient is not a derivative), so the two must agree closely."""
    import dataclasses

    from deepsea.data.transforms import AugmentParams

    rows, cols = np.mgrid[0:60, 0:64]
    image = (0.3 * rows - 0.2 * cols + 1.0).astype(np.float32)
    out_size, scale = 24, 1.0
    p = AugmentParams(rotation=37.0, shift_row=1.5, shift_col=-2.0, zoom=1.1, shear=8.0, stretch=1.1, flip=True)
    weights = rng.standard_normal((out_size, out_size))

    def jax_value(image, wp):
        return jnp.sum(dw.warp(image, dw.affine_matrix(image.shape, out_size, scale, wp), out_size) * weights)

    g_par = jax.grad(jax_value, argnums=1)(jnp.asarray(image), dw.WarpParams.from_params(p))

    def ref_value(image, p):
        return float(np.sum(warp(image, affine_matrix(image.shape, out_size, scale, p), out_size) * weights))

    for name, eps in (("rotation", 1e-2), ("shift_row", 1e-2), ("shift_col", 1e-2), ("zoom", 1e-3), ("shear", 1e-2),
                      ("stretch", 1e-3)):  # fmt: skip
        v = getattr(p, name)
        up = ref_value(image, dataclasses.replace(p, **{name: v + eps}))
        down = ref_value(image, dataclasses.replace(p, **{name: v - eps}))
        np.testing.assert_allclose(float(getattr(g_par, name)), (up - down) / (2 * eps), rtol=2e-3, atol=1e-3)
    noise = rng.uniform(size=image.shape).astype(np.float32)  # the image gradient: any image, the warp is linear
    g_noise = jax.grad(jax_value)(jnp.asarray(noise), dw.WarpParams.from_params(p))
    for i, j in ((30, 32), (25, 40), (0, 0)):
        bumped = noise.astype(np.float64).copy()
        bumped[i, j] += 1.0  # a unit step is the exact derivative of a linear map
        np.testing.assert_allclose(float(g_noise[i, j]), ref_value(bumped, p) - ref_value(noise, p), atol=1e-3)


def test_a_padded_batch_of_different_sizes_warps_like_each_image_alone(rng):
    shapes = [(9, 14), (30, 7), (1, 1), (25, 25)]
    out_size = 21
    canvas = np.zeros((len(shapes), 30, 30, 1), np.float32)
    images = []
    for k, (h, w) in enumerate(shapes):
        im = rng.uniform(size=(h, w, 1)).astype(np.float32)
        canvas[k, :h, :w] = im
        images.append(im)
    params = _draw(rng, len(shapes))
    scales = jnp.asarray([18.0 / max(s) for s in shapes])
    wp = dw.WarpParams.from_params(params)
    sizes = jnp.asarray(shapes, jnp.int32)
    forwards = jax.vmap(lambda s, sc, p: dw.affine_matrix((s[0], s[1]), out_size, sc, p))(sizes, scales, wp)
    batch = jax.jit(dw.warp_batch, static_argnums=3, compiler_options=COMMAND_LINE_EMITTERS)(
        jnp.asarray(canvas), sizes, forwards, out_size
    )
    for k, im in enumerate(images):
        alone = jax.jit(dw.warp, static_argnums=2, compiler_options=COMMAND_LINE_EMITTERS)(im, forwards[k], out_size)
        np.testing.assert_array_equal(np.asarray(batch[k]), np.asarray(alone))


def _host_and_device(image, pp, params, canvas):
    """The host's patches (preprocess_inputs) and the device's (device_inputs, batched, then warp_inputs)."""
    from deepsea.data.pipeline import device_inputs, preprocess_inputs

    host = preprocess_inputs(image, pp, params)
    shipped = device_inputs(image, pp, params, canvas)
    batch = {k: jnp.asarray(v[None]) for k, v in shipped.items()}
    device = jax.jit(dw.warp_inputs, static_argnums=1)(batch, pp)
    return host, {k: np.asarray(v[0]) for k, v in device.items()}, shipped


@pytest.mark.parametrize(
    "shape, settings",
    [
        ((1, 1), {}),
        ((30, 19), {"rescale": "moments:8"}),
        ((23, 40, 3), {"channels": 3, "background": "black"}),
        ((40, 33), {"extra_rotations": (45.0,), "second_size": 15, "background": "black"}),
    ],
    ids=str,
)
def test_device_augmentation_makes_the_hosts_patches_to_float_rounding(shape, settings, rng):
    """data.augment_on='device': uint8 images in a canvas, warped in the step, are the loader's patches; inverted
    grayscale on white, dark field, RGB, the moments rescale, cp8's extra rotation and the multiscale second patch."""
    import dataclasses

    from deepsea.data import Preprocess, Rescale

    rescale = Rescale.parse(settings.pop("rescale", "max_side:20"))
    pp = dataclasses.replace(Preprocess(size=23, rescale=rescale, **settings), mean=0.3, std=0.2)
    image = rng.integers(0, 256, shape).astype(np.uint8)
    for p in _draw(rng, 4):
        host, device, shipped = _host_and_device(image, pp, p, canvas=48)
        assert shipped["canvas"].shape[:2] == (48, 48) and shipped["canvas"].dtype == np.uint8
        assert sorted(device) == sorted(host)
        for key in host:
            assert device[key].shape == host[key].shape, key
            far = ~np.isclose(device[key], host[key], atol=1e-4)
            assert far.sum() <= 3 * device[key].shape[-1], (key, np.abs(device[key] - host[key]).max())  # edges


def test_an_image_larger_than_the_canvas_is_shrunk_by_block_means_where_its_pixels_were(rng):
    """A 96 x 64 ramp in a canvas of 40: shrunk by blocks of 3, its block centres where the original pixels'
    centres were (a ramp's block mean is the ramp at the block's centre), so the patch is the host's to the uint8
    rounding of the block means; a wrong centre would shift the ramp by a pixel or more."""
    from deepsea.data import Preprocess, Rescale

    rows, cols = np.mgrid[0:96, 0:64]
    image = (20 + rows + cols).astype(np.uint8)  # blocks of 3 average to whole numbers: no rounding
    pp = Preprocess(size=21, rescale=Rescale.parse("factor:0.2"), background="black")
    out_r, out_c = np.mgrid[0:21, 0:21]
    for p in _draw(rng, 3):
        host, device, shipped = _host_and_device(image, pp, p, canvas=40)
        assert tuple(shipped["canvas_size"]) == (32, 22)
        inv = np.linalg.inv(affine_matrix((96, 64), 21, 0.2, p))
        src_r = inv[0, 0] * out_r + inv[0, 1] * out_c + inv[0, 2]
        src_c = inv[1, 0] * out_r + inv[1, 1] * out_c + inv[1, 2]
        # beyond the first and last blocks' centres (1 and 94; the last column's block holds column 63 alone, its
        # centre taken at 64, so 61 for columns) the shrunk image is clamped where the original still slopes
        deep = (src_r > 1) & (src_r < 94) & (src_c > 1) & (src_c < 61)
        assert deep.sum() > 20
        np.testing.assert_allclose(device["image"][deep, 0], host["image"][deep, 0], atol=1e-5)


def test_device_augmentation_refuses_what_it_cannot_warp(tmp_path, monkeypatch):
    from deepsea.configs import apply_overrides, load_experiment
    from deepsea.errors import UserError
    from deepsea.train import train

    monkeypatch.setenv("DEEPSEA_DATA", str(tmp_path / "data"))
    config = load_experiment("experiments/synthetic.py", small=True)
    apply_overrides(config, ["data.augment_on=gpu"])
    with pytest.raises(UserError, match=r"data.augment_on=.gpu.: expected .host.*or .device."):
        train(config, str(tmp_path / "a"), progress=False)
    apply_overrides(config, ["data.augment_on=device", "aug.elastic=2.0"])
    with pytest.raises(UserError, match=r"elastic distortions .aug.elastic. and colour jitter .* host only"):
        train(config, str(tmp_path / "b"), progress=False)
