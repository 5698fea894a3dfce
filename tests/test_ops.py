import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy_reference import pool_grad_ref, pool_ref, roll_ref, selection_matrix, slice_ref
from wrong_rolls import wrong_dihedral_conv_roll
from xla_flags import COMMAND_LINE_EMITTERS

from deepsea import ops
from deepsea.equivariance import check_equivariance
from deepsea.groups import C4, D4

GROUPS = [C4, D4]
DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
_bitwise_jit = functools.partial(jax.jit, compiler_options=COMMAND_LINE_EMITTERS)  # bitwise claims: xla_flags.py
MAP_SHAPES = [(1, 1, 1, 1), (2, 5, 5, 3), (3, 6, 6, 2), (1, 11, 11, 4)]
gid = lambda g: g.name  # noqa: E731


def _random(rng, shape, dtype=jnp.float32):
    return jnp.asarray(rng.standard_normal(shape), dtype)


# --- against the independent numpy reference -------------------------------------------


@pytest.mark.parametrize("group", GROUPS, ids=gid)
@pytest.mark.parametrize("shape", MAP_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_slice_matches_reference(group, shape, dtype, rng):
    x = _random(rng, shape, dtype)
    out = jax.jit(ops.group_slice, static_argnums=1)(x, group)
    assert out.dtype == dtype and out.shape == (group.order * shape[0], *shape[1:])
    np.testing.assert_array_equal(np.asarray(out, np.float64), slice_ref(np.asarray(x, np.float64), group.name))


# the rolls against the numpy reference, forward and gradient: test_kernels.py (with the kernels)


@pytest.mark.parametrize("group", GROUPS, ids=gid)
@pytest.mark.parametrize("mode", ["mean", "max", "rms"])
@pytest.mark.parametrize("shape", [(1, 1), (3, 10), (2, 5, 5, 3)])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_pool_matches_reference(group, mode, shape, dtype, rng):
    x = _random(rng, (group.order * shape[0], *shape[1:]), dtype)
    out = jax.jit(ops.group_pool, static_argnums=(1, 2))(x, group, mode)
    assert out.dtype == dtype and out.shape == shape
    want = pool_ref(np.asarray(x, np.float64), group.name, mode)
    # one rounding per add and per division in the dtype's precision
    rtol = {jnp.float32: 1e-6, jnp.bfloat16: 2e-2, jnp.float16: 4e-3}[dtype]
    np.testing.assert_allclose(np.asarray(out, np.float64), want, rtol=rtol, atol=rtol)


def test_named_wrappers_are_the_group_ops(rng):
    x = _random(rng, (2, 5, 5, 3))
    s4, s8 = ops.cyclic_slice(x), ops.dihedral_slice(x)
    np.testing.assert_array_equal(s4, ops.group_slice(x, "c4"))
    np.testing.assert_array_equal(s8, ops.group_slice(x, "d4"))
    np.testing.assert_array_equal(ops.cyclic_conv_roll(s4), ops.group_conv_roll(s4, C4))
    np.testing.assert_array_equal(ops.dihedral_conv_roll(s8), ops.group_conv_roll(s8, D4))
    f4, f8 = s4.reshape(8, -1), s8.reshape(16, -1)
    np.testing.assert_array_equal(ops.cyclic_roll(f4), ops.group_roll(f4, C4))
    np.testing.assert_array_equal(ops.dihedral_roll(f8), ops.group_roll(f8, D4))
    np.testing.assert_array_equal(ops.cyclic_pool(f4, "max"), ops.group_pool(f4, C4, "max"))
    np.testing.assert_array_equal(ops.dihedral_pool(f8, "rms"), ops.group_pool(f8, D4, "rms"))


def test_cyclic_roll_block_rule(rng):
    """The issue's wording for C4: view i, block k holds view (i + k) mod 4 (rotated by -k for maps)."""
    b, n, c = 2, 5, 3
    x = _random(rng, (4 * b, n, n, c))
    dense, conv = ops.cyclic_roll(x.reshape(4 * b, -1)), ops.cyclic_conv_roll(x)
    f = n * n * c
    for i in range(4):
        for k in range(4):
            src = x[((i + k) % 4) * b : ((i + k) % 4 + 1) * b]
            np.testing.assert_array_equal(dense[i * b : (i + 1) * b, k * f : (k + 1) * f], src.reshape(b, -1))
            np.testing.assert_array_equal(
                conv[i * b : (i + 1) * b, ..., k * c : (k + 1) * c], jnp.rot90(src, -k, axes=(1, 2))
            )


# --- the roll of a slice: every block of view g is g applied to the input -------------


@pytest.mark.parametrize("group", GROUPS, ids=gid)
@pytest.mark.parametrize("shape", MAP_SHAPES)
def test_rolling_the_slice_aligns_every_block(group, shape, rng):
    x = _random(rng, shape)
    b, c = shape[0], shape[-1]
    rolled = ops.group_conv_roll(ops.group_slice(x, group), group)
    for g in range(group.order):
        want = group.act(g, x, axes=(1, 2))
        for h in range(group.order):
            np.testing.assert_array_equal(rolled[g * b : (g + 1) * b, ..., h * c : (h + 1) * c], want)


# --- equivariance under every group element, bit for bit -------------------------------


@pytest.mark.parametrize("group", GROUPS, ids=gid)
@pytest.mark.parametrize("shape", MAP_SHAPES)
def test_slice_equivariance(group, shape, rng):
    x = _random(rng, shape)
    check_equivariance(lambda y: ops.group_slice(y, group), group, x, "spatial", "views")


@pytest.mark.parametrize("group", GROUPS, ids=gid)
@pytest.mark.parametrize("shape", MAP_SHAPES)
def test_conv_roll_equivariance(group, shape, rng):
    b, h, w, c = shape
    x = _random(rng, (group.order * b, h, w, c))
    check_equivariance(lambda y: ops.group_conv_roll(y, group), group, x, "views", "views")
    # and composed with the slice: transforming the image permutes the rolled views
    img = _random(rng, shape)
    check_equivariance(lambda y: ops.group_conv_roll(ops.group_slice(y, group), group), group, img, "spatial", "views")


@pytest.mark.parametrize("group", GROUPS, ids=gid)
@pytest.mark.parametrize("shape", [(1, 1), (3, 10), (2, 4, 6)])
def test_dense_roll_equivariance(group, shape, rng):
    x = _random(rng, (group.order * shape[0], *shape[1:]))
    check_equivariance(lambda y: ops.group_roll(y, group), group, x, "views", "views")


@pytest.mark.parametrize("group", GROUPS, ids=gid)
@pytest.mark.parametrize("mode", ["mean", "max", "rms"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_pool_is_bitwise_invariant(group, mode, dtype, rng):
    x = _random(rng, (group.order * 3, 7, 5), dtype)
    check_equivariance(_bitwise_jit(lambda y: ops.group_pool(y, group, mode)), group, x, "views", "trivial")


@pytest.mark.parametrize("group", GROUPS, ids=gid)
@pytest.mark.parametrize("mode", ["mean", "rms"])
@pytest.mark.parametrize("producer", ["scale", "square", "affine"])
def test_pool_stays_bitwise_invariant_when_fused_with_a_multiply(group, mode, producer, rng):
    """XLA fuses the producer into the pool; a multiply next to an add becomes an FMA,
    which breaks a naive sum's symmetry in the last bit.  The sorted sum must not."""
    x = _random(rng, (group.order * 30, 7, 5))
    w = _random(rng, (7, 5))
    pre = {"scale": lambda y: y * w, "square": lambda y: y * y, "affine": lambda y: jnp.exp(y) * w + y}[producer]
    check_equivariance(_bitwise_jit(lambda y: ops.group_pool(pre(y), group, mode)), group, x, "views", "trivial")
    # the control: a plain mean over the views, fused the same way, is not bitwise invariant
    naive = _bitwise_jit(lambda y: jnp.mean(pre(y).reshape(group.order, -1, *y.shape[1:]), 0))
    with pytest.raises(AssertionError, match="not equivariant"):
        check_equivariance(naive, group, x, "views", "trivial", atol=0.0)


def test_pool_stays_bitwise_invariant_with_default_compiler_flags():
    """The same test and its control with XLA's default flags (the suite compiles with the flags of xla_flags.py)."""
    import subprocess
    import sys

    code = (
        "import os, sys; sys.path.insert(0, os.path.dirname(sys.argv[1])); import pytest; "
        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-n', '0', '-W', 'error', sys.argv[1], "
        "'-k', 'bitwise_invariant_when_fused_with_a_multiply']))"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["DEEPSEA_DEFAULT_XLA_FLAGS"] = "1"  # conftest keeps the compiler's defaults
    out = subprocess.run([sys.executable, "-c", code, __file__], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "12 passed" in out.stdout


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_sorting_network_sorts_every_zero_one_input(n):
    """The 0-1 principle: a comparator network that sorts all 0/1 inputs sorts everything."""
    import itertools

    net = ops._sorting_network(n)
    for bits in itertools.product([0, 1], repeat=n):
        v = list(bits)
        for i, j in net:
            v[i], v[j] = min(v[i], v[j]), max(v[i], v[j])
        assert v == sorted(bits)


def test_wrong_dihedral_roll_order_is_not_equivariant(rng):
    """The check has teeth: taking view g.h instead of h.g (the competition code's mistake) fails."""
    x = _random(rng, (8 * 2, 5, 5, 3))

    with pytest.raises(AssertionError, match="not equivariant"):
        check_equivariance(wrong_dihedral_conv_roll, D4, x, "views", "views")


@pytest.mark.parametrize("group", [C4, D4])
def test_permute_views_moves_numpy_arrays_as_it_moves_jax_arrays(group, rng):
    """The checks move views in numpy: the same rows as the JAX op, and a numpy array back."""
    x = rng.standard_normal((group.order * 3, 5, 4, 2)).astype(np.float32)
    for a in range(group.order):
        got = ops.permute_views(x, group, a)
        assert isinstance(got, np.ndarray)
        np.testing.assert_array_equal(got, np.asarray(ops.permute_views(jnp.asarray(x), group, a)))
        np.testing.assert_array_equal(got.reshape(group.order, 3, -1)[0], x.reshape(group.order, 3, -1)[a])


# --- jit, vmap, errors -------------------------------------------------------------------


def test_ops_vmap(rng):
    x = _random(rng, (3, 2, 5, 5, 1))
    out = jax.vmap(ops.cyclic_slice)(x)
    for i in range(3):
        np.testing.assert_array_equal(out[i], ops.cyclic_slice(x[i]))
    out = jax.vmap(lambda y: ops.dihedral_conv_roll(ops.dihedral_slice(y)))(x)
    for i in range(3):
        np.testing.assert_array_equal(out[i], ops.dihedral_conv_roll(ops.dihedral_slice(x[i])))


def test_clear_errors():
    with pytest.raises(ValueError, match=r"square maps.*5x6"):
        ops.cyclic_slice(jnp.zeros((1, 5, 6, 1)))
    with pytest.raises(ValueError, match=r"square maps.*4x6"):
        ops.cyclic_conv_roll(jnp.zeros((4, 4, 6, 1)))
    with pytest.raises(ValueError, match=r"batch axis \(6\) is not a multiple of the 4 views"):
        ops.cyclic_roll(jnp.zeros((6, 3)))
    with pytest.raises(ValueError, match=r"not a multiple of the 8 views"):
        ops.dihedral_pool(jnp.zeros((12, 3)))
    with pytest.raises(ValueError, match="NHWC"):
        ops.cyclic_slice(jnp.zeros((5, 5)))
    with pytest.raises(ValueError, match="unknown pooling mode 'median'"):
        ops.cyclic_pool(jnp.zeros((4, 3)), "median")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("size", "window", "stride", "padding", "symmetric"),
    [
        (95, 3, 2, "VALID", True),
        (47, 3, 2, "VALID", True),
        (5, 3, 2, "VALID", True),
        (48, 3, 2, "VALID", False),
        (96, 3, 2, "VALID", False),
        (48, 2, 2, "VALID", True),
        (47, 2, 2, "VALID", False),
        (47, 3, 2, "SAME", True),
        (48, 3, 2, "SAME", False),
        (10, 3, 1, "SAME", True),
        (10, 3, 2, (1, 1), False),
        (11, 3, 2, (1, 1), True),
    ],
)
def test_pooling_symmetry(size, window, stride, padding, symmetric):
    assert ops.pooling_is_symmetric(size, window, stride, padding) is symmetric
    # independent check: window centres, mirrored, are window centres
    lo, hi = 0, 0
    if isinstance(padding, tuple):
        lo, hi = padding
    elif padding == "SAME":
        out = -(-size // stride)
        total = max((out - 1) * stride + window - size, 0)
        lo, hi = total // 2, total - total // 2
    out = (size + lo + hi - window) // stride + 1
    centres = {2 * (-lo + i * stride) + window - 1 for i in range(out)}  # doubled to stay integer
    assert ({2 * (size - 1) - c for c in centres} == centres) is symmetric


# --- gradients ---------------------------------------------------------------------------


@pytest.mark.parametrize("group", GROUPS, ids=gid)
@pytest.mark.parametrize(
    ("op", "ref", "in_shape"),
    [
        ("slice", lambda x, g: slice_ref(x, g), lambda v: (2, 3, 3, 2)),
        ("conv_roll", lambda x, g: roll_ref(x, g, conv=True), lambda v: (v * 2, 3, 3, 2)),
        ("roll", lambda x, g: roll_ref(x, g, conv=False), lambda v: (v * 2, 3)),
    ],
    ids=["slice", "conv_roll", "roll"],
)
def test_linear_op_jvp_and_vjp_are_the_reference_matrix(group, op, ref, in_shape, rng):
    fn = {"slice": ops.group_slice, "conv_roll": ops.group_conv_roll, "roll": ops.group_roll}[op]
    shape = in_shape(group.order)
    x = _random(rng, shape)
    y, vjp = jax.vjp(lambda z: fn(z, group), x)
    ct = _random(rng, y.shape)
    (got,) = vjp(ct)
    m = selection_matrix(functools.partial(ref, g=group.name), shape)
    want = (m.T @ np.asarray(ct, np.float64).ravel()).reshape(shape)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-6, atol=1e-6)
    # forward-mode agrees with the same matrix
    t = _random(rng, shape)
    _, jvp_out = jax.jvp(lambda z: fn(z, group), (x,), (t,))
    np.testing.assert_allclose(
        np.asarray(jvp_out, np.float64).ravel(), m @ np.asarray(t, np.float64).ravel(), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("group", GROUPS, ids=gid)
@pytest.mark.parametrize("mode", ["mean", "max", "rms"])
def test_pool_gradients(group, mode, rng):
    x = _random(rng, (group.order * 3, 4))
    ct = _random(rng, (3, 4))
    got = jax.grad(lambda z: jnp.sum(ops.group_pool(z, group, mode) * ct))(x)
    want = pool_grad_ref(np.asarray(x, np.float64), np.asarray(ct, np.float64), group.name, mode)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-5, atol=1e-6)


def test_rms_pool_gradient_is_finite_at_zero():
    for dtype in DTYPES:
        g = jax.grad(lambda z: jnp.sum(ops.cyclic_pool(z, "rms").astype(jnp.float32)))(jnp.zeros((4, 3), dtype))
        assert np.all(np.isfinite(np.asarray(g, np.float32)))


@pytest.mark.parametrize("group", GROUPS, ids=gid)
@pytest.mark.parametrize(
    ("op", "ref", "in_shape"),
    [
        ("slice", lambda x, g: slice_ref(x, g), lambda v: (2, 5, 5, 3)),
        ("conv_roll", lambda x, g: roll_ref(x, g, conv=True), lambda v: (v * 2, 4, 4, 3)),
        ("roll", lambda x, g: roll_ref(x, g, conv=False), lambda v: (v * 3, 5)),
    ],
    ids=["slice", "conv_roll", "roll"],
)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=lambda d: jnp.dtype(d).name)
def test_16_bit_gradients_sum_in_float32_and_round_once(group, op, ref, in_shape, dtype, rng):
    """16-bit slices and rolls move bit patterns; the gradient of each input element is the sum of its ``V``
    copies' cotangents rounded once.  With integer cotangents below ``2**(mantissa bits + 1)`` every term is exact
    in the dtype and every sum exact in float32, but the sums need more bits than the dtype has: a sum rounded
    after every add would differ from the float64 sum rounded once."""
    fn = {"slice": ops.group_slice, "conv_roll": ops.group_conv_roll, "roll": ops.group_roll}[op]
    shape = in_shape(group.order)
    x = jnp.asarray(rng.standard_normal(shape), dtype)
    y, vjp = jax.vjp(lambda z: fn(z, group), x)
    np.testing.assert_array_equal(np.asarray(y, np.float64), ref(np.asarray(x, np.float64), group.name))
    exact = 2 ** (jnp.finfo(dtype).nmant + 1)
    ct = rng.integers(-exact + 1, exact, y.shape).astype(np.float64)
    (got,) = vjp(jnp.asarray(ct, dtype))
    assert got.dtype == dtype
    want = (selection_matrix(functools.partial(ref, g=group.name), shape).T @ ct.ravel()).reshape(shape)
    assert np.abs(want).max() > exact  # sums beyond the dtype's exact integers
    np.testing.assert_array_equal(np.asarray(got, np.float64), np.asarray(jnp.asarray(want, dtype), np.float64))


@pytest.mark.parametrize("mode", ["mean", "rms", "max"])
def test_pool_stack_accumulates_half_precision_in_float32_and_rounds_once(mode, rng):
    """The pooling over cp8's rotated copies (a stack of 2) is group_pool's: float32 sums of bfloat16 values,
    rounded once (a bfloat16 mean of squares rounds every product and the sum)."""
    x = rng.standard_normal((2, 512)).astype(np.float32) * 8
    xb = jnp.asarray(x, jnp.bfloat16)
    got = np.asarray(ops.pool_stack(xb, mode).astype(jnp.float32))
    v = np.asarray(xb.astype(jnp.float32), np.float64)
    want = {"mean": v.mean(0), "rms": np.sqrt((v * v).mean(0) + ops.DEFAULT_RMS_EPS), "max": v.max(0)}[mode]
    np.testing.assert_array_equal(got, np.asarray(jnp.asarray(want, jnp.float32).astype(jnp.bfloat16), np.float32))
    np.testing.assert_array_equal(ops.pool_stack(xb[::-1], mode), ops.pool_stack(xb, mode))  # order-free, bitwise
    with pytest.raises(ValueError, match="powers of two"):
        ops.pool_stack(xb[:1].repeat(3, 0), mode)


@pytest.mark.parametrize("shape", [(1, 3), (2, 5, 5, 3), (3, 4, 6, 2)])
def test_stack_views_is_the_view_major_concatenation(shape, rng):
    from deepsea.ops import stack_views

    parts = [jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(4)]
    np.testing.assert_array_equal(np.asarray(stack_views(parts)), np.concatenate([np.asarray(p) for p in parts], 0))
