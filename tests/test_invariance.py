"""A rolled network is invariant to its group acting on the input, to float rounding."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from random_params import random_params
from wrong_rolls import wrong_dihedral_conv_roll
from xla_flags import COMMAND_LINE_EMITTERS

from deepsea import models, ops
from deepsea.equivariance import check_invariance
from deepsea.groups import D4


def _net_fn(net, size, channels=1, seed=0):
    params = random_params(net, jnp.zeros((1, size, size, channels), jnp.float32), seed=seed)
    return jax.jit(lambda x: net.apply(params, x))


@pytest.mark.parametrize("group", ["c4", "d4"])
@pytest.mark.parametrize("size", [11, 23, 47])
@pytest.mark.parametrize("dense_roll", [False, True])
def test_small_rolled_network_is_invariant(group, size, dense_roll, rng):
    net = models.tiny_rollnet(symmetry=group, dense_roll=dense_roll)
    fn = _net_fn(net, size)
    x = jnp.asarray(rng.standard_normal((3, size, size, 1)), jnp.float32)
    errors = check_invariance(fn, group, x, atol=1e-5)
    assert set(errors) == {"e", "r", "r2", "r3"} | ({"m", "rm", "r2m", "r3m"} if group == "d4" else set())


@pytest.mark.parametrize("group", ["c4", "d4"])
@pytest.mark.parametrize(
    "variant",
    [
        {"conv_roll": False},
        {"untied_biases": True},
        {"untied_biases": True, "dense_roll": True},
        {"fold_views": 2},
        {"roll_every_conv": True},
        {"roll_every_conv": True, "fold_views": 2},
    ],
)
def test_the_ablation_variants_stay_invariant(group, variant, rng):
    """Slice and view pool without conv rolls, the seed's untied biases (each view sees the same bias map in its
    own frame), folded views, a conv roll before every convolution: still exactly invariant; untied biases have
    one bias per position and channel, and a roll within a stage stacks the views' channels there too."""
    net = models.tiny_rollnet(symmetry=group, stages=((4, 3), (8,)), **variant)
    x = jnp.asarray(rng.standard_normal((2, 23, 23, 1)), jnp.float32)
    params = jax.jit(net.init)(jax.random.key(1), x[:1])["params"]
    params = jax.tree.map(lambda a: a + 0.1 * jnp.asarray(rng.standard_normal(a.shape), a.dtype), params)  # biases != 0
    if variant.get("untied_biases"):
        assert params["conv0_0"]["bias"].shape == (23, 23, 4) and params["conv1_0"]["bias"].shape == (11, 11, 8)
        assert params["conv0_1"]["bias"].shape == (23, 23, 3)
    views = 1 if variant.get("conv_roll") is False else (4 if group == "c4" else 8)
    assert params["conv1_0"]["kernel"].shape == (3, 3, 3 * views, 8)  # a conv roll stacks the views' channels
    assert params["conv0_1"]["kernel"].shape == (3, 3, 4 * (views if variant.get("roll_every_conv") else 1), 3)
    # folded views sum in another order than the views they stand for: rounding relative to the logits' size
    rtol = 1e-6 if variant.get("fold_views") else 0.0
    check_invariance(jax.jit(lambda x: net.apply({"params": params}, x)), group, x, atol=1e-5, rtol=rtol)


@pytest.mark.slow
@pytest.mark.parametrize(("group", "width"), [("c4", 1.0), ("d4", 0.25)])
def test_convroll4_shaped_network_is_invariant_at_95(group, width, rng):
    """convroll4's stages (maps 95 -> 47 -> 23 -> 11 -> 5) with a dense roll: the published network itself
    (C4, its channel counts) and its dihedral variant at a quarter of the widths (the grid is the same)."""
    net = models.rollnet(121, width, symmetry=group, dense_roll=True)
    fn = _net_fn(net, 95)
    x = jnp.asarray(rng.standard_normal((1, 95, 95, 1)), jnp.float32)
    logits = fn(x)
    assert logits.shape == (1, 121) and np.all(np.isfinite(logits))
    check_invariance(fn, group, x, atol=1e-5)


def test_plain_network_is_not_invariant(rng):
    """The check has teeth: without the symmetry layers a rotation changes the output."""
    net = models.tiny_rollnet(symmetry=None)
    fn = _net_fn(net, 23)
    x = jnp.asarray(rng.standard_normal((2, 23, 23, 1)), jnp.float32)
    with pytest.raises(AssertionError, match="not equivariant"):
        check_invariance(fn, "c4", x, atol=1e-5)


def test_dihedral_network_with_a_wrong_roll_is_not_invariant(rng):
    """The competition code's dihedral conv roll took view g.h instead of h.g; ours catches that."""

    class WrongConvRoll(nn.Module):  # called as the conv roll factory is: with group= and implementation=
        group: object = "d4"
        implementation: str = "xla"

        def __call__(self, x):
            return wrong_dihedral_conv_roll(x)

    net = models.tiny_rollnet(symmetry="d4", conv_roll_layer=WrongConvRoll)
    fn = _net_fn(net, 23)
    x = jnp.asarray(rng.standard_normal((2, 23, 23, 1)), jnp.float32)
    with pytest.raises(AssertionError, match="not equivariant"):
        check_invariance(fn, "d4", x, atol=1e-5)
    # while the correct one is invariant on the same data
    check_invariance(_net_fn(models.tiny_rollnet(symmetry="d4"), 23), "d4", x, atol=1e-5)


def test_even_size_is_refused_not_silently_misaligned():
    net = models.tiny_rollnet(symmetry="c4")
    with pytest.raises(ValueError, match="48x48 is not symmetric"):
        net.init(jax.random.key(0), jnp.zeros((1, 48, 48, 1)))


def test_rolled_features_are_aligned(rng):
    """After slice and conv roll, block h of view g holds g(x) exactly: the stack is aligned."""
    x = jnp.asarray(rng.standard_normal((2, 9, 9, 1)), jnp.float32)
    rolled = ops.dihedral_conv_roll(ops.dihedral_slice(x))
    blocks = rolled.reshape(8, 2, 9, 9, 8, 1)
    for g in range(8):
        for h in range(8):
            np.testing.assert_array_equal(blocks[g, :, :, :, h], D4.act(g, x, (1, 2)))


@pytest.mark.parametrize("group", ["c4", "d4"])
@pytest.mark.parametrize("size", [23, 24])
def test_orbit_average_makes_a_plain_network_exactly_invariant(group, size, rng):
    """A plain network (batch norm, size features) is not invariant; wrapped, its predictions are, to rounding,
    and they equal the mean log-probabilities over the input's rotated (and mirrored) copies made by numpy."""
    inner = models.tiny_rollnet(symmetry=None, size_features=True, norm=nn.BatchNorm)
    net = models.OrbitAverage(inner, group)
    x = jnp.asarray(rng.standard_normal((3, size, size, 1)), jnp.float32)
    raw = jnp.asarray(rng.uniform(20, 300, (3, 2)), jnp.float32)
    variables = jax.jit(net.init)(jax.random.key(0), x, raw_size=raw)
    inner_vars = {k: v["inner"] for k, v in variables.items()}
    fn = jax.jit(lambda z: net.apply(variables, z, raw_size=raw))
    errors = check_invariance(fn, group, x, atol=1e-5)
    assert len(errors) == (4 if group == "c4" else 8)
    with pytest.raises(AssertionError, match="not equivariant"):
        check_invariance(lambda z: inner.apply(inner_vars, z, raw_size=raw), group, x, atol=1e-5)

    xn = np.asarray(x)
    copies = [np.rot90(xn, k, axes=(1, 2)) for k in range(4)]
    if group == "d4":
        copies += [np.rot90(xn[:, :, ::-1], k, axes=(1, 2)) for k in range(4)]
    logp = [
        np.asarray(jax.nn.log_softmax(inner.apply(inner_vars, jnp.asarray(c.copy()), raw_size=raw)), np.float64)
        for c in copies
    ]
    np.testing.assert_allclose(np.asarray(fn(x)), np.mean(logp, axis=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("inner_group", "group", "copies"), [("c4", "d4", (0, 4)), ("d4", "d4", (0,)), ("c4", "c4", (0,))]
)
def test_an_invariant_networks_orbit_average_computes_one_copy_per_coset(inner_group, group, copies, rng):
    """A C4-invariant network averaged over D4 runs on the image and its mirror image only (the four rotations of
    each give its prediction again), a network invariant to the whole group once: the same predictions as the
    average over every copy, to rounding, exactly D4-invariant, and a build_model wrapper knows the symmetry."""
    inner = models.tiny_rollnet(symmetry=inner_group, size_features=True)
    net = models.OrbitAverage(inner, group, inner_group)
    every = models.OrbitAverage(inner, group)
    assert net.copies() == copies and every.copies() == tuple(range(4 if group == "c4" else 8))
    x = jnp.asarray(rng.standard_normal((3, 23, 23, 1)), jnp.float32)
    raw = jnp.asarray(rng.uniform(20, 300, (3, 2)), jnp.float32)
    variables = jax.jit(net.init)(jax.random.key(0), x, raw_size=raw)
    variables = jax.tree.map(lambda a: np.asarray(a) + 0.1 * rng.standard_normal(a.shape).astype(a.dtype), variables)
    fn = jax.jit(lambda z: net.apply(variables, z, raw_size=raw))
    np.testing.assert_allclose(fn(x), jax.jit(every.apply)(variables, x, raw_size=raw), rtol=1e-5, atol=1e-5)
    check_invariance(fn, group, x, atol=1e-5)
    if (inner_group, group) == ("c4", "d4"):  # the mirror copy matters: the network alone is not mirror-invariant
        alone = jax.jit(lambda z: inner.apply({"params": variables["params"]["inner"]}, z, raw_size=raw))
        with pytest.raises(AssertionError, match="not equivariant"):
            check_invariance(alone, "d4", x)
    built = models.build_model({"name": "rollnet", "symmetry": inner_group, "orbit_average": group}, 5)
    assert built.copies() == copies
    assert models.build_model({"name": "rollnet", "symmetry": None, "orbit_average": group}, 5).copies() == (
        every.copies()
    )


def test_orbit_average_trains_the_network_alone(rng):
    """In training the wrapper is the network on the one input (no copies)."""
    inner = models.tiny_rollnet(symmetry=None)
    net = models.OrbitAverage(inner, "d4")
    x = jnp.asarray(rng.standard_normal((2, 23, 23, 1)), jnp.float32)
    variables = jax.jit(net.init)(jax.random.key(0), x)
    got = net.apply(variables, x, train=True)
    want = inner.apply({"params": variables["params"]["inner"]}, x, train=True)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert models.count_params(variables["params"]) == models.count_params(variables["params"]["inner"])


def test_size_features_ignore_a_swap_of_height_and_width():
    raw = jnp.asarray([[30.0, 200.0], [54.6, 54.6]])
    np.testing.assert_array_equal(np.asarray(models.size_features(raw)), np.asarray(models.size_features(raw[:, ::-1])))
    np.testing.assert_allclose(np.asarray(models.size_features(raw))[0], np.log([200.0, 30.0]) - 4.0, rtol=1e-6)


@pytest.mark.parametrize("group", ["c4", "d4"])
@pytest.mark.parametrize("size", [23])
def test_bfloat16_rolled_network_is_exactly_as_invariant(group, size, rng):
    """In bfloat16 the ops are still permutations and the pools sort before summing, so the output is
    invariant to every group element as in float32."""
    net = models.tiny_rollnet(symmetry=group, dense_roll=True, precision="bfloat16")
    fn = _net_fn(net, size)
    x = jnp.asarray(rng.standard_normal((3, size, size, 1)), jnp.float32)
    assert fn(x).dtype == jnp.float32  # the logits (and the loss, softmax and parameters) stay float32
    check_invariance(fn, group, x, atol=1e-5)


@pytest.mark.slow
def test_bfloat16_convroll4_shaped_network_is_invariant_at_95(rng):
    """convroll4's stages (maps 95 -> 47 -> 23 -> 11 -> 5) at a quarter of its widths, in bfloat16."""
    net = models.rollnet(121, 0.25, symmetry="c4", dense_roll=True, precision="bfloat16")
    fn = _net_fn(net, 95)
    x = jnp.asarray(rng.standard_normal((2, 95, 95, 1)), jnp.float32)
    check_invariance(fn, "c4", x, atol=1e-5)


@pytest.mark.parametrize("group", ["c4", "d4"])
def test_the_dense_roll_feeds_a_per_view_layer_before_the_pool(group, rng):
    """A roll followed directly by the view pool only copies pooled features (every block pools to the same
    vector), so the roll must feed dense1 per view: replacing it by a copy of each view changes the logits."""
    import flax.linen as nn

    from deepsea import layers

    net = models.tiny_rollnet(symmetry=group, dense_roll=True)
    x = jnp.asarray(rng.standard_normal((2, 23, 23, 1)), jnp.float32)
    params = jax.jit(net.init)(jax.random.key(0), x)
    v = 4 if group == "c4" else 8

    def copies(next_fun, args, kwargs, context):
        if isinstance(context.module, layers.Roll) and context.method_name == "__call__":
            return jnp.concatenate([args[0]] * v, axis=-1)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(copies):
        copied = net.apply(params, x)
    assert float(jnp.abs(net.apply(params, x) - copied).max()) > 1e-3


@pytest.mark.parametrize("group", ["c4", "d4"])
@pytest.mark.parametrize("size", [11, 12, 23])
def test_folded_views_are_the_sliced_views_convolved(group, size, rng):
    """ops.view_kernels and ops.unfold_views: the input convolved with every view's kernel, unfolded, is every
    view convolved with the kernel (float64 numpy convolution as the reference; even and odd sizes)."""
    from numpy_reference import conv_ref

    x = rng.standard_normal((2, size, size, 3)).astype(np.float32)  # float32: the permutations are exact
    kernel = rng.standard_normal((3, 3, 3, 5)).astype(np.float32)
    expected, _ = conv_ref(np.asarray(ops.group_slice(jnp.asarray(x), group)), kernel, "SAME")
    kernels = np.concatenate([np.asarray(k) for k in ops.view_kernels(jnp.asarray(kernel), group)], axis=-1)
    folded, _ = conv_ref(x, kernels, "SAME")
    np.testing.assert_allclose(np.asarray(ops.unfold_views(jnp.asarray(folded), group)), expected, atol=1e-10)


@pytest.mark.parametrize("fold, variant", [(3, {}), (2, {"roll_every_conv": True})])
def test_a_network_with_folded_views_is_the_sliced_one_with_the_same_parameters(fold, variant, rng):
    """model.fold_views: the same parameters (names, shapes, initial values), the same logits and gradients to
    float rounding (D4: eight blocks; C4's folded network is checked for invariance above), with all three stages
    folded, or two with a conv roll before every convolution (the conv rolls folded into group convolutions, or
    block-diagonal kernels without rolls); refused where the first stages are not plain convolutions with a fused
    leaky ReLU."""
    group = "d4"
    from deepsea.errors import UserError

    stages = ((4, 3), (5,), (6, 4))
    sliced = models.tiny_rollnet(symmetry=group, stages=stages, **variant)
    folded = models.tiny_rollnet(symmetry=group, stages=stages, fold_views=fold, **variant)
    x = jnp.asarray(rng.standard_normal((3, 23, 23, 1)), jnp.float32)
    params = jax.jit(sliced.init)(jax.random.key(2), x[:1])["params"]
    folded_shapes = jax.eval_shape(folded.init, jax.random.key(2), x[:1])["params"]
    assert jax.tree.map(np.shape, params) == jax.tree.map(lambda a: a.shape, folded_shapes)
    params = jax.tree.map(lambda a: a + 0.1 * jnp.asarray(rng.standard_normal(a.shape), a.dtype), params)
    loss = lambda net: lambda p: jnp.sum(net.apply({"params": p}, x) ** 2)  # noqa: E731
    (a, ga), (b, gb) = (jax.jit(jax.value_and_grad(loss(net)))(params) for net in (sliced, folded))
    np.testing.assert_allclose(b, a, rtol=1e-5)
    for u, w in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True):
        np.testing.assert_allclose(w, u, rtol=1e-4, atol=1e-6 * float(np.abs(u).max()))  # float32 sums' rounding
    with pytest.raises(UserError, match=r"fold_views .* tied biases"):
        models.tiny_rollnet(symmetry=group, fold_views=fold, untied_biases=True).init(jax.random.key(0), x[:1])
    with pytest.raises(UserError, match=r"roll_every_conv needs a symmetry and conv rolls"):
        models.tiny_rollnet(symmetry=group, conv_roll=False, roll_every_conv=True).init(jax.random.key(0), x[:1])
    with pytest.raises(UserError, match=r"fold_views=4: expected 0 to 3"):
        models.tiny_rollnet(symmetry=group, stages=stages, fold_views=4).init(jax.random.key(0), x[:1])


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_the_recipes_network_is_invariant_as_its_experiment_builds_it(precision, rng):
    """``ndsb_cpu``'s regular C4 network with its mirror average, from its experiment module (47x47, the raw size
    late-fused, every stage folded), random parameters: D4-invariant, in float32 to float rounding.  In bfloat16
    the folded convolutions sum a rotated input's taps in another order, so a rotation moves the output by
    bfloat16 rounding (under a percent of its scale: a wrong roll moves it by its scale); the same network sliced
    (``fold_views=0``, the same parameters) computes every view's convolution on the same numbers and is bitwise
    invariant."""
    from deepsea.configs import load_experiment

    cfg = load_experiment(os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments", "ndsb_cpu.py"))
    cfg.model.precision = precision
    assert (cfg.model.symmetry, cfg.model.roll_every_conv, cfg.model.orbit_average) == ("c4", True, "d4")
    assert cfg.model.fold_views == len(cfg.model.stages) and cfg.model.size_features
    x = jnp.asarray(rng.standard_normal((2, 47, 47, 1)), jnp.float32)
    raw = jnp.asarray([[60.0, 120.0], [33.0, 20.0]])  # sorted sides: the same for every rotation
    net = models.build_model(cfg.model, 121)
    assert net.copies() == (0, 4)  # the image and its mirror image
    params = jax.jit(net.init)(jax.random.key(1), x[:1], raw_size=raw[:1])["params"]
    params = {"params": jax.tree.map(lambda a: a + 0.02 * jnp.asarray(rng.standard_normal(a.shape), a.dtype), params)}
    fn = jax.jit(lambda x: net.apply(params, x, raw_size=raw))
    if precision == "float32":
        check_invariance(fn, "d4", x, atol=1e-5, rtol=1e-6)
        return
    scale = float(jnp.abs(fn(x)).max())
    errors = check_invariance(fn, "d4", x, atol=0.01 * scale)
    assert max(errors.values()) > 0  # folded: not bitwise (else the sliced check below proves nothing new)
    cfg.model.fold_views = 0
    sliced = models.build_model(cfg.model, 121)
    bitwise = jax.jit(lambda x: sliced.apply(params, x, raw_size=raw), compiler_options=COMMAND_LINE_EMITTERS)
    check_invariance(bitwise, "d4", x)
