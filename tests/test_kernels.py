"""The shared roll suite: every test runs on the XLA reference (:mod:`deepsea.ops`) and on the Pallas kernels
(interpret mode off-GPU).

Each implementation is checked against the independent float64 numpy reference
(forward bit for bit; the gradient against the transposed reference matrix),
and the two implementations against each other, bit for bit, forward and
``jax.grad``, for C4 and D4, odd and even map sizes, channel counts that are
not a multiple of the block size, float32, bfloat16 and float16.  The op suite
(``test_ops.py``) does not repeat these cases.
"""

import functools
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy_reference import roll_ref, selection_matrix

import deepsea_kernels
from deepsea import layers
from deepsea.groups import C4, D4
from deepsea.models import CONVROLL4_STAGES, build_model
from deepsea_kernels.conv_roll import conv_roll as conv_roll_kernel
from deepsea_kernels.conv_roll import reference as conv_roll_reference
from deepsea_kernels.roll import reference as roll_reference
from deepsea_kernels.roll import roll as roll_kernel

IMPLEMENTATIONS = ["xla", "pallas"]
OPS = {
    ("conv_roll", "xla"): conv_roll_reference,
    ("conv_roll", "pallas"): conv_roll_kernel,
    ("roll", "xla"): roll_reference,
    ("roll", "pallas"): roll_kernel,
}
COMPILED = not deepsea_kernels._blocks.interpret_default()  # on a GPU the kernels are compiled


def _compiled_dense_roll(x: jax.Array, group) -> jax.Array:
    """The dense roll kernel compiled (its public entry refuses compiled use): what the GPU tests measure."""
    from deepsea_kernels._blocks import block_elements
    from deepsea_kernels.roll import _roll

    return _roll(x, group, int(block_elements(x.size // group.order, False)), False)


GROUPS = [C4, D4]
DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
MAP_SHAPES = [(1, 1, 1, 1), (2, 5, 5, 3), (1, 6, 6, 5), (1, 11, 11, 4)]  # odd and even maps
dtype_id = lambda d: jnp.dtype(d).name  # noqa: E731
gid = lambda g: g.name  # noqa: E731


def _random(rng, shape, dtype=jnp.float32):
    return jnp.asarray(rng.standard_normal(shape), dtype)


def _transposed(ref, ct: np.ndarray, in_shape: tuple[int, ...]) -> np.ndarray:
    """The reference op's transpose applied to ``ct``."""
    return (selection_matrix(ref, in_shape).T @ ct.ravel()).reshape(in_shape)


def _cases(shapes):
    """(impl, shape, dtype): the reference on every shape and dtype; the (slower, interpreted) kernels on the
    shapes that exercise something of their own, in float32 (their bfloat16 values: the gradient test)."""
    return [
        pytest.param(impl, shape, dtype, id=f"{impl}-{shape}-{dtype_id(dtype)}")
        for impl in IMPLEMENTATIONS
        for shape in shapes
        for dtype in DTYPES
        if impl == "xla" or (dtype == jnp.float32 and shape in shapes[:3])
    ]


@pytest.mark.parametrize("group", GROUPS, ids=gid)
@pytest.mark.parametrize(("impl", "shape", "dtype"), _cases(MAP_SHAPES))
def test_conv_roll_forward_matches_reference(impl, group, shape, dtype, rng):
    b, h, w, c = shape
    x = _random(rng, (group.order * b, h, w, c), dtype)
    out = jax.jit(OPS["conv_roll", impl], static_argnums=1)(x, group)
    assert out.dtype == dtype and out.shape == (group.order * b, h, w, group.order * c)
    np.testing.assert_array_equal(np.asarray(out, np.float64), roll_ref(np.asarray(x, np.float64), group.name, True))


@pytest.mark.parametrize("group", GROUPS, ids=gid)
@pytest.mark.parametrize(("impl", "shape", "dtype"), _cases([(2, 7), (3, 16), (2, 3, 5), (1, 1)]))
def test_dense_roll_forward_matches_reference(impl, group, shape, dtype, rng):
    """Alone the dense roll is bitwise the reference, compiled too (on a GPU: its internal entry)."""
    x = _random(rng, (group.order * shape[0], *shape[1:]), dtype)
    op = _compiled_dense_roll if impl == "pallas" and COMPILED else OPS["roll", impl]
    out = jax.jit(op, static_argnums=1)(x, group)
    assert out.dtype == dtype and out.shape == (*x.shape[:-1], group.order * shape[-1])
    np.testing.assert_array_equal(np.asarray(out, np.float64), roll_ref(np.asarray(x, np.float64), group.name, False))


GRADIENT_CASES = [("conv_roll", (1, 5, 5, 3)), ("conv_roll", (1, 4, 4, 2)), ("roll", (3, 2))]  # odd, even maps


@pytest.mark.parametrize("group", GROUPS, ids=gid)
@pytest.mark.parametrize(("op", "in_shape"), GRADIENT_CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_gradients_are_the_transposed_reference_and_bitwise_equal(group, op, in_shape, dtype, rng):
    """``jax.grad`` of both implementations against the transposed numpy reference, and against each other bit
    for bit (the kernel sums each input element's cotangents in the order autodiff of the reference does); the
    values of the same programs bit for bit the numpy reference."""
    shape = (group.order * in_shape[0], *in_shape[1:])
    x = _random(rng, shape, dtype)
    ct = _random(rng, jax.eval_shape(lambda z: OPS[op, "xla"](z, group), x).shape, dtype)
    ref = functools.partial(roll_ref, name=group.name, conv=op == "conv_roll")
    want = _transposed(ref, np.asarray(ct, np.float64), shape)
    # Each input element collects V cotangent elements: a sum of V terms, rounded in the dtype.
    tol = {jnp.float32: 1e-6, jnp.bfloat16: 2e-2, jnp.float16: 2e-3}[dtype]
    grads = {}
    for impl in IMPLEMENTATIONS:
        if impl == "pallas" and (dtype == jnp.float16 or (op == "roll" and COMPILED)):
            continue  # the kernels are tested in float32 and bfloat16; the compiled dense roll is disabled
        fn = OPS[op, impl]
        loss = lambda z, fn=fn: (lambda y: (jnp.sum((y * ct).astype(jnp.float32)), y))(fn(z, group))  # noqa: E731
        grads[impl], value = jax.jit(jax.grad(loss, has_aux=True))(x)
        assert grads[impl].dtype == value.dtype == dtype
        np.testing.assert_array_equal(np.asarray(value, np.float64), ref(np.asarray(x, np.float64)))
        np.testing.assert_allclose(np.asarray(grads[impl], np.float64), want, rtol=tol, atol=tol * np.abs(want).max())
    if "pallas" in grads:
        np.testing.assert_array_equal(np.asarray(grads["pallas"]), np.asarray(grads["xla"]))


@pytest.mark.slow
@pytest.mark.parametrize(("group", "channels", "block"), [(C4, 5, 16), (D4, 3, 8)], ids=["c4-5-16", "d4-3-8"])
def test_blocks_that_do_not_divide_the_maps(group, channels, block, rng):
    """Programs of ``block`` elements over maps whose size is no multiple of it: the last one wraps around."""
    x = _random(rng, (group.order, 3, 3, channels))
    assert (x.size // group.order) % block
    want = conv_roll_reference(x, group)
    ct = _random(rng, want.shape)

    def value_and_vjp(fn, z, cotangent):  # one compiled program each (interpreted Pallas is slow op by op)
        return jax.jit(lambda z, c: (lambda y, vjp: (y, vjp(c)[0]))(*jax.vjp(fn, z)))(z, cotangent)

    got, g_got = value_and_vjp(lambda z: conv_roll_kernel(z, group, block=block, interpret=True), x, ct)
    _, g_want = value_and_vjp(lambda z: conv_roll_reference(z, group), x, ct)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(g_got), np.asarray(g_want))
    xd = _random(rng, (group.order * 3, channels))
    ctd = _random(rng, roll_reference(xd, group).shape)
    y, gd_got = value_and_vjp(lambda z: roll_kernel(z, group, block=block, interpret=True), xd, ctd)
    y_want, gd_want = value_and_vjp(lambda z: roll_reference(z, group), xd, ctd)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_want))
    np.testing.assert_array_equal(np.asarray(gd_got), np.asarray(gd_want))


def test_block_size_choice():
    from deepsea_kernels._blocks import GPU_BLOCK, block_elements

    assert block_elements(1000, interpret=False) == GPU_BLOCK and GPU_BLOCK & (GPU_BLOCK - 1) == 0
    assert block_elements(1000, interpret=True) == 1024  # one program in interpret mode
    assert block_elements(1 << 30, interpret=True) == deepsea_kernels._blocks.MAX_INTERPRET_BLOCK


def test_destination_tables_are_the_group_action(rng):
    from deepsea_kernels.conv_roll import destinations

    for group in GROUPS:
        img = rng.standard_normal((5, 5))
        for h, dest in enumerate(destinations(group, 5, 5)):
            moved = np.empty(25)
            moved[dest] = img.ravel()
            np.testing.assert_array_equal(moved.reshape(5, 5), group.act(int(group.inverse[h]), img, (0, 1)))


@pytest.mark.parametrize("group", GROUPS, ids=gid)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_kernels_lower_to_triton_for_a_gpu(group, dtype):
    """Without a GPU, lower (not compile) the forward and backward kernels for CUDA: Pallas' Triton lowering
    checks its constraints (power-of-two blocks, supported primitives) at this stage."""
    from deepsea_kernels._blocks import GPU_BLOCK
    from deepsea_kernels.roll import _roll  # the dense roll's public entry refuses compiled use

    dense = lambda z, g, interpret: _roll(z, g, GPU_BLOCK, interpret)  # noqa: E731
    for fn, shape in [(conv_roll_kernel, (group.order * 2, 23, 23, 8)), (dense, (group.order * 3, 100))]:
        loss = lambda z, fn=fn: jnp.sum(fn(z, group, interpret=False).astype(jnp.float32) ** 2)  # noqa: E731
        text = jax.jit(jax.grad(loss)).trace(jnp.zeros(shape, dtype)).lower(lowering_platforms=("cuda",)).as_text()
        assert text.count("triton") >= 2  # the forward and the backward kernel


def test_unknown_implementation_and_bad_shapes_are_errors():
    with pytest.raises(ValueError, match="implementation"):
        layers.ConvRoll("c4", implementation="cuda").init(jax.random.key(0), jnp.zeros((4, 3, 3, 1)))
    with pytest.raises(ValueError, match="implementation"):
        layers.Roll("c4", implementation="triton").init(jax.random.key(0), jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="not a multiple of the 4 views"):  # the reference's message
        conv_roll_kernel(jnp.zeros((6, 3, 3, 1)), C4)
    with pytest.raises(ValueError, match="square maps"):
        conv_roll_kernel(jnp.zeros((4, 3, 5, 1)), C4)


def test_the_package_exports_only_what_runs_compiled():
    assert deepsea_kernels.__all__ == ["conv_roll"]
    assert deepsea_kernels.roll is sys.modules["deepsea_kernels.roll"]  # the module (interpret only), not the op


@pytest.mark.slow
@pytest.mark.parametrize("symmetry", ["c4", "d4"])
def test_whole_convroll4_network_is_the_same_with_either_implementation(symmetry, rng):
    """convroll4's first three stages at a quarter of its widths on 23x23 inputs (conv rolls of 11x11, 5x5 and
    2x2 maps: odd and even), with a dense roll so both kernels run: logits and every parameter's gradient are
    bitwise equal with the XLA rolls and with the Pallas kernels."""
    on_cpu = not COMPILED
    cfg = {"name": "rollnet", "symmetry": symmetry, "dense_roll": on_cpu, "dropout_rate": 0.0, "width": 0.25}
    cfg["stages"] = CONVROLL4_STAGES[:3]
    models = {impl: build_model({**cfg, "roll_impl": impl}, 121) for impl in IMPLEMENTATIONS}
    x = _random(rng, (1, 23, 23, 1))
    labels = jnp.asarray([3])
    params = jax.jit(models["xla"].init)(jax.random.key(0), x)["params"]

    def loss(params, model):
        logits = model.apply({"params": params}, x)
        return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(1), labels]), logits

    with jax.default_matmul_precision("highest"):  # on a GPU: float32 convolutions, not TF32
        grad = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
        out = {impl: grad(params, m) for impl, m in models.items()}
    logits = {impl: np.asarray(o[1]) for impl, o in out.items()}
    grads = {impl: [np.asarray(g) for g in jax.tree.leaves(o[0])] for impl, o in out.items()}
    if on_cpu:
        np.testing.assert_array_equal(logits["pallas"], logits["xla"])
        for a, b in zip(grads["pallas"], grads["xla"], strict=True):
            np.testing.assert_array_equal(a, b)
    else:
        # On a GPU the rolls are still bitwise equal (the tests above), but XLA autotunes the convolutions of
        # each compiled program separately, so their sums may run in another order: the logits differ by
        # rounding, and a rounding-level change can flip a maxout, max-pool or leaky-ReLU choice, which moves
        # single gradient entries by much more (seen on an H100).  Compare the gradients as a whole.
        np.testing.assert_allclose(logits["pallas"], logits["xla"], rtol=0, atol=1e-5 * np.abs(logits["xla"]).max())
        for a, b in zip(grads["pallas"], grads["xla"], strict=True):
            assert np.linalg.norm(a - b) <= 1e-2 * np.linalg.norm(b) + 1e-12
    assert float(jnp.abs(out["xla"][1]).max()) > 0


@pytest.mark.skipif(not COMPILED, reason="compiles the Pallas kernels: needs a GPU (interpret mode is tested above)")
@pytest.mark.xfail(strict=True, reason="inside convroll4 the compiled dense roll gave a 70% wrong upstream gradient "
                   "on an H100 (cause unknown): a pass means it was fixed, and the refusal can go")  # fmt: skip
def test_compiled_dense_roll_inside_a_network_gives_the_reference_gradient(rng):
    cfg = {"name": "rollnet", "symmetry": "c4", "dense_roll": True, "dropout_rate": 0.0, "width": 0.25}
    cfg["stages"] = CONVROLL4_STAGES[:3]
    model = build_model(cfg, 121)
    x, labels = _random(rng, (2, 23, 23, 1)), jnp.asarray([3, 7])
    params = jax.jit(model.init)(jax.random.key(0), x)["params"]

    def loss(params, roll):
        with nn.intercept_methods(roll):
            logits = model.apply({"params": params}, x)
        return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(2), labels])

    def compiled(next_fun, args, kwargs, context):  # the model's dense roll through the compiled kernel
        if isinstance(context.module, layers.Roll) and context.method_name == "__call__":
            return _compiled_dense_roll(args[0], C4)
        return next_fun(*args, **kwargs)

    with jax.default_matmul_precision("highest"):
        want = jax.grad(loss)(params, lambda f, a, k, c: f(*a, **k))
        got = jax.grad(loss)(params, compiled)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert np.linalg.norm(np.asarray(a) - np.asarray(b)) <= 1e-2 * np.linalg.norm(np.asarray(b)) + 1e-12


def test_compiled_dense_roll_is_refused(rng):
    """The compiled dense roll gave a wrong upstream gradient inside a network on an H100: refused, clearly."""
    with pytest.raises(NotImplementedError, match="dense roll is disabled"):
        roll_kernel(_random(rng, (4, 3)), C4, interpret=False)
