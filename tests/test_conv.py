"""The convolution layer's fast paths (first-layer taps, bias gradient as a product) against float64 numpy."""

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from numpy_reference import conv_ref

from deepsea import layers
from deepsea.backends import onednn, xla
from deepsea.models import build_model

CASES = [
    ((2, 7, 7, 1), (3, 3, 1, 5), "SAME"),
    ((3, 6, 5, 1), (3, 3, 1, 4), "VALID"),
    ((2, 9, 9, 2), (3, 3, 2, 3), "SAME"),
    ((1, 8, 8, 1), (5, 5, 1, 2), ((2, 1), (0, 3))),
    ((2, 5, 5, 3), (1, 1, 3, 4), "SAME"),
]


@pytest.mark.parametrize("xs, ws, padding", CASES)
def test_conv_taps_matches_numpy(xs, ws, padding, rng):
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    y_ref, grads = conv_ref(x, w, padding)
    y, vjp = jax.vjp(lambda x, w: xla.conv_taps(x, w, padding), jnp.asarray(x), jnp.asarray(w))
    np.testing.assert_allclose(np.asarray(y), y_ref, rtol=1e-5, atol=1e-5)
    g = rng.standard_normal(y_ref.shape).astype(np.float32)
    dx, dw = vjp(jnp.asarray(g))
    dx_ref, dw_ref = grads(g)
    np.testing.assert_allclose(np.asarray(dx), dx_ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dw), dw_ref, rtol=1e-5, atol=1e-4)


def test_bias_add_matches_numpy(rng):
    x = rng.standard_normal((3, 6, 5, 7)).astype(np.float32)
    b = rng.standard_normal(7).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    y, vjp = jax.vjp(xla.bias_add, jnp.asarray(x), jnp.asarray(b))
    np.testing.assert_array_equal(np.asarray(y), x + b)
    dx, db = vjp(jnp.asarray(g))
    np.testing.assert_array_equal(np.asarray(dx), g)
    np.testing.assert_allclose(np.asarray(db), g.astype(np.float64).sum((0, 1, 2)), rtol=1e-5, atol=1e-5)
    assert db.dtype == jnp.float32


@pytest.mark.parametrize("channels", [1, 2, 6])
@pytest.mark.parametrize("implementation", ["auto", "xla"])
def test_conv_layer_is_flax_conv_with_its_parameters(channels, implementation, rng):
    """Same parameters as nn.Conv from the same key, the same function as float64 numpy, either path."""
    x = jnp.asarray(rng.standard_normal((2, 9, 9, channels)), jnp.float32)
    ours = layers.Conv(4, kernel_size=(3, 3), bias_init=nn.initializers.normal(1.0), implementation=implementation)
    flax_conv = nn.Conv(4, (3, 3), padding="SAME", kernel_init=layers.orthogonal())
    params = ours.init(jax.random.key(3), x)
    np.testing.assert_array_equal(params["params"]["kernel"], flax_conv.init(jax.random.key(3), x)["params"]["kernel"])
    w, b = (np.asarray(params["params"][k]) for k in ("kernel", "bias"))
    y_ref, grads = conv_ref(np.asarray(x), w, "SAME")
    y, vjp = jax.vjp(lambda p, x: ours.apply(p, x), params, x)
    np.testing.assert_allclose(np.asarray(y), y_ref + b, rtol=1e-5, atol=1e-5)
    g = rng.standard_normal(y.shape).astype(np.float32)
    dparams, dx = vjp(jnp.asarray(g))
    dx_ref, dw_ref = grads(g)
    np.testing.assert_allclose(np.asarray(dx), dx_ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dparams["params"]["kernel"]), dw_ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dparams["params"]["bias"]), g.sum((0, 1, 2)), rtol=1e-5, atol=1e-4)


def _primitives(jaxpr) -> set[str]:
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            names |= _primitives(sub)
    return names


@pytest.mark.parametrize("channels, taps", [(1, True), (2, True), (3, False)])
def test_conv_layer_auto_takes_the_fast_paths_and_xla_does_not(channels, taps, monkeypatch):
    """Without oneDNN (tests/test_onednn.py covers it), "auto" takes the taps for 1-2 channels."""
    monkeypatch.setattr(onednn, "available", lambda: False)
    x = jnp.zeros((1, 7, 7, channels))
    for implementation in ("auto", "xla"):
        conv = layers.Conv(4, implementation=implementation)
        params = conv.init(jax.random.key(0), x)
        forward = _primitives(jax.make_jaxpr(conv.apply)(params, x).jaxpr)
        assert ("conv_general_dilated" not in forward) == (taps and implementation == "auto")
        assert ("custom_vjp_call" in forward or "custom_vjp_call_jaxpr" in forward) == (implementation == "auto")
        assert "ffi_call" not in forward


def test_conv_layer_rejects_an_unknown_implementation():
    with pytest.raises(ValueError, match="'auto', 'xla' or 'onednn'"):
        layers.Conv(2, implementation="fast").init(jax.random.key(0), jnp.zeros((1, 5, 5, 1)))


@pytest.mark.slow
def test_model_conv_impl_switch_is_the_same_function(rng):
    x = jnp.asarray(rng.standard_normal((2, 23, 23, 1)), jnp.float32)
    cfg = {"name": "convroll4", "stages": ((4, 3), (6,)), "dense_features": 8, "dropout_rate": 0.0}
    fast, ref = (build_model({**cfg, "conv_impl": impl}, 5) for impl in ("auto", "xla"))
    variables = jax.jit(fast.init)(jax.random.key(0), x)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(jax.jit(ref.init)(jax.random.key(0), x)), strict=True):
        np.testing.assert_array_equal(a, b)
    loss = lambda model: lambda p: jnp.sum(model.apply(p, x) ** 2)  # noqa: E731
    out_fast, out_ref = jax.jit(fast.apply)(variables, x), jax.jit(ref.apply)(variables, x)
    np.testing.assert_allclose(out_fast, out_ref, rtol=1e-5, atol=1e-5)
    g_fast, g_ref = jax.jit(jax.grad(loss(fast)))(variables), jax.jit(jax.grad(loss(ref)))(variables)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(b))))
