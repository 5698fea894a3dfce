"""oneDNN convolutions and max pooling (deepsea.onednn) against float64 numpy and XLA: values, gradients, dispatch."""

import functools
import os
import pathlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy_reference import conv_ref, max_pool_ref

from deepsea import backends, layers
from deepsea.backends import onednn, xla


@pytest.fixture(scope="module", autouse=True)
def _need_onednn():
    """oneDNN is a dependency on Linux x86-64: CI must have it; elsewhere the tests say why they cannot run."""
    reason = onednn.unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the oneDNN convolutions: {reason}")
    pytest.skip(f"oneDNN convolutions unavailable: {reason}")


CASES = [
    ((2, 9, 9, 3), (3, 3, 3, 5), "SAME"),
    ((3, 7, 6, 8), (3, 3, 8, 16), "SAME"),
    ((2, 6, 8, 4), (3, 3, 4, 7), "VALID"),
    ((1, 8, 8, 5), (5, 5, 5, 2), ((2, 1), (0, 3))),
    ((2, 5, 5, 6), (1, 1, 6, 4), "SAME"),
    ((4, 11, 11, 32), (3, 3, 32, 24), "SAME"),
    ((2, 4, 5, 3), (2, 3, 3, 3), ((1, 0), (2, 2))),
]


@pytest.mark.parametrize("xs, ws, padding", CASES)
def test_conv_and_its_gradients_match_numpy(xs, ws, padding, rng):
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    y_ref, grads = conv_ref(x, w, padding)
    y, vjp = jax.vjp(jax.jit(lambda x, w: onednn.conv(x, w, padding)), jnp.asarray(x), jnp.asarray(w))
    scale = np.sqrt(np.prod(ws[:3]))  # the typical size of one output
    np.testing.assert_allclose(np.asarray(y), y_ref, rtol=1e-5, atol=1e-5 * scale)
    g = rng.standard_normal(y_ref.shape).astype(np.float32)
    dx, dw = vjp(jnp.asarray(g))
    dx_ref, dw_ref = grads(g)
    np.testing.assert_allclose(np.asarray(dx), dx_ref, rtol=1e-5, atol=1e-5 * np.sqrt(np.prod(ws[:2]) * ws[3]))
    np.testing.assert_allclose(np.asarray(dw), dw_ref, rtol=1e-5, atol=1e-5 * np.sqrt(np.prod(y_ref.shape[:3])))


def test_conv_matches_xla_under_jit_grad_and_vmap(rng):
    x = jnp.asarray(rng.standard_normal((3, 2, 7, 7, 4)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 3, 4, 6)), jnp.float32)

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.tanh(jax.vmap(conv)(x, w)))

    ours = jax.jit(jax.value_and_grad(loss(onednn.conv), argnums=(0, 1)))(x, w)
    ref = jax.jit(jax.value_and_grad(loss(xla.conv_reference), argnums=(0, 1)))(x, w)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_conv_is_a_custom_call_in_the_compiled_cpu_step():
    x, w = jnp.zeros((2, 8, 8, 4)), jnp.zeros((3, 3, 4, 5))
    step = jax.jit(jax.grad(lambda x, w: jnp.sum(onednn.conv(x, w) ** 2), argnums=(0, 1)))
    hlo = step.lower(x, w).compile().as_text()
    for target in ("deepsea_conv_fwd", "deepsea_conv_bwd_data", "deepsea_conv_bwd_weights"):
        assert target in hlo
    assert "convolution(" not in hlo  # XLA's own convolution is only the other platforms' branch


@pytest.mark.parametrize(
    "x, w, strides, padding",
    [
        (np.zeros((1, 5, 5, 3), np.float64), np.zeros((3, 3, 3, 2)), (1, 1), "SAME"),
        (np.zeros((1, 5, 5, 3), jnp.bfloat16), np.zeros((3, 3, 3, 2), jnp.bfloat16), (1, 1), "SAME"),
        (np.zeros((1, 5, 5, 3)), np.zeros((3, 3, 3, 2)), (2, 2), "SAME"),
        (np.zeros((1, 5, 5, 3)), np.zeros((3, 3, 4, 2)), (1, 1), "SAME"),
        (np.zeros((1, 5, 5, 3)), np.zeros((3, 3, 3, 2)), (1, 1), ((-1, 0), (1, 1))),
        (np.zeros((5, 5, 3)), np.zeros((3, 3, 3, 2)), (1, 1), "SAME"),
    ],
)
def test_unsupported_arguments_are_refused_by_name(x, w, strides, padding):
    assert not onednn.supports(x, w, strides, padding)
    if strides == (1, 1):
        with pytest.raises(ValueError, match=r"deepsea\.onednn\.conv takes float32 or bfloat16 NHWC x, a float32 HWIO"):
            onednn.conv(x, w, padding)


@pytest.mark.parametrize("channels", [1, 3, 8])
def test_conv_layer_auto_uses_onednn_on_the_cpu(channels, rng):
    x = jnp.asarray(rng.standard_normal((2, 9, 9, channels)), jnp.float32)
    variables = layers.Conv(5).init(jax.random.key(0), x)
    outs = {}
    for impl in ("auto", "onednn", "xla"):
        conv = layers.Conv(5, implementation=impl)
        hlo = jax.jit(conv.apply).lower(variables, x).compile().as_text()
        assert ("deepsea_conv_fwd" in hlo) == (impl != "xla")
        outs[impl] = conv.apply(variables, x)
    np.testing.assert_allclose(outs["auto"], outs["xla"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(outs["auto"], outs["onednn"])


def test_conv_layer_auto_falls_back_to_xla_where_onednn_does_not_apply():
    x = jnp.zeros((1, 9, 9, 4))
    strided = layers.Conv(3, strides=(2, 2))
    hlo = jax.jit(strided.apply).lower(strided.init(jax.random.key(0), x), x).compile().as_text()
    assert "deepsea_conv" not in hlo and "convolution(" in hlo
    with pytest.raises(ValueError, match=r"stride-1 .* strides \(2, 2\)"):
        layers.Conv(3, strides=(2, 2), implementation="onednn").init(jax.random.key(0), x)


def test_switched_off_or_unbuildable_onednn_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPSEA_ONEDNN", "0")
    onednn._load.cache_clear()
    try:
        assert not onednn.available()
        assert "DEEPSEA_ONEDNN=0" in onednn.unavailable_reason()
        with pytest.raises(RuntimeError, match="DEEPSEA_ONEDNN=0"):
            onednn.conv(jnp.zeros((1, 5, 5, 3)), jnp.zeros((3, 3, 3, 2)))
        x = jnp.zeros((1, 5, 5, 3))
        conv = layers.Conv(2)  # auto: XLA's convolution, the same parameters
        hlo = jax.jit(conv.apply).lower(conv.init(jax.random.key(0), x), x).compile().as_text()
        assert "deepsea_conv" not in hlo
    finally:
        monkeypatch.delenv("DEEPSEA_ONEDNN")
        onednn._load.cache_clear()
    assert onednn.available()
    monkeypatch.setenv("DEEPSEA_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "/bin/false")
    with pytest.raises(RuntimeError, match=r"compiling .*onednn_ffi\.cc failed"):
        onednn._build()
    assert not list(pathlib.Path(tmp_path).glob("*.so"))
    onednn._load.cache_clear()
    try:  # a build that fails is said once, loudly, and everything falls back to XLA
        with pytest.warns(RuntimeWarning, match=r"oneDNN .* not available \(compiling .*failed"):
            assert not onednn.available()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert "compiling" in onednn.unavailable_reason()
        assert backends.status()["convolution"].startswith("XLA (compiling")
    finally:
        onednn._load.cache_clear()


def test_a_new_build_removes_stale_ones(monkeypatch, tmp_path):
    # a stand-in compiler that writes its -o file: what is kept and removed does not depend on compiling
    cxx = tmp_path / "cxx"
    cxx.write_text('#!/bin/sh\nwhile [ $# -gt 0 ]; do [ "$1" = -o ] && echo built > "$2"; shift; done\n')
    cxx.chmod(0o755)
    monkeypatch.setenv("CXX", str(cxx))
    monkeypatch.setenv("DEEPSEA_CACHE_DIR", str(tmp_path))
    stale = tmp_path / "onednn_ffi-0123456789abcdef.so"
    stale.write_bytes(b"an old build")
    other = tmp_path / "unrelated.so"
    other.write_bytes(b"not ours")
    built = onednn._build()
    assert built.read_text() == "built\n" and built.parent == tmp_path
    assert not stale.exists() and other.exists()
    cxx.unlink()
    assert onednn._build() == built  # cached: no compiler needed again


POOL_CASES = [
    ((2, 47, 47, 3), 3, 2, ((0, 0), (0, 0))),
    ((3, 23, 23, 8), 3, 2, ((0, 0), (0, 0))),
    ((1, 8, 9, 2), 2, 2, ((0, 0), (0, 1))),
    ((2, 6, 6, 4), 3, 1, ((1, 1), (1, 1))),
    ((1, 5, 7, 5), 3, 2, ((1, 0), (2, 1))),
    ((8, 11, 11, 4), 3, 2, ((0, 0), (0, 0))),  # pooled as 2 images of 16 channels
    ((6, 9, 9, 3), 3, 2, ((1, 1), (1, 1))),  # as 1 of 18
    ((5, 7, 7, 2), 3, 2, ((0, 0), (0, 0))),  # 5 images do not make 16 channels: unfolded
]


@pytest.mark.parametrize("shape, window, stride, pads", POOL_CASES)
def test_max_pool_and_its_gradient_match_numpy(shape, window, stride, pads, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    y_ref, grad = max_pool_ref(x, window, stride, pads)
    pool = jax.jit(lambda x: onednn.max_pool(x, (window, window), (stride, stride), pads))
    y, vjp = jax.vjp(pool, jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(y), y_ref.astype(np.float32))
    g = rng.standard_normal(y_ref.shape).astype(np.float32)
    np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(g))[0]), grad(g), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "shape, pooled",
    [
        ((8, 11, 11, 4), (2, 11, 11, 16)),
        ((6, 9, 9, 3), (1, 9, 9, 18)),
        ((5, 7, 7, 2), (5, 7, 7, 2)),
        ((4, 7, 7, 8), (4, 7, 7, 8)),
    ],
)
def test_max_pool_puts_images_of_few_channels_side_by_side(shape, pooled, rng):
    """oneDNN pools maps of few channels with images side by side in the channels: its gradient is slow on few.
    The primitives see the folded maps, and values and gradients are bitwise those of pooling unfolded."""
    pads = ((0, 0), (0, 0))
    pool = functools.partial(onednn.max_pool, window=(3, 3), strides=(2, 2), padding=pads)
    hlo = jax.jit(jax.grad(lambda x: jnp.sum(pool(x) ** 2))).lower(jnp.zeros(shape, jnp.bfloat16)).as_text()
    calls = [line for line in hlo.splitlines() if "@deepsea_max_pool" in line]
    assert len(calls) == 2  # forward and gradient
    assert all("x".join(map(str, pooled)) + "xbf16" in line for line in calls), calls
    x = jnp.asarray(rng.standard_normal(shape), jnp.bfloat16)
    y, vjp = jax.vjp(pool, x)
    y1, vjp1 = jax.vjp(lambda x: onednn._max_pool(x, (3, 3), (2, 2), pads), x)
    g = jnp.asarray(rng.standard_normal(y.shape), jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y1, np.float32))
    np.testing.assert_array_equal(np.asarray(vjp(g)[0], np.float32), np.asarray(vjp1(g)[0], np.float32))


def test_a_training_step_pools_once_and_its_gradient_reads_the_argmax(rng):
    """A step's forward pass keeps oneDNN's workspace (each window's argmax) and its backward pass reads it: one
    pooling and one gradient primitive per step, no second pooling; prediction pools without a workspace; a workspace
    of the wrong size is refused by name."""
    x = jnp.asarray(rng.standard_normal((4, 13, 13, 16)), jnp.float32)
    pads = ((0, 0), (0, 0))
    pool = functools.partial(onednn.max_pool, window=(3, 3), strides=(2, 2), padding=pads)

    def called():
        rows = onednn.primitive_times(reset=True)
        return {r["key"].split(" ")[0]: r["calls"] for r in rows if "13x13x16" in r["key"]}

    onednn.primitive_times(reset=True)
    jax.block_until_ready(jax.jit(jax.grad(lambda x: jnp.sum(pool(x) ** 2)))(x))
    assert called() == {"max_pool_train": 1, "max_pool_bwd": 1}
    jax.block_until_ready(jax.jit(pool)(x))
    assert called() == {"max_pool": 1}
    attrs = onednn._pool_attrs((3, 3), (2, 2), pads)
    bwd = jax.ffi.ffi_call("deepsea_max_pool_bwd", jax.ShapeDtypeStruct(x.shape, x.dtype))
    with pytest.raises(Exception, match=r"max pooling gradient: the workspace has 7 bytes where oneDNN needs \d+"):
        jax.block_until_ready(bwd(jnp.zeros(7, jnp.uint8), jnp.zeros((4, 6, 6, 16)), **attrs))


def test_max_pool_of_a_symbolic_batch_is_not_folded():
    """An exported model's batch is symbolic: its images cannot be counted into the channels, so they are not."""
    pool = functools.partial(onednn.max_pool, window=(3, 3), strides=(2, 2), padding=((0, 0), (0, 0)))
    shape = jax.export.symbolic_shape("b, 11, 11, 4")
    allowed = [jax.export.DisabledSafetyCheck.custom_call(t) for t in onednn.FFI_TARGETS]
    exported = jax.export.export(jax.jit(pool), platforms=("cpu",), disabled_checks=allowed)(
        jax.ShapeDtypeStruct(shape, jnp.float32)
    )
    x = jnp.arange(6 * 11 * 11 * 4, dtype=jnp.float32).reshape(6, 11, 11, 4) % 7
    np.testing.assert_array_equal(np.asarray(exported.call(x)), np.asarray(pool(x)))


@pytest.mark.parametrize("shape", [(1, 5, 5, 1), (2, 9, 7, 3)])
def test_max_pool_gradient_at_ties_is_select_and_scatters(shape, rng):
    """Tied windows (zeros, and integers in 0..2) send their cotangent to the first maximum, as XLA does."""
    for x in (jnp.zeros(shape), jnp.asarray(rng.integers(0, 3, shape), jnp.float32)):
        g = jnp.asarray(rng.standard_normal((shape[0], (shape[1] - 3) // 2 + 1, (shape[2] - 3) // 2 + 1, shape[3])))
        ours = jax.vjp(lambda x: onednn.max_pool(x, (3, 3), (2, 2), ((0, 0), (0, 0))), x)[1](g)[0]
        ref = jax.vjp(lambda x: xla.reduce_window_max(x, (3, 3), (2, 2), ((0, 0), (0, 0))), x)[1](g)[0]
        # the same cells get the cotangents; overlapping windows may add them in another order
        np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-6, atol=1e-7)
        _, grad = max_pool_ref(np.asarray(x), 3, 2, ((0, 0), (0, 0)))
        np.testing.assert_allclose(np.asarray(ours), grad(np.asarray(g)), rtol=1e-6, atol=1e-6)


def test_max_pool_auto_is_onednn_on_the_cpu_and_refuses_bad_input():
    x = jnp.zeros((2, 9, 9, 3))
    step = jax.jit(jax.grad(lambda x: jnp.sum(backends.max_pool(x) ** 2)))
    hlo = step.lower(x).compile().as_text()
    assert "deepsea_max_pool" in hlo and "deepsea_max_pool_bwd" in hlo and "select-and-scatter" not in hlo
    assert "deepsea_max_pool" not in jax.jit(lambda x: backends.max_pool(x, implementation="slices")).lower(x).as_text()
    with pytest.raises(ValueError, match=r"float32 or bfloat16 NHWC x .* got x int32\(1, 5, 5, 1\)"):
        onednn.max_pool(jnp.zeros((1, 5, 5, 1), jnp.int32), (3, 3), (2, 2), ((0, 0), (0, 0)))
    with pytest.raises(ValueError, match="does not fit"):
        backends.max_pool(jnp.zeros((1, 2, 2, 1)), implementation="onednn")


def test_a_tuning_setting_other_than_0_or_1_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("DEEPSEA_ONEDNN_TUNE", "yes")
    x, w = jnp.ones((1, 5, 7, 3)), jnp.ones((3, 3, 3, 2))
    with pytest.raises(Exception, match="DEEPSEA_ONEDNN_TUNE must be 0 or 1, got 'yes'"):
        jax.block_until_ready(jax.jit(onednn.conv)(x, w))


@pytest.mark.parametrize("fused", [False, True])
def test_a_tuned_convolution_keeps_the_fastest_candidate_and_computes_the_same(monkeypatch, fused, rng):
    monkeypatch.setenv("DEEPSEA_ONEDNN_TUNE", "1")  # read when a shape's plan is made: a shape no other test uses
    xs, ws, slope = (3, 13, 12, 16), (3, 3, 16, 8), 0.25
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in (xs, ws, ws[3:]))
    z_ref, grads = conv_ref(x, w, "SAME")
    if fused:
        z_ref = z_ref + b
        fn = jax.jit(lambda x, w, b: onednn.conv_bias_leaky_relu(x, w, b, slope, "SAME"))
        y_ref = np.where(z_ref >= 0, z_ref, slope * z_ref)
    else:
        fn = jax.jit(lambda x, w, b: onednn.conv(x, w, "SAME"))
        y_ref = z_ref
    y, vjp = jax.vjp(fn, jnp.asarray(x), jnp.asarray(w), jnp.asarray(b))
    np.testing.assert_allclose(np.asarray(y), y_ref, rtol=1e-5, atol=1e-5 * np.sqrt(np.prod(ws[:3])))
    g = rng.standard_normal(y_ref.shape).astype(np.float32)
    dx, dw, _ = vjp(jnp.asarray(g))
    dx_ref, dw_ref = grads(np.where(z_ref >= 0, g, slope * g) if fused else g)
    np.testing.assert_allclose(np.asarray(dx), dx_ref, rtol=1e-5, atol=1e-5 * np.sqrt(np.prod(ws[:2]) * ws[3]))
    np.testing.assert_allclose(np.asarray(dw), dw_ref, rtol=1e-5, atol=1e-5 * np.sqrt(np.prod(xs[:3])))

    rows = [r for r in onednn.primitive_times() if "f32 3x13x12x16->8 k3x3" in r["key"]]
    kinds = ["conv_fwd_bias_act", "conv_bwd_data", "conv_bwd_weights_bias"] if fused else [
        "conv_fwd", "conv_bwd_data", "conv_bwd_weights"]  # fmt: skip
    assert {r["key"] for r in rows} >= {f"{kind} f32 3x13x12x16->8 k3x3 tuned" for kind in kinds}
    for r in rows:
        timed = r["candidates"]
        if not r["key"].endswith(" tuned"):
            assert timed == {}
            continue
        first, fastest = next(iter(timed)), min(timed, key=timed.get)
        assert r["impl"] in timed and not any(name.startswith("ref") for name in timed), r
        if r["impl"] == first:  # oneDNN's choice stays unless another is more than 5% faster
            assert timed[fastest] >= 0.95 * timed[first], r
        else:
            assert r["impl"] == fastest and timed[fastest] < 0.95 * timed[first], r


@pytest.mark.parametrize("xs, ws, padding", CASES[:4])
@pytest.mark.parametrize("slope", [1 / 3, 0.0])
def test_conv_bias_leaky_relu_and_its_gradients_match_numpy(xs, ws, padding, slope, rng):
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    b = rng.standard_normal(ws[3]).astype(np.float32)
    z_ref, grads = conv_ref(x, w, padding)
    z_ref = z_ref + b
    fn = jax.jit(lambda x, w, b: onednn.conv_bias_leaky_relu(x, w, b, slope, padding))
    y, vjp = jax.vjp(fn, jnp.asarray(x), jnp.asarray(w), jnp.asarray(b))
    scale = np.sqrt(np.prod(ws[:3]))
    np.testing.assert_allclose(np.asarray(y), np.where(z_ref >= 0, z_ref, slope * z_ref), rtol=1e-5, atol=1e-5 * scale)
    g = rng.standard_normal(z_ref.shape).astype(np.float32)
    dx, dw, db = vjp(jnp.asarray(g))
    dz = np.where(z_ref >= 0 if slope > 0 else z_ref > 0, g, slope * g)
    dx_ref, dw_ref = grads(dz)
    np.testing.assert_allclose(np.asarray(dx), dx_ref, rtol=1e-5, atol=1e-5 * np.sqrt(np.prod(ws[:2]) * ws[3]))
    np.testing.assert_allclose(np.asarray(dw), dw_ref, rtol=1e-5, atol=1e-5 * np.sqrt(np.prod(z_ref.shape[:3])))
    np.testing.assert_allclose(np.asarray(db), dz.sum((0, 1, 2)), rtol=1e-5, atol=1e-5 * np.sqrt(dz[..., 0].size))


def test_conv_layer_with_a_slope_fuses_it_and_is_the_same_function(rng):
    x = jnp.asarray(rng.standard_normal((2, 9, 9, 6)), jnp.float32)
    variables = layers.Conv(5, bias_init=jax.nn.initializers.normal(1.0)).init(jax.random.key(0), x)
    ref = layers.leaky_relu(layers.Conv(5, implementation="xla").apply(variables, x), 0.25)
    for impl in ("auto", "onednn", "xla"):
        conv = layers.Conv(5, implementation=impl, negative_slope=0.25)
        hlo = jax.jit(conv.apply).lower(variables, x).compile().as_text()
        assert ("deepsea_conv_fwd_bias_leaky_relu" in hlo) == (impl != "xla")
        np.testing.assert_allclose(conv.apply(variables, x), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="negative_slope must be >= 0"):
        onednn.conv_bias_leaky_relu(x, variables["params"]["kernel"], variables["params"]["bias"], -0.5)
    conv = layers.Conv(5, negative_slope=-0.5)  # not fusable: computed unfused
    np.testing.assert_allclose(
        conv.apply(variables, x),
        layers.leaky_relu(layers.Conv(5, implementation="xla").apply(variables, x), -0.5),
        rtol=1e-5,
        atol=1e-5,
    )


def test_models_fuse_their_leaky_relu_into_their_convolutions():
    from deepsea.models import build_model

    x = jnp.zeros((2, 23, 23, 1))
    cfg = {"name": "convroll4", "stages": ((4, 3), (6,)), "dense_features": 8, "dropout_rate": 0.0}
    cases = (({"batch_norm": True}, False), ({"conv_impl": "xla"}, False), ({"negative_slope": 0.0}, True), ({}, True))
    for extra, fused in cases:
        model = build_model({**cfg, **extra}, 5)
        variables = jax.jit(model.init)(jax.random.key(0), x)
        hlo = jax.jit(lambda v, x, model=model: model.apply(v, x)).lower(variables, x).compile().as_text()
        assert hlo.count('custom_call_target="deepsea_conv_fwd_bias_leaky_relu"') == (3 if fused else 0)
    # the parameters' gradient: the kernel and bias gradients from one primitive, and no input gradient for the
    # first layer (the image), which XLA drops
    loss = lambda v, x: jnp.sum(model.apply(v, x) ** 2)  # noqa: E731
    hlo = jax.jit(jax.grad(loss)).lower(variables, x).compile().as_text()
    assert hlo.count('custom_call_target="deepsea_conv_bwd_weights_bias"') == 3
    assert hlo.count('custom_call_target="deepsea_conv_bwd_weights"') == 0
    assert hlo.count('custom_call_target="deepsea_conv_bwd_data"') == 2


def _bf16(a) -> np.ndarray:
    """``a`` rounded to bfloat16, as float64."""
    return np.asarray(jnp.asarray(a, jnp.bfloat16), np.float64)


HALF_BF16_ULP = 2.0**-8  # rounding to bfloat16 (8 significant bits) moves a value by at most this, relatively


@pytest.mark.parametrize("xs, ws, padding", CASES[:4])
def test_bfloat16_conv_is_the_float64_convolution_of_its_rounded_operands(xs, ws, padding, rng):
    """bfloat16 activations and a float32 kernel that oneDNN rounds to bfloat16 as it reorders it; products
    accumulate in float32, the output and the input gradient are rounded to bfloat16 once, and the kernel
    gradient stays float32."""
    x = _bf16(rng.standard_normal(xs))
    w = rng.standard_normal(ws).astype(np.float32)
    y_ref, grads = conv_ref(x, _bf16(w), padding)
    y, vjp = jax.vjp(jax.jit(lambda x, w: onednn.conv(x, w, padding)), jnp.asarray(x, jnp.bfloat16), jnp.asarray(w))
    assert y.dtype == jnp.bfloat16
    scale = np.abs(y_ref).max()
    np.testing.assert_allclose(np.asarray(y, np.float64), y_ref, rtol=HALF_BF16_ULP, atol=1e-5 * scale)
    g = _bf16(rng.standard_normal(y_ref.shape))
    dx, dw = vjp(jnp.asarray(g, jnp.bfloat16))
    assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
    dx_ref, dw_ref = grads(g)
    np.testing.assert_allclose(np.asarray(dx, np.float64), dx_ref, rtol=HALF_BF16_ULP, atol=1e-5 * np.abs(dx_ref).max())
    np.testing.assert_allclose(np.asarray(dw), dw_ref, rtol=1e-5, atol=1e-5 * np.abs(dw_ref).max())


def test_bfloat16_conv_bias_leaky_relu_and_pooling(rng):
    x = _bf16(rng.standard_normal((2, 9, 9, 6)))
    w = rng.standard_normal((3, 3, 6, 5)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    z_ref, grads = conv_ref(x, _bf16(w), "SAME")
    z_ref = z_ref + b
    fn = jax.jit(lambda x, w, b: onednn.conv_bias_leaky_relu(x, w, b, 0.25))
    y, vjp = jax.vjp(fn, jnp.asarray(x, jnp.bfloat16), jnp.asarray(w), jnp.asarray(b))
    want = np.where(z_ref >= 0, z_ref, 0.25 * z_ref)
    np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=HALF_BF16_ULP, atol=1e-5 * np.abs(want).max())
    g = _bf16(rng.standard_normal(z_ref.shape))
    dx, dw, db = vjp(jnp.asarray(g, jnp.bfloat16))
    assert (dx.dtype, dw.dtype, db.dtype) == (jnp.bfloat16, jnp.float32, jnp.float32)
    dz = np.where(np.asarray(y, np.float64) >= 0, g, 0.25 * g)  # the derivative from the output's sign, as documented
    dx_ref, dw_ref = grads(dz)
    np.testing.assert_allclose(np.asarray(dx, np.float64), dx_ref, rtol=HALF_BF16_ULP, atol=1e-5 * np.abs(dx_ref).max())
    np.testing.assert_allclose(np.asarray(dw), dw_ref, rtol=1e-5, atol=1e-5 * np.abs(dw_ref).max())
    np.testing.assert_allclose(np.asarray(db), dz.sum((0, 1, 2)), rtol=1e-5, atol=1e-5 * np.abs(dz).sum())
    # max pooling selects, so in bfloat16 its value is exact; a pixel's gradient sums the entries of the (at most
    # four) 3x3 stride-2 windows it wins, each addition rounded to bfloat16
    p = _bf16(rng.standard_normal((2, 11, 11, 4)))
    pooled, pool_vjp = jax.vjp(lambda a: backends.max_pool(a), jnp.asarray(p, jnp.bfloat16))
    want, pool_grad = max_pool_ref(p, 3, 2, ((0, 0), (0, 0)))
    np.testing.assert_array_equal(np.asarray(pooled, np.float64), want)
    gp = _bf16(rng.standard_normal(want.shape))
    np.testing.assert_allclose(
        np.asarray(pool_vjp(jnp.asarray(gp, jnp.bfloat16))[0], np.float64), pool_grad(gp), rtol=3 * HALF_BF16_ULP
    )
    hlo = jax.jit(jax.grad(lambda a: jnp.sum(backends.max_pool(a).astype(jnp.float32)))).lower(
        jnp.asarray(p, jnp.bfloat16)
    )
    assert "deepsea_max_pool_bwd_bf16" in hlo.as_text()


MATMUL_CASES = [(1, 1, 1), (5, 7, 3), (37, 50, 23), (128, 300, 64)]


@pytest.mark.parametrize("m, k, n", MATMUL_CASES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_matmul_and_its_gradients_match_numpy(m, k, n, dtype, rng):
    """The product and both gradients (each one oneDNN matmul reading a transpose in place) against float64 numpy
    on the operands as given: float32 to float32 rounding, bfloat16 to one rounding of each result."""
    a, b, g = (_bf16(rng.standard_normal(s)) for s in ((m, k), (k, n), (m, n)))
    y, vjp = jax.vjp(jax.jit(onednn.matmul), jnp.asarray(a, dtype), jnp.asarray(b, dtype))
    da, db = vjp(jnp.asarray(g, dtype))
    assert y.dtype == da.dtype == db.dtype == dtype and (y.shape, da.shape, db.shape) == ((m, n), (m, k), (k, n))
    rtol = 1e-5 if dtype == jnp.float32 else HALF_BF16_ULP
    for got, want in ((y, a @ b), (da, g @ b.T), (db, a.T @ g)):
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=1e-5 * np.abs(want).max())


def test_matmul_refuses_what_it_does_not_compute():
    with pytest.raises(ValueError, match=r"got float32\(3, 4\) and float32\(5, 2\)"):
        onednn.matmul(jnp.zeros((3, 4)), jnp.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"got float32\(3, 4\) and bfloat16\(4, 2\)"):
        onednn.matmul(jnp.zeros((3, 4)), jnp.zeros((4, 2), jnp.bfloat16))
    with pytest.raises(ValueError, match="unknown dense implementation 'mkl'"):
        backends.dense_dot_general("mkl")


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_dense_layers_take_onednns_product_and_compute_the_same_function(precision, rng):
    """A maxout layer on (..., K) inputs: ``implementation="auto"`` is oneDNN's matmul on the CPU (forward and both
    gradients), with ``"xla"``'s value and gradients to rounding; the parameters are the same either way."""
    x = jnp.asarray(rng.standard_normal((2, 3, 40)), jnp.float32)
    dtype = jnp.dtype(precision)

    def run(implementation):
        layer = layers.Maxout(6, 2, dtype=dtype, implementation=implementation)
        params = layer.init(jax.random.key(0), x)
        loss = lambda p, x: jnp.sum(jnp.tanh(layer.apply(p, x.astype(dtype)).astype(jnp.float32)))  # noqa: E731
        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        return params, step(params, x), step.lower(params, x).compile().as_text()

    p_auto, (v_auto, g_auto), hlo = run("auto")
    p_xla, (v_xla, g_xla), hlo_xla = run("xla")
    target = "deepsea_matmul" + ("_bf16" if precision == "bfloat16" else "")
    assert hlo.count(f'custom_call_target="{target}"') == 3 and "deepsea_matmul" not in hlo_xla
    assert run("onednn")[2].count(f'custom_call_target="{target}"') == 3  # insisting: the same calls
    assert jax.tree.structure(p_auto) == jax.tree.structure(p_xla)
    tol = 1e-5 if precision == "float32" else 4 * HALF_BF16_ULP
    np.testing.assert_allclose(v_auto, v_xla, rtol=tol)
    for a, b in zip(jax.tree.leaves(g_auto), jax.tree.leaves(g_xla), strict=True):
        np.testing.assert_allclose(
            np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol, atol=tol * np.abs(b).max()
        )


def test_dense_dot_general_leaves_other_products_to_xla(rng):
    """Batched, differently contracted, mixed-dtype or precision-pinned products are XLA's, unchanged."""
    a = jnp.asarray(rng.standard_normal((4, 5, 6)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((4, 6, 3)), jnp.float32)
    batched = (((2,), (1,)), ((0,), (0,)))
    np.testing.assert_array_equal(onednn.dot_general(a, b, batched), jax.lax.dot_general(a, b, batched))
    c = jnp.asarray(rng.standard_normal((6, 3)), jnp.bfloat16)
    dense = (((2,), (0,)), ((), ()))
    np.testing.assert_array_equal(onednn.dot_general(a, c, dense), jax.lax.dot_general(a, c, dense))
    hlo = jax.jit(lambda a, c: onednn.dot_general(a, c, dense)).lower(a, c.astype(jnp.float32)).compile().as_text()
    assert "deepsea_matmul" in hlo
    pinned = jax.jit(lambda a, c: onednn.dot_general(a, c, dense, precision=jax.lax.Precision.HIGHEST))
    assert "deepsea_matmul" not in pinned.lower(a, c.astype(jnp.float32)).compile().as_text()
    insisted = backends.dense_dot_general("onednn")  # model.dense_impl=onednn: refused, not left to XLA
    with pytest.raises(ValueError, match=r"got float32\(4, 5, 6\) and bfloat16\(6, 3\)"):
        insisted(a, c, dense)
    with pytest.raises(ValueError, match="oneDNN dense product"):
        insisted(a, b, batched)
    assert "deepsea_matmul" in jax.jit(lambda a, c: insisted(a, c, dense)).lower(a, a[0].T).compile().as_text()
