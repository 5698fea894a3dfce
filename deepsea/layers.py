"""Flax Linen layers: the group ops as modules, and the seed's building blocks.

The symmetry layers take their group as a field (``"c4"``, ``"d4"`` or a
:class:`~deepsea.groups.Group`), so a backbone that receives them as factories
builds the cyclic and dihedral variants from one definition.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from deepsea import onednn, ops
from deepsea.groups import Group

__all__ = [
    "TAPS_MAX_INPUT_CHANNELS",
    "Conv",
    "ConvImplementation",
    "ConvRoll",
    "LeakyReLU",
    "MaxPool",
    "Maxout",
    "Pool",
    "Roll",
    "Slice",
    "UntiedConv",
    "bias_add",
    "conv_taps",
    "gain",
    "leaky_relu",
    "orthogonal",
]

Initializer = Callable[..., jax.Array]
ConvImplementation = Literal["auto", "xla", "onednn"]

DEFAULT_NEGATIVE_SLOPE = 1.0 / 3.0


class Slice(nn.Module):
    """``(B,H,W,C) -> (V*B,H,W,C)``: the group's transformed copies, view-major."""

    group: str | Group = "c4"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.group_slice(x, self.group)


class Roll(nn.Module):
    """Dense roll ``(V*B,F) -> (V*B,V*F)``; see :func:`deepsea.ops.group_roll`."""

    group: str | Group = "c4"
    implementation: ops.Implementation = "xla"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.group_roll(x, self.group, self.implementation)


class ConvRoll(nn.Module):
    """Feature-map roll ``(V*B,H,W,C) -> (V*B,H,W,V*C)``; see :func:`deepsea.ops.group_conv_roll`."""

    group: str | Group = "c4"
    implementation: ops.Implementation = "xla"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.group_conv_roll(x, self.group, self.implementation)


class Pool(nn.Module):
    """Pools the views ``(V*B, ...) -> (B, ...)`` with ``mode`` ``mean``, ``max`` or ``rms``."""

    group: str | Group = "c4"
    mode: ops.PoolMode = "rms"
    eps: float = ops.DEFAULT_RMS_EPS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.group_pool(x, self.group, self.mode, self.eps)


def leaky_relu(x: jax.Array, negative_slope: float = DEFAULT_NEGATIVE_SLOPE) -> jax.Array:
    """``max(x, a x)`` for ``0 <= a <= 1``; the seed used ``a = 1/3``."""
    return jnp.where(x >= 0, x, jnp.asarray(negative_slope, x.dtype) * x)


class LeakyReLU(nn.Module):
    """Leaky ReLU as a module, so it can be passed as an activation factory."""

    negative_slope: float = DEFAULT_NEGATIVE_SLOPE

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return leaky_relu(x, self.negative_slope)


def gain(nonlinearity: str = "leaky_relu", negative_slope: float = DEFAULT_NEGATIVE_SLOPE) -> float:
    """The initialisation gain that keeps activations' variance: ``sqrt(2 / (1 + a**2))`` for leaky ReLU.

    ``nonlinearity`` is ``linear`` (1), ``relu`` (sqrt 2), ``leaky_relu`` or ``tanh`` (5/3).
    """
    gains = {
        "linear": 1.0,
        "identity": 1.0,
        "relu": math.sqrt(2.0),
        "leaky_relu": math.sqrt(2.0 / (1.0 + negative_slope**2)),
        "tanh": 5.0 / 3.0,
    }
    try:
        return gains[nonlinearity]
    except KeyError:
        raise ValueError(f"unknown nonlinearity {nonlinearity!r}; expected one of {sorted(gains)}") from None


def orthogonal(nonlinearity: str = "leaky_relu", negative_slope: float = DEFAULT_NEGATIVE_SLOPE) -> Initializer:
    """Orthogonal initialisation scaled by :func:`gain` (the kernel is flattened to ``(fan_in, out)``)."""
    return nn.initializers.orthogonal(scale=gain(nonlinearity, negative_slope))


class Maxout(nn.Module):
    """Dense layer with ``features * pieces`` outputs, max-pooled over adjacent groups of ``pieces``."""

    features: int
    pieces: int = 2
    kernel_init: Initializer = orthogonal("linear")
    bias_init: Initializer = nn.initializers.zeros
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.Dense(
            self.features * self.pieces,
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
            dtype=self.dtype,
            name="dense",
        )(x)
        y = y.reshape((*y.shape[:-1], self.features, self.pieces))
        return jnp.max(y, axis=-1)


class UntiedConv(nn.Module):
    """Convolution with untied biases: one bias per output position and channel, ``(H_out, W_out, F)``."""

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    padding: str = "SAME"
    kernel_init: Initializer = orthogonal()
    bias_init: Initializer = nn.initializers.zeros
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.Conv(
            self.features,
            tuple(self.kernel_size),
            strides=tuple(self.strides),
            padding=self.padding,
            use_bias=False,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            name="conv",
        )(x)
        bias = self.param("bias", self.bias_init, y.shape[1:], jnp.float32)
        return y + bias.astype(y.dtype)


@jax.custom_vjp
def bias_add(x: jax.Array, bias: jax.Array) -> jax.Array:
    """``x + bias`` over the last axis, whose gradient sums over the other axes as a matrix-vector product.

    The same value and gradient as ``x + bias`` (up to the summation order).  XLA:CPU lowers the plain
    ``sum(g, axis=(0, 1, 2))`` to a slow reduce-window for large maps (128x24x24x64: 14.3 ms, the product
    1.5 ms).
    """
    return x + bias.astype(x.dtype)


def _bias_add_fwd(x: jax.Array, bias: jax.Array) -> tuple[jax.Array, jax.Array]:
    return bias_add(x, bias), bias


def _bias_add_bwd(bias: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    flat = g.reshape(-1, g.shape[-1])
    ones = jnp.ones((flat.shape[0],), g.dtype)
    db = jax.lax.dot_general(flat, ones, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    return g, db.astype(bias.dtype)


bias_add.defvjp(_bias_add_fwd, _bias_add_bwd)


_NHWC = ("NHWC", "HWIO", "NHWC")


def _conv(x: jax.Array, kernel: jax.Array, padding: tuple[tuple[int, int], ...]) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_NHWC)


TAPS_MAX_INPUT_CHANNELS = 2
"""Where oneDNN is not available, ``Conv(implementation="auto")`` computes convolutions with at most this many
input channels (a network's first layer) with :func:`conv_taps`."""


def conv_taps(x: jax.Array, kernel: jax.Array, padding: str | Sequence[tuple[int, int]] = "SAME") -> jax.Array:
    """A stride-1 NHWC convolution (``kernel (kh, kw, C, O)``) for inputs of few channels.

    The sum over the ``kh * kw * C`` taps of shifted inputs times kernel rows: XLA fuses it, with the bias and
    activation that follow, into one loop, where its convolution of a 1-channel image runs at 8-17 GFLOP/s
    on the CPU.  The kernel gradient is one matrix product of the shifted inputs with the output gradient;
    the input gradient is the convolution's.  The same function as ``lax.conv_general_dilated`` up to the
    summation order (128x47x47x1 -> 16 forward: 5.0 ms as a convolution, 0.8 ms so).
    """
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(x.shape[1:3], kernel.shape[:2], (1, 1), padding)
    return _conv_taps(x, kernel, tuple((int(lo), int(hi)) for lo, hi in padding))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_taps(x: jax.Array, kernel: jax.Array, padding: tuple[tuple[int, int], ...]) -> jax.Array:
    return _taps_forward(x, kernel, padding)


def _shifted(x: jax.Array, kernel_shape: tuple[int, ...], padding: tuple[tuple[int, int], ...]) -> list[jax.Array]:
    kh, kw = kernel_shape[:2]
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    h, w = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    return [xp[:, i : i + h, j : j + w, :] for i in range(kh) for j in range(kw)]


def _taps_forward(x: jax.Array, kernel: jax.Array, padding: tuple[tuple[int, int], ...]) -> jax.Array:
    rows = kernel.reshape(-1, kernel.shape[-1])  # (kh * kw * C, O), in the order of _shifted's taps, then C
    y = None
    for t, shifted in enumerate(_shifted(x, kernel.shape, padding)):
        for c in range(x.shape[-1]):
            term = shifted[..., c : c + 1] * rows[t * x.shape[-1] + c]
            y = term if y is None else y + term
    return y


def _conv_taps_fwd(x, kernel, padding):
    return _taps_forward(x, kernel, padding), (x, kernel)


def _conv_taps_bwd(padding, res, g):
    x, kernel = res
    dx = jax.vjp(lambda x: _conv(x, kernel, padding), x)[1](g)[0]  # unused (and not computed) for an input image
    patches = jnp.stack(_shifted(x, kernel.shape, padding), axis=-2)  # (N, H, W, kh * kw, C)
    patches = patches.reshape(-1, kernel.shape[0] * kernel.shape[1] * kernel.shape[2])
    dw = jax.lax.dot_general(patches, g.reshape(-1, g.shape[-1]), (((0,), (0,)), ((), ())))
    return dx, dw.reshape(kernel.shape).astype(kernel.dtype)


_conv_taps.defvjp(_conv_taps_fwd, _conv_taps_bwd)


class Conv(nn.Module):
    """``nn.Conv`` for NHWC maps, with the same parameters (``kernel (kh, kw, C, F)``, ``bias (F,)``) created
    the same way, so checkpoints are interchangeable, and faster gradients on the CPU.

    ``implementation``: ``"auto"`` computes float32 stride-1 layers with oneDNN on the CPU
    (:func:`deepsea.onednn.conv`, where :func:`deepsea.onednn.available`; with ``negative_slope``, bias and
    leaky ReLU fused into it: :func:`deepsea.onednn.conv_bias_leaky_relu`), else layers of at most
    :data:`TAPS_MAX_INPUT_CHANNELS` input channels with :func:`conv_taps`, and adds the bias with
    :func:`bias_add`; ``"onednn"`` insists on oneDNN (an error where it does not apply); ``"xla"`` is the
    reference, XLA's convolution plus the bias.  All compute the same function (up to the summation order).
    On 2 CPU cores "auto" (with the fused activation and oneDNN max pooling) makes the convroll4 training step
    1.89x as fast as "xla" (with slices pooling) at 47x47, width 0.5, and 1.61x at 95x95
    (``deepsea bench experiments/convroll4.py --compare model.conv_impl=xla,model.max_pool_impl=slices``).
    ``negative_slope``: a leaky ReLU on the output (``None``: none).
    """

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    padding: str = "SAME"
    use_bias: bool = True
    kernel_init: Initializer = orthogonal()
    bias_init: Initializer = nn.initializers.zeros
    dtype: Any = None
    implementation: ConvImplementation = "auto"
    negative_slope: float | None = None  # a leaky ReLU on the output, fused into oneDNN's convolution

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.implementation not in ("auto", "xla", "onednn"):
            raise ValueError(
                f"unknown convolution implementation {self.implementation!r}; expected 'auto', 'xla' or 'onednn'"
            )
        auto = self.implementation != "xla"
        shape = (*self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, jnp.float32)
        dtype = self.dtype or x.dtype
        x, kernel = x.astype(dtype), kernel.astype(dtype)
        stride_1 = tuple(self.strides) == (1, 1)
        if self.implementation == "onednn" and not onednn.supports(x, kernel, self.strides, self.padding):
            raise ValueError(
                f"Conv(implementation='onednn') computes float32 NHWC, stride-1 convolutions with non-negative "
                f"padding; got x {x.dtype}{tuple(x.shape)}, strides {tuple(self.strides)}, padding {self.padding!r}"
            )
        use_onednn = self.implementation == "onednn" or (
            self.implementation == "auto"
            and onednn.supports(x, kernel, self.strides, self.padding)
            and onednn.available()
        )
        taps = not use_onednn and auto and stride_1 and x.shape[-1] <= TAPS_MAX_INPUT_CHANNELS
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32) if self.use_bias else None
        if use_onednn and bias is not None and self.negative_slope is not None and self.negative_slope >= 0:
            return onednn.conv_bias_leaky_relu(x, kernel, bias.astype(dtype), self.negative_slope, self.padding)
        if use_onednn:
            y = onednn.conv(x, kernel, self.padding)
        elif taps:
            y = conv_taps(x, kernel, self.padding)
        else:
            y = jax.lax.conv_general_dilated(x, kernel, tuple(self.strides), self.padding, dimension_numbers=_NHWC)
        if bias is not None:
            y = bias_add(y, bias) if auto else y + bias.astype(y.dtype)
        return y if self.negative_slope is None else leaky_relu(y, self.negative_slope)


class MaxPool(nn.Module):
    """Max pooling (the seed: 3x3 windows, stride 2, no padding) that refuses asymmetric grids.

    With ``check_symmetry`` (the default) a map size whose pooling windows are
    not mirror-symmetric raises ``ValueError``: rotated views would be
    misaligned by a pixel and the next conv roll would stack maps that do not
    correspond.  Set it to False for networks without rolls.
    """

    window: int = 3
    stride: int = 2
    padding: str = "VALID"
    check_symmetry: bool = True
    implementation: ops.MaxPoolImplementation = "auto"  # or onednn | slices | reduce_window: see deepsea.ops.max_pool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.check_symmetry:
            for axis, size in (("height", x.shape[1]), ("width", x.shape[2])):
                if not ops.pooling_is_symmetric(size, self.window, self.stride, self.padding):
                    raise ValueError(
                        f"{self.window}x{self.window} stride-{self.stride} {self.padding} max pooling "
                        f"on a map of {x.shape[1]}x{x.shape[2]} is not symmetric along its {axis}: "
                        "rotated views would be misaligned by a pixel. Choose an input size "
                        f"for which (size - {self.window}) is divisible by {self.stride} at every "
                        "pooling layer (odd sizes such as 47 or 95 for 3x3 stride 2), or pass "
                        "check_symmetry=False for a network without rolls."
                    )
        return ops.max_pool(x, self.window, self.stride, self.padding, self.implementation)
