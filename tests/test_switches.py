"""The seed's other experiments as switches (issue 31): each against an independent float64 reference, and the
network's exact invariance kept with every one of them."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import truncnorm

from deepsea import layers
from deepsea.data.transforms import AugmentRanges, params_from_unit
from deepsea.equivariance import check_invariance
from deepsea.errors import UserError
from deepsea.models import tiny_rollnet
from deepsea.step import example_losses


def test_prelu_learns_one_slope_per_channel_from_the_leaky_one(rng):
    x = jnp.asarray(rng.standard_normal((4, 5, 5, 3)), jnp.float32)
    m = layers.PReLU(0.25)
    v = jax.jit(m.init)(jax.random.key(0), x)
    np.testing.assert_array_equal(np.asarray(v["params"]["slope"]), [0.25, 0.25, 0.25])
    slope = np.array([0.1, 0.5, -0.2])
    got = m.apply({"params": {"slope": jnp.asarray(slope, jnp.float32)}}, x)
    xn = np.asarray(x, np.float64)
    np.testing.assert_allclose(np.asarray(got), np.where(xn >= 0, xn, xn * slope), rtol=1e-6)
    g = jax.grad(lambda p: m.apply({"params": p}, x).sum())(v["params"])
    np.testing.assert_allclose(np.asarray(g["slope"]), np.minimum(xn, 0).sum((0, 1, 2)), rtol=1e-5)


def test_the_smoothed_leaky_relu_is_its_formula_and_tends_to_the_leaky_one(rng):
    x = rng.standard_normal(50) * 4
    got = np.asarray(layers.SmoothLeakyReLU(1 / 3).apply({}, jnp.asarray(x, jnp.float32)))
    np.testing.assert_allclose(got, x / 3 + (2 / 3) * np.log1p(np.exp(x)), rtol=1e-5, atol=1e-6)
    far = np.array([-30.0, 30.0])
    np.testing.assert_allclose(np.asarray(layers.SmoothLeakyReLU(1 / 3).apply({}, jnp.asarray(far))), [-10, 30],
                               rtol=1e-6)  # fmt: skip


def test_gaussian_dropout_keeps_the_mean_and_has_dropouts_variance():
    x = jnp.full((200_000,), 2.0)
    rate = 0.3
    y = np.asarray(layers.GaussianDropout(rate).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1)}))
    assert abs(y.mean() - 2.0) < 0.01
    assert abs(y.var() - 4.0 * rate / (1 - rate)) < 0.03  # inverted dropout's variance: x^2 p / (1 - p)
    np.testing.assert_array_equal(np.asarray(layers.GaussianDropout(rate).apply({}, x, deterministic=True)), 2.0)
    with pytest.raises(UserError, match=r"rate must lie in \[0, 1\), got 1.0"):
        layers.GaussianDropout(1.0).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})


def test_channel_out_passes_each_groups_winner_in_its_place(rng):
    x = jnp.asarray(rng.standard_normal((3, 6)), jnp.float32)
    m = layers.ChannelOut(features=4, pieces=2)
    v = jax.jit(m.init)(jax.random.key(0), x)
    kernel, bias = (np.asarray(v["params"]["dense"][k], np.float64) for k in ("kernel", "bias"))
    z = np.asarray(x, np.float64) @ kernel + bias
    groups = z.reshape(3, 4, 2)
    want = np.where(groups == groups.max(-1, keepdims=True), groups, 0.0).reshape(3, 8)
    np.testing.assert_allclose(np.asarray(m.apply(v, x)), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "switch",
    [
        {"activation": "prelu", "dense_units": "channel_out"},
        {"activation": "smooth_leaky", "dropout_kind": "gaussian", "conv_dropout_rate": 0.2},
    ],
    ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()),
)
def test_every_switch_keeps_the_rolled_network_exactly_invariant_and_changes_it(switch, rng):
    x = jnp.asarray(rng.standard_normal((2, 23, 23, 1)), jnp.float32)
    base, model = tiny_rollnet(dropout_rate=0.2), tiny_rollnet(dropout_rate=0.2, **switch)
    v = jax.jit(model.init)(jax.random.key(0), x)
    check_invariance(lambda z: model.apply(v, z), "c4", x, atol=1e-5)
    vb = jax.jit(base.init)(jax.random.key(0), x)
    shapes = lambda t: jax.tree_util.tree_flatten_with_path(jax.tree.map(np.shape, t))[0]  # noqa: E731
    changed = shapes(v) != shapes(vb) or not np.allclose(np.asarray(model.apply(vb, x)), np.asarray(base.apply(vb, x)))
    if "conv_dropout_rate" in switch:  # training noise: two keys give two outputs
        out = [model.apply(v, x, train=True, rngs={"dropout": jax.random.key(k)}) for k in (1, 2)]
        changed = not np.allclose(np.asarray(out[0]), np.asarray(out[1]))
    assert changed
    with pytest.raises(UserError, match=r"model\.activation='swish'"):
        tiny_rollnet(activation="swish").init(jax.random.key(0), x)


@pytest.mark.parametrize(("kind", "beta"), [("soft", 0.95), ("hard", 0.8)])
def test_bootstrapping_mixes_the_label_with_the_networks_own_prediction(kind, beta, rng):
    logits = rng.standard_normal((5, 4)) * 2
    labels = np.array([0, 3, 1, 1, 2])
    got = np.asarray(example_losses(jnp.asarray(logits, jnp.float32), {"label": jnp.asarray(labels)}, bootstrap=kind,
                                    bootstrap_beta=beta))  # fmt: skip
    q = np.exp(logits - logits.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    own = q if kind == "soft" else np.eye(4)[q.argmax(1)]
    target = beta * np.eye(4)[labels] + (1 - beta) * own
    np.testing.assert_allclose(got, -(target * np.log(q)).sum(1), rtol=1e-5)
    plain = np.asarray(example_losses(jnp.asarray(logits, jnp.float32), {"label": jnp.asarray(labels)}))
    assert not np.allclose(got, plain)
    with pytest.raises(UserError, match=r"train\.bootstrap='medium'"):
        example_losses(jnp.asarray(logits), {"label": jnp.asarray(labels)}, bootstrap="medium")


def test_gaussian_draws_are_truncated_normals_of_half_the_range():
    u = np.random.default_rng(0).uniform(size=(20_000, 7))
    draws = {
        d: np.array([params_from_unit(p, AugmentRanges(draws=d)).shift_row for p in u]) for d in ("uniform", "gaussian")
    }
    assert np.abs(draws["gaussian"]).max() <= 10.0
    np.testing.assert_allclose(draws["gaussian"].std(), 10.0 * 0.5 * truncnorm(-2, 2).std(), rtol=0.02)
    np.testing.assert_allclose(draws["uniform"].std(), 10.0 / np.sqrt(3), rtol=0.02)
    with pytest.raises(UserError, match=r"aug\.draws='laplace'"):
        AugmentRanges(draws="laplace")


def test_the_switches_reach_the_model_from_the_config():
    from deepsea.configs import apply_overrides, base_config
    from deepsea.models import build_model

    c = base_config()
    apply_overrides(c, ["model.activation=prelu", "model.dense_units=channel_out", "model.stages=((4,),)"])
    model = build_model(c.model, 3)
    assert isinstance(model, nn.Module) and model.activation == "prelu" and model.dense_units == "channel_out"
