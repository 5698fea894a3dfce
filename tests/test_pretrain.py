"""The tied convolutional autoencoder: against a float64 numpy reference, equivariant with a symmetric stack, one
parameter per kernel; pre-training resumes exactly; fine-tuning freezes and scales the pre-trained layers."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepsea.configs import apply_overrides, base_config, load_experiment
from deepsea.equivariance import check_equivariance
from deepsea.pretrain import _init_params, autoencoder_layers, pretrain, reconstruct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLOPE = 1.0 / 3.0


def _model_cfg(stages, symmetry=None):
    c = base_config().model
    c.name, c.stages, c.symmetry, c.dense_features, c.dropout_rate = "rollnet", stages, symmetry, 8, 0.0
    c.conv_impl = "xla"
    return c


def _conv_same(x, k):  # (H, W, C) * (3, 3, C, F), zero padding, float64
    h, w, _ = x.shape
    p = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    return sum(p[i : i + h, j : j + w] @ k[i, j] for i in range(3) for j in range(3))


def _conv_same_transposed(y, k):
    h, w, _ = y.shape
    out = np.zeros((h + 2, w + 2, k.shape[2]))
    for i in range(3):
        for j in range(3):
            out[i : i + h, j : j + w] += y @ k[i, j].T
    return out[1:-1, 1:-1]


def _leaky(x):
    return np.where(x >= 0, x, SLOPE * x)


def _pool_with_switches(x):  # 3x3 windows, stride 2, VALID; each output's argmax (the first maximum)
    h, w, c = x.shape
    ho, wo = (h - 3) // 2 + 1, (w - 3) // 2 + 1
    out, where = np.zeros((ho, wo, c)), np.zeros((ho, wo, c, 2), int)
    for a in range(ho):
        for b in range(wo):
            for ch in range(c):
                win = x[2 * a : 2 * a + 3, 2 * b : 2 * b + 3, ch]
                i, j = np.unravel_index(np.argmax(win), (3, 3))
                out[a, b, ch], where[a, b, ch] = win[i, j], (2 * a + i, 2 * b + j)
    return out, where


def test_the_tied_autoencoder_is_the_float64_reference(rng):
    """Two convolutions in a stage, its pooling: encode, unpool through the switches, transposed convolutions
    with the encoder's kernels, the decoder's biases and activations."""
    net, ops = autoencoder_layers(_model_cfg(((3, 4),)))
    assert ops == [("conv", "conv0_0"), ("conv", "conv0_1"), ("pool",)]
    params = _init_params(net, ops, type("pp", (), {"size": 9, "channels": 1})(), 0)
    params = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape), jnp.float32), params)
    assert set(params) == {"conv0_0", "conv0_1", "decoder"} and set(params["decoder"]) == {"conv0_0", "conv0_1"}
    x = rng.standard_normal((2, 9, 9, 1)).astype(np.float32)
    got = np.asarray(jax.jit(lambda p, x: reconstruct(net, ops, p, x, 2))(params, x))
    P = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    for b in range(2):
        h1 = _leaky(_conv_same(x[b].astype(np.float64), P["conv0_0"]["kernel"]) + P["conv0_0"]["bias"])
        h2 = _leaky(_conv_same(h1, P["conv0_1"]["kernel"]) + P["conv0_1"]["bias"])
        pooled, where = _pool_with_switches(h2)
        up = np.zeros_like(h2)
        for idx in np.ndindex(pooled.shape):
            up[(*where[idx], idx[2])] += pooled[idx]
        z = _leaky(_conv_same_transposed(up, P["conv0_1"]["kernel"]) + P["decoder"]["conv0_1"])
        z = _conv_same_transposed(z, P["conv0_0"]["kernel"]) + P["decoder"]["conv0_0"]
        np.testing.assert_allclose(got[b], z, rtol=1e-4, atol=1e-4 * np.abs(z).max())
    # depth 1: no pooling, one transposed convolution, linear output
    one = np.asarray(reconstruct(net, ops, params, x, 1))
    h1 = _leaky(_conv_same(x[0].astype(np.float64), P["conv0_0"]["kernel"]) + P["conv0_0"]["bias"])
    want = _conv_same_transposed(h1, P["conv0_0"]["kernel"]) + P["decoder"]["conv0_0"]
    np.testing.assert_allclose(one[0], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("group", ["c4", "d4"])
def test_a_symmetric_stack_reconstructs_equivariantly(group, rng):
    net, ops = autoencoder_layers(_model_cfg(((4,), (6,)), group))
    assert ops[0] == ("slice",) and ("roll",) in ops
    params = _init_params(net, ops, type("pp", (), {"size": 11, "channels": 1})(), 0)
    params = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape) * 0.5, jnp.float32), params)
    fn = jax.jit(lambda x: reconstruct(net, ops, params, x, 2))
    x = jnp.asarray(rng.standard_normal((2, 11, 11, 1)), jnp.float32)
    y = fn(x)
    assert y.shape == x.shape
    check_equivariance(fn, group, x, "spatial", "spatial", atol=1e-5 * float(jnp.abs(y).max()))


def test_the_decoder_shares_the_encoders_kernels(rng):
    """One parameter per kernel: its gradient is the sum of what its encoder use and its decoder use ask."""
    from deepsea.backends import conv
    from deepsea.layers import leaky_relu

    net, ops = autoencoder_layers(_model_cfg(((3, 2),)))  # depth 1: the first convolution, no pooling
    params = _init_params(net, ops, type("pp", (), {"size": 7, "channels": 1})(), 0)
    assert jax.tree.structure(params["conv0_0"]) == jax.tree.structure({"bias": 0, "kernel": 0})  # no copy
    x = jnp.asarray(rng.standard_normal((2, 7, 7, 1)), jnp.float32)
    bias, dec_bias = params["conv0_0"]["bias"], params["decoder"]["conv0_0"]

    def untied(enc: jax.Array, dec: jax.Array) -> jax.Array:  # the same autoencoder, the two uses apart
        h = leaky_relu(conv(x, enc, None, implementation="xla") + bias, SLOPE)
        _, vjp = jax.vjp(lambda z: conv(z, dec, None, implementation="xla"), x)  # linear: any point
        return jnp.sum((vjp(h)[0] + dec_bias) ** 2)

    k = params["conv0_0"]["kernel"]
    tied = jax.grad(lambda p: jnp.sum(reconstruct(net, ops, p, x, 1) ** 2))(params)["conv0_0"]["kernel"]
    g_enc, g_dec = jax.grad(untied, argnums=(0, 1))(k, k)
    assert float(jnp.abs(g_dec).max()) > 1e-3 and float(jnp.abs(g_enc).max()) > 1e-3
    np.testing.assert_allclose(tied, g_enc + g_dec, rtol=1e-4, atol=1e-5 * float(jnp.abs(g_enc + g_dec).max()))


SMALL = [  # 23x23 inputs (maps 23, 11, 5): the smallest the synthetic network pools symmetrically
    "pretrain.greedy_steps=2",
    "pretrain.joint_steps=3",
    "pretrain.checkpoint_every=2",
    "pretrain.log_every=1",
    "data.size=23",
    "model.dropout_rate=0.0",
]


def test_pretraining_resumes_exactly_and_a_classifier_starts_from_it(tmp_path, monkeypatch, cli):
    monkeypatch.setenv("DEEPSEA_DATA", str(tmp_path / "cache"))
    config = load_experiment(os.path.join(ROOT, "experiments", "synthetic.py"), small=True)
    apply_overrides(config, SMALL)
    whole = pretrain(config, str(tmp_path / "whole"), progress=False)
    assert whole.steps == 2 * 2 + 3  # two convolutions greedily, then jointly
    pretrain(config, str(tmp_path / "killed"), progress=False, stop_after=4)
    pretrain(config, str(tmp_path / "killed"), progress=False)
    with np.load(tmp_path / "whole" / "params.npz") as a, np.load(tmp_path / "killed" / "params.npz") as b:
        assert sorted(a.files) == ["conv0_0/bias", "conv0_0/kernel", "conv1_0/bias", "conv1_0/kernel"]
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])
    assert (tmp_path / "whole" / "reconstruction.png").read_bytes()[:4] == b"\x89PNG"
    small = ["synthetic", "--small", "--set", "data.size=23", "--set", "model.dropout_rate=0.0"]
    out = cli("train", *small, "--set", f"train.pretrained={tmp_path / 'whole'}", "--set", "train.steps=1",
              "--workdir", str(tmp_path / "tuned"))  # fmt: skip
    assert "best validation" in out
    other = ["--set", "model.stages=((8,), (8,))", "--set", f"train.pretrained={tmp_path / 'whole'}"]
    out = cli("train", *small, *other, "--workdir", str(tmp_path / "bad"), rc=2)
    assert "conv0_0/bias has shape (4,), the model's is (8,); conv0_0/kernel has shape" in out  # every mismatch
    out = cli("pretrain", "resnet50_cpu", "--small", "--workdir", str(tmp_path / "r"), rc=2)
    assert "needs a RollNet" in out
    # the synthetic recipe's RollNet settings would be ignored by a ResNet: refused before anything runs
    out = cli(
        "pretrain", "synthetic", "--small", "--set", "model.name=resnet50", "--workdir", str(tmp_path / "r"), rc=2
    )
    assert "does not take model.dense_features" in out


def test_each_greedy_phase_starts_a_fresh_adam(tmp_path, monkeypatch):
    """Adam's first step moves every parameter by the rate itself (the moments' bias correction cancels); a state
    shared across phases would start the second layer with its correction spent and its step mis-sized."""
    monkeypatch.setenv("DEEPSEA_DATA", str(tmp_path / "cache"))
    config = load_experiment(os.path.join(ROOT, "experiments", "synthetic.py"), small=True)
    apply_overrides(config, [*SMALL, "pretrain.greedy_steps=6", "pretrain.checkpoint_every=1", "pretrain.lr=0.01"])
    work = str(tmp_path / "cae")
    kernels = {}
    for stop in (6, 7):  # the first phase's end, the second phase's first step
        pretrain(config, work, progress=False, stop_after=stop)
        with np.load(os.path.join(work, "checkpoint.npz")) as f:
            kernels[stop] = [f[f"arr_{i}"] for i in range(len(f.files) - 1)]  # the leaves, then "step"
    net, ops = autoencoder_layers(config.model)
    n = len(jax.tree.leaves(_init_params(net, ops, type("pp", (), {"size": 23, "channels": 1})(), 0)))
    moved = [np.abs(b - a).max() for a, b in zip(kernels[6][:n], kernels[7][:n], strict=True)]  # the parameters
    assert max(moved) == pytest.approx(0.01, rel=1e-3)


def _first_update(config, pretrained_dir):
    from deepsea.step import create_train_state, make_train_step

    setup = create_train_state(config, 12)
    from deepsea.pretrain import load_pretrained

    state = setup.state
    state.params = load_pretrained(pretrained_dir, state.params)
    before = jax.tree.map(np.asarray, state.params)
    batch = {
        "image": jnp.asarray(np.random.default_rng(0).standard_normal((8, 23, 23, 1)), jnp.float32),
        "raw_size": jnp.full((8, 2), 40.0),
        "label": jnp.arange(8, dtype=jnp.int32),
    }
    state, _ = make_train_step(setup.model, setup.optimizer, setup.schedule)(state, batch, jax.random.key(0))
    return jax.tree.map(lambda a, b: np.asarray(a) - b, state.params, before), before


def test_frozen_layers_do_not_move_and_a_half_rate_halves_the_first_update(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSEA_DATA", str(tmp_path / "cache"))
    config = load_experiment(os.path.join(ROOT, "experiments", "synthetic.py"), small=True)
    apply_overrides(config, SMALL)
    pretrain(config, str(tmp_path / "cae"), progress=False)
    runs = {}
    for name, frozen, mult in (("frozen", 1, 1.0), ("full", 0, 1.0), ("half", 0, 0.5)):
        c = config.copy_and_resolve_references()
        apply_overrides(c, [f"train.pretrained={tmp_path / 'cae'}", f"train.pretrained_frozen_steps={frozen}",
                            f"optim.pretrained_lr_multiplier={mult}"])  # fmt: skip
        runs[name], before = _first_update(c, str(tmp_path / "cae"))
    for layer in ("conv0_0", "conv1_0"):
        for k in ("kernel", "bias"):
            assert not np.any(runs["frozen"][layer][k])  # frozen: not a bit moved
            full, half = runs["full"][layer][k], runs["half"][layer][k]
            assert np.abs(full).max() > 0
            ulp = np.spacing(np.float32(np.abs(before[layer][k]).max()))  # new - old is known to the parameter's ulp
            np.testing.assert_allclose(half, 0.5 * full, rtol=1e-3, atol=2 * ulp)
    assert np.abs(runs["frozen"]["logits"]["kernel"]).max() > 0  # the rest trains from the first step
    np.testing.assert_allclose(runs["half"]["logits"]["kernel"], runs["full"]["logits"]["kernel"], rtol=1e-5)


def test_the_pretrained_layers_thaw_then_warm_up_to_their_rate():
    import optax

    from deepsea.step import _pretrained_groups

    c = base_config()
    c.train.pretrained, c.train.pretrained_frozen_steps, c.train.pretrained_warmup_steps = "x", 2, 4
    c.optim.pretrained_lr_multiplier = 0.5
    tx = _pretrained_groups(c, optax.sgd(1.0), optax.sgd(1.0))
    params = {"inner": {"conv0_0": {"kernel": jnp.zeros(1)}, "logits": {"kernel": jnp.zeros(1)}}}
    grads = jax.tree.map(jnp.ones_like, params)
    state, conv, rest = tx.init(params), [], []
    for _ in range(7):
        u, state = tx.update(grads, state, params)
        conv.append(-float(u["inner"]["conv0_0"]["kernel"][0]))
        rest.append(-float(u["inner"]["logits"]["kernel"][0]))
    np.testing.assert_allclose(conv, [0, 0, 0.125, 0.25, 0.375, 0.5, 0.5])
    assert rest == [1.0] * 7
