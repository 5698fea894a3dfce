import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepsea import backends, layers, ops
from deepsea.backends import onednn
from deepsea.groups import D4


def test_symmetry_layers_wrap_the_ops(rng):
    x = jnp.asarray(rng.standard_normal((2, 5, 5, 3)), jnp.float32)
    for group in ("c4", "d4", D4):
        s = layers.Slice(group).apply({}, x)
        np.testing.assert_array_equal(s, ops.group_slice(x, group))
        np.testing.assert_array_equal(layers.ConvRoll(group).apply({}, s), ops.group_conv_roll(s, group))
        f = s.reshape(s.shape[0], -1)
        np.testing.assert_array_equal(layers.Roll(group).apply({}, f), ops.group_roll(f, group))
        for mode in ("mean", "max", "rms"):
            np.testing.assert_array_equal(layers.Pool(group, mode).apply({}, f), ops.group_pool(f, group, mode))


def test_leaky_relu():
    x = jnp.array([-3.0, -1.0, 0.0, 2.0])
    np.testing.assert_allclose(layers.leaky_relu(x), [-1.0, -1 / 3, 0.0, 2.0], rtol=1e-7)
    np.testing.assert_allclose(layers.LeakyReLU(0.1).apply({}, x), [-0.3, -0.1, 0.0, 2.0], rtol=1e-6)
    assert layers.leaky_relu(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_gain():
    assert layers.gain("leaky_relu", 1 / 3) == pytest.approx(math.sqrt(1.8))
    assert layers.gain("leaky_relu", 0.0) == pytest.approx(math.sqrt(2))
    assert layers.gain("relu") == pytest.approx(math.sqrt(2))
    assert layers.gain("linear") == 1.0
    with pytest.raises(ValueError, match="unknown nonlinearity 'swish'"):
        layers.gain("swish")


@pytest.mark.parametrize("shape", [(3, 3, 16, 32), (64, 32), (3, 3, 4, 8)])
def test_orthogonal_init_has_the_gain(shape):
    w = np.asarray(layers.orthogonal()(jax.random.key(0), shape, jnp.float32), np.float64)
    m = w.reshape(-1, shape[-1])  # (fan_in, out): orthonormal columns when fan_in >= out
    g = layers.gain("leaky_relu", 1 / 3)
    np.testing.assert_allclose(m.T @ m, g**2 * np.eye(shape[-1]), atol=1e-5)


def test_maxout_is_max_over_adjacent_pieces(rng):
    x = jnp.asarray(rng.standard_normal((5, 7)), jnp.float32)
    mod = layers.Maxout(4, pieces=3)
    params = jax.jit(mod.init)(jax.random.key(0), x)
    k = np.asarray(params["params"]["dense"]["kernel"], np.float64)
    b = np.asarray(params["params"]["dense"]["bias"], np.float64)
    assert k.shape == (7, 12)
    want = (np.asarray(x, np.float64) @ k + b).reshape(5, 4, 3).max(-1)
    np.testing.assert_allclose(mod.apply(params, x), want, rtol=1e-5, atol=1e-6)


def test_untied_conv_has_a_bias_per_position(rng):
    x = jnp.asarray(rng.standard_normal((2, 6, 6, 3)), jnp.float32)
    mod = layers.UntiedConv(5, strides=(2, 2))
    params = jax.jit(mod.init)(jax.random.key(0), x)
    assert params["params"]["bias"].shape == (3, 3, 5)
    bias = jnp.asarray(rng.standard_normal((3, 3, 5)), jnp.float32)
    params = {"params": {**params["params"], "bias": bias}}
    conv = nn.Conv(5, (3, 3), strides=(2, 2), padding="SAME", use_bias=False)
    plain = conv.apply({"params": params["params"]["conv"]}, x)
    np.testing.assert_allclose(mod.apply(params, x), plain + bias, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("size", [95, 47, 23, 11, 5])
def test_max_pool_accepts_symmetric_grids(size, rng):
    x = jnp.asarray(rng.standard_normal((1, size, size, 2)), jnp.float32)
    y = layers.MaxPool().apply({}, x)
    assert y.shape == (1, (size - 3) // 2 + 1, (size - 3) // 2 + 1, 2)
    # against a direct numpy computation
    xn = np.asarray(x)
    want = np.array(
        [
            [xn[0, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max((0, 1)) for j in range(y.shape[2])]
            for i in range(y.shape[1])
        ]
    )
    np.testing.assert_array_equal(y[0], want)


@pytest.mark.parametrize("size", [96, 48, 10])
def test_max_pool_refuses_asymmetric_grids(size):
    x = jnp.zeros((1, size, size, 1))
    with pytest.raises(ValueError, match=rf"on a map of {size}x{size} is not symmetric.*odd sizes"):
        layers.MaxPool().apply({}, x)
    assert layers.MaxPool(check_symmetry=False).apply({}, x).shape[1] == (size - 3) // 2 + 1


def _numpy_max_pool(x: np.ndarray, window: int, stride: int, lo: int, hi: int) -> np.ndarray:
    x = np.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)), constant_values=-np.inf)
    out = (x.shape[1] - window) // stride + 1
    return np.array(
        [
            [
                [
                    x[n, stride * i : stride * i + window, stride * j : stride * j + window].max((0, 1))
                    for j in range(out)
                ]
                for i in range(out)
            ]
            for n in range(x.shape[0])
        ]
    )


@pytest.mark.parametrize("shape", [(2, 47, 47, 3), (1, 8, 8, 2), (3, 5, 5, 1), (1, 3, 3, 4)])
@pytest.mark.parametrize(
    ("window", "stride", "padding"), [(3, 2, "VALID"), (3, 2, "SAME"), (2, 2, "VALID"), (3, 1, (1, 1))]
)
def test_max_pool_implementations_match_numpy_and_each_other(shape, window, stride, padding, rng):
    from deepsea import ops

    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    lo, hi = ops.pad_amounts(shape[1], window, stride, padding)
    want = _numpy_max_pool(np.asarray(x), window, stride, lo, hi)
    ct = jnp.asarray(rng.standard_normal(want.shape), jnp.float32)

    @functools.partial(jax.jit, static_argnums=0)
    def value_and_grad(impl, x, ct):
        y, vjp = jax.vjp(lambda z: backends.max_pool(z, window, stride, padding, impl), x)
        return y, vjp(ct)[0]

    g_windows = value_and_grad("reduce_window", x, ct)[1]
    for impl in ("reduce_window", "slices", "onednn", "auto"):
        if impl == "onednn" and not onednn.available():
            continue  # tests/test_onednn.py says why (and fails in CI)
        y, g = value_and_grad(impl, x, ct)
        np.testing.assert_array_equal(np.asarray(y), want)
        # Random normal data has no ties, where all gradients route each cotangent to the window's maximum.
        np.testing.assert_allclose(np.asarray(g), np.asarray(g_windows), rtol=1e-6, atol=1e-6)


def test_max_pool_gradient_at_ties_goes_to_one_input():

    x = jnp.zeros((1, 5, 5, 1))
    g = jax.grad(lambda z: jnp.sum(backends.max_pool(z)))(x)
    # each of the 4 windows sends its cotangent to exactly one of its (all tied) inputs
    assert float(g.sum()) == 4.0 and set(np.unique(np.asarray(g)).tolist()) <= {0.0, 1.0, 2.0, 3.0, 4.0}


def test_max_pool_errors():

    with pytest.raises(ValueError, match="does not fit"):
        backends.max_pool(jnp.zeros((1, 2, 2, 1)))
    with pytest.raises(ValueError, match="implementation"):
        backends.max_pool(jnp.zeros((1, 5, 5, 1)), implementation="fast")


def test_model_max_pool_implementation_switch(rng):
    from deepsea.models import build_model

    x = jnp.asarray(rng.standard_normal((2, 23, 23, 1)), jnp.float32)
    cfg = {"name": "rollnet", "stages": ((4,), (8,)), "dense_features": 8, "dropout_rate": 0.0}
    fast, slow = (build_model({**cfg, "max_pool_impl": impl}, 5) for impl in ("slices", "reduce_window"))
    variables = jax.jit(fast.init)(jax.random.key(0), x)
    np.testing.assert_array_equal(
        np.asarray(jax.jit(fast.apply)(variables, x)), np.asarray(jax.jit(slow.apply)(variables, x))
    )
    assert slow.max_pool_impl == "reduce_window"
