"""Flax Linen layers: the group ops as modules, and the seed's building blocks.

The symmetry layers take their group as a field (``"c4"``, ``"d4"`` or a
:class:`~deepsea.groups.Group`), so a backbone that receives them as factories
builds the cyclic and dihedral variants from one definition.  The rolls take an
``implementation``: ``"xla"`` (the reference in :mod:`deepsea.ops`, the
default) or ``"pallas"`` (the fused kernels of ``deepsea_kernels``).
:class:`Conv` and :class:`MaxPool` compute through :mod:`deepsea.backends`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deepsea import backends, ops
from deepsea.backends.xla import DEFAULT_NEGATIVE_SLOPE, leaky_relu
from deepsea.errors import UserError
from deepsea.groups import Group, get_group

__all__ = [
    "ACTIVATIONS",
    "DEFAULT_NEGATIVE_SLOPE",
    "DROPOUTS",
    "ChannelOut",
    "Conv",
    "ConvRoll",
    "FoldedConv",
    "GaussianDropout",
    "LeakyReLU",
    "MaxPool",
    "Maxout",
    "PReLU",
    "Pool",
    "Roll",
    "RollImplementation",
    "Slice",
    "SmoothLeakyReLU",
    "UntiedConv",
    "gain",
    "leaky_relu",
    "orthogonal",
]

Initializer = Callable[..., jax.Array]
RollImplementation = Literal["xla", "pallas"]


class Slice(nn.Module):
    """``(B,H,W,C) -> (V*B,H,W,C)``: the group's transformed copies, view-major."""

    group: str | Group = "c4"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.group_slice(x, self.group)


def _roll(x: jax.Array, group: str | Group, implementation: str, conv: bool) -> jax.Array:
    if implementation == "xla":
        return (ops.group_conv_roll if conv else ops.group_roll)(x, group)
    if implementation != "pallas":
        raise ValueError(f"unknown roll implementation {implementation!r}; expected 'xla' or 'pallas'")
    if conv:
        from deepsea_kernels import conv_roll as kernel
    else:
        from deepsea_kernels.roll import roll as kernel
    return kernel(x, group)


class Roll(nn.Module):
    """Dense roll ``(V*B,F) -> (V*B,V*F)``; see :func:`deepsea.ops.group_roll`.

    ``implementation="pallas"`` runs ``deepsea_kernels.roll.roll``, in interpret mode only (see its status).
    """

    group: str | Group = "c4"
    implementation: RollImplementation = "xla"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _roll(x, self.group, self.implementation, conv=False)


class ConvRoll(nn.Module):
    """Feature-map roll ``(V*B,H,W,C) -> (V*B,H,W,V*C)``; see :func:`deepsea.ops.group_conv_roll`.

    ``implementation="pallas"`` runs :func:`deepsea_kernels.conv_roll` (compiled on a GPU, interpreted elsewhere).
    """

    group: str | Group = "c4"
    implementation: RollImplementation = "xla"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _roll(x, self.group, self.implementation, conv=True)


class Pool(nn.Module):
    """Pools the views ``(V*B, ...) -> (B, ...)`` with ``mode`` ``mean``, ``max`` or ``rms``."""

    group: str | Group = "c4"
    mode: ops.PoolMode = "rms"
    eps: float = ops.DEFAULT_RMS_EPS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.group_pool(x, self.group, self.mode, self.eps)


class LeakyReLU(nn.Module):
    """Leaky ReLU as a module, so it can be passed as an activation factory."""

    negative_slope: float = DEFAULT_NEGATIVE_SLOPE

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return leaky_relu(x, self.negative_slope)


class PReLU(nn.Module):
    """A leaky ReLU whose slope is learnt, one per channel, starting at ``negative_slope`` (He et al. 2015; the seed
    tried it)."""

    negative_slope: float = DEFAULT_NEGATIVE_SLOPE

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        slope = self.param("slope", nn.initializers.constant(self.negative_slope), (x.shape[-1],), jnp.float32)
        return jnp.where(x >= 0, x, x * slope.astype(x.dtype))


class SmoothLeakyReLU(nn.Module):
    """A smoothed leaky ReLU: ``a x + (1 - a) softplus(x)``, the leaky ReLU of slope ``a`` with its kink rounded
    (slope ``a`` far left, 1 far right; the seed tried one)."""

    negative_slope: float = DEFAULT_NEGATIVE_SLOPE

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        a = self.negative_slope
        return a * x + (1.0 - a) * jax.nn.softplus(x)


ACTIVATIONS: dict[str, Callable[..., nn.Module]] = {
    "leaky_relu": LeakyReLU,
    "prelu": PReLU,
    "smooth_leaky": SmoothLeakyReLU,
}
"""``model.activation``: the nonlinearity after every convolution (each takes ``negative_slope``)."""


class GaussianDropout(nn.Module):
    """Multiplicative Gaussian noise of mean 1 and variance ``rate / (1 - rate)`` in training (Srivastava et al.
    2014: the same mean and variance as inverted dropout of that rate); the identity when ``deterministic``."""

    rate: float
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool | None = None) -> jax.Array:
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if deterministic or self.rate == 0.0:
            return x
        if not 0.0 <= self.rate < 1.0:
            raise UserError(f"a Gaussian dropout rate must lie in [0, 1), got {self.rate}")
        std = math.sqrt(self.rate / (1.0 - self.rate))
        noise = jax.random.normal(self.make_rng(self.rng_collection), x.shape, jnp.float32)
        return x * (1.0 + std * noise).astype(x.dtype)


DROPOUTS: dict[str, Callable[..., nn.Module]] = {"bernoulli": nn.Dropout, "gaussian": GaussianDropout}
"""``model.dropout_kind``: how dropout drops (each takes ``rate`` and ``deterministic``)."""


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


class _GroupedDense(nn.Module):
    """A dense layer with ``features * pieces`` outputs seen as ``features`` groups of ``pieces`` (the parameters
    of ``nn.Dense`` under ``dense``); subclasses say what a group passes on."""

    features: int
    pieces: int = 2
    kernel_init: Initializer = orthogonal("linear")
    bias_init: Initializer = nn.initializers.zeros
    dtype: Any = None
    implementation: backends.DenseImplementation = "auto"  # the product's backend: deepsea.backends.dense_dot_general

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.Dense(
            self.features * self.pieces,
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
            dtype=self.dtype,
            dot_general=backends.dense_dot_general(self.implementation),
            name="dense",
        )(x)
        return self.combine(y.reshape((*y.shape[:-1], self.features, self.pieces)))

    def combine(self, groups: jax.Array) -> jax.Array:
        raise NotImplementedError


class Maxout(_GroupedDense):
    """Dense layer with ``features * pieces`` outputs, max-pooled over adjacent groups of ``pieces``."""

    def combine(self, groups: jax.Array) -> jax.Array:
        return jnp.max(groups, axis=-1)


class ChannelOut(_GroupedDense):
    """Dense layer with ``features * pieces`` outputs in groups of ``pieces``, of which only each group's largest
    passes (the others are zero): winner-take-all "channel-out" units (Wang and JaJa 2013), which keep the
    winner's position where maxout keeps only its value; ``features * pieces`` outputs."""

    def combine(self, groups: jax.Array) -> jax.Array:
        keep = jax.nn.one_hot(jnp.argmax(groups, axis=-1), self.pieces, dtype=groups.dtype)
        return (groups * keep).reshape((*groups.shape[:-2], -1))


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


class Conv(nn.Module):
    """``nn.Conv`` for NHWC maps with the same parameters (``kernel (kh, kw, C, F)``, ``bias (F,)``) created the
    same way, so checkpoints are interchangeable, computed by :func:`deepsea.backends.conv`.

    ``negative_slope``: a leaky ReLU on the output (``None``: none), which oneDNN fuses into the convolution.
    ``implementation``: ``"auto"`` (oneDNN on the CPU where it applies, else XLA with faster gradients),
    ``"onednn"`` or ``"xla"`` (the reference); all compute the same function up to the summation order.
    """

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    padding: str = "SAME"
    use_bias: bool = True
    kernel_init: Initializer = orthogonal()
    bias_init: Initializer = nn.initializers.zeros
    dtype: Any = None
    negative_slope: float | None = None
    implementation: backends.ConvImplementation = "auto"
    untied_bias: bool = False  # the seed's untied biases: one per output position and channel, (H_out, W_out, F)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, x.shape[-1], self.features), jnp.float32)
        dtype = self.dtype or x.dtype
        if self.untied_bias:
            y = backends.conv(
                x.astype(dtype),
                kernel,
                None,
                strides=self.strides,
                padding=self.padding,
                implementation=self.implementation,
            )
            bias = self.param("bias", self.bias_init, y.shape[1:], jnp.float32)
            y = y + bias.astype(y.dtype)
            return y if self.negative_slope is None else leaky_relu(y, self.negative_slope)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32) if self.use_bias else None
        return backends.conv(
            x.astype(dtype),
            kernel,  # float32: the backend converts it to the computation's dtype
            bias,
            strides=self.strides,
            padding=self.padding,
            negative_slope=self.negative_slope,
            implementation=self.implementation,
        )


class FoldedConv(nn.Module):
    """The convolutions of a network's first stage with its views folded into channels: instead of every view
    (:class:`Slice`'s transformed copies) convolved with one kernel, the input itself convolved with every view's
    transformed kernel (:func:`deepsea.ops.view_kernels`), ``V`` times the channels on ``1 / V`` of the batch: the
    same function, fewer and wider convolutions.  ``first``: the network's first layer, ``(B,H,W,C) ->
    (B,H,W,V*F)``; else ``(B,H,W,V*C) -> (B,H,W,V*F)``, block ``v`` of the channels being view ``v``'s maps in the
    input's frame: with ``rolled``, the layer after a :class:`ConvRoll` (its kernel ``(kh, kw, V*C, F)`` reads
    the roll's blocks, so every output block reads every input block: a group convolution), else each view's
    block convolved with its own kernel (a block-diagonal kernel).  Parameters as :class:`Conv` (``kernel (kh, kw,
    C, F)``, ``bias (F,)``, the same initialisation), so checkpoints are interchangeable;
    :func:`deepsea.ops.unfold_views` turns the last folded stage's output back into stacked views."""

    features: int
    group: str | Group = "c4"
    first: bool = True
    rolled: bool = False
    kernel_size: Sequence[int] = (3, 3)
    kernel_init: Initializer = orthogonal()
    bias_init: Initializer = nn.initializers.zeros
    dtype: Any = None
    negative_slope: float | None = None
    implementation: backends.ConvImplementation = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        g = get_group(self.group)
        v = g.order
        if not self.first and x.shape[-1] % v:
            raise ValueError(f"{x.shape[-1]} channels do not split into {v} views")
        c = x.shape[-1] if self.first or self.rolled else x.shape[-1] // v
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, c, self.features), jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        kernels = jnp.stack(ops.view_kernels(kernel, self.group))  # (V, kh, kw, C, F)
        if self.first:
            folded = jnp.moveaxis(kernels, 0, -2).reshape((*self.kernel_size, c, v * self.features))
        elif self.rolled:  # view u's roll block h holds view h . u's maps: input block w feeds u through h = w . u**-1
            blocks = kernels.reshape((v, *self.kernel_size, v, c // v, self.features))
            order = np.array([[g.compose(w, int(g.inverse[u])) for w in range(v)] for u in range(v)])
            folded = blocks[np.arange(v)[:, None], :, :, order]  # (V out, V in, kh, kw, C / V, F)
            folded = jnp.transpose(folded, (2, 3, 1, 4, 0, 5)).reshape((*self.kernel_size, c, v * self.features))
        else:  # block (u, u) of a (V*C, V*F) kernel is view u's
            folded = jnp.einsum("vhwio,vu->hwviuo", kernels, jnp.eye(v, dtype=kernels.dtype))
            folded = folded.reshape((*self.kernel_size, v * c, v * self.features))
        return backends.conv(
            x.astype(self.dtype or x.dtype),
            folded,
            jnp.tile(bias, v),
            strides=(1, 1),
            padding="SAME",
            negative_slope=self.negative_slope,
            implementation=self.implementation,
        )


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
    implementation: backends.MaxPoolImplementation = "auto"  # see deepsea.backends.max_pool

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
        return backends.max_pool(x, self.window, self.stride, self.padding, self.implementation)
