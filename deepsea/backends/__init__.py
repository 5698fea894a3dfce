"""Where the seed's convolutions and max pooling run: oneDNN on the CPU where it is built, XLA's operations
elsewhere, all computing the same functions.

- :func:`conv`: a convolution with an optional bias and leaky ReLU.  ``implementation="auto"`` (the default)
  takes oneDNN (:mod:`deepsea.backends.onednn`) for float32 and bfloat16 stride-1 convolutions on the CPU, with
  the bias and activation fused into it; elsewhere XLA's convolution, with :func:`deepsea.backends.xla.conv_taps`
  for layers of few input channels and :func:`deepsea.backends.xla.bias_add`.  ``"onednn"`` insists (an error
  where it does not apply); ``"xla"`` is the reference.
- :func:`max_pool`: ``"auto"`` takes oneDNN's pooling for float32 and bfloat16 maps on the CPU, else the slices
  formulation; ``"slices"``, ``"reduce_window"`` and ``"onednn"`` choose.
- :func:`dense_dot_general`: the product of a dense layer (``flax.linen.Dense(dot_general=...)``): ``"auto"``
  takes oneDNN's matrix product on the CPU (:func:`deepsea.backends.onednn.dot_general`), else XLA's dot;
  ``"xla"`` and ``"onednn"`` choose.
- :func:`status`: which backend is active and, if not oneDNN, why.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Literal

import jax

from deepsea.backends import onednn, xla

__all__ = [
    "ConvImplementation",
    "DenseImplementation",
    "MaxPoolImplementation",
    "conv",
    "dense_dot_general",
    "max_pool",
    "onednn",
    "status",
    "xla",
]

ConvImplementation = Literal["auto", "xla", "onednn"]
DenseImplementation = Literal["auto", "xla", "onednn"]
MaxPoolImplementation = Literal["auto", "slices", "reduce_window", "onednn"]


def conv(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None = None,
    *,
    strides: Sequence[int] = (1, 1),
    padding: str | Sequence[tuple[int, int]] = "SAME",
    negative_slope: float | None = None,
    implementation: ConvImplementation = "auto",
) -> jax.Array:
    """``leaky_relu(conv(x, kernel) + bias)`` for NHWC ``x`` and an HWIO ``kernel``; no bias if ``bias`` is None,
    no activation if ``negative_slope`` is None.

    The computation runs in ``x``'s dtype (bfloat16 for mixed precision, products accumulated in float32 by
    oneDNN); a float32 kernel and bias stay float32 parameters, and so do their gradients.
    """
    if implementation not in ("auto", "xla", "onednn"):
        raise ValueError(f"unknown convolution implementation {implementation!r}; expected 'auto', 'xla' or 'onednn'")
    fits = onednn.supports(x, kernel, strides, padding)
    if implementation == "onednn" and not fits:
        raise ValueError(
            f"the oneDNN convolution computes stride-1 convolutions of float32 or bfloat16 NHWC maps with a float32 "
            f"kernel and non-negative padding; got x {x.dtype}{tuple(x.shape)}, kernel {kernel.dtype}, "
            f"strides {tuple(strides)}, padding {padding!r}"
        )
    use_onednn = implementation == "onednn" or (implementation == "auto" and fits and onednn.available())
    if use_onednn:
        if bias is not None and negative_slope is not None and negative_slope >= 0:
            return onednn.conv_bias_leaky_relu(x, kernel, bias, negative_slope, padding)
        y = onednn.conv(x, kernel, padding)
    elif implementation == "auto" and tuple(strides) == (1, 1) and x.shape[-1] <= xla.TAPS_MAX_INPUT_CHANNELS:
        y = xla.conv_taps(x, kernel.astype(x.dtype), padding)
    else:
        y = xla.conv_reference(x, kernel.astype(x.dtype), padding, strides)
    if bias is not None:
        y = xla.bias_add(y, bias) if implementation != "xla" else y + bias.astype(y.dtype)
    return y if negative_slope is None else xla.leaky_relu(y, negative_slope)


def max_pool(
    x: jax.Array,
    window: int = 3,
    stride: int = 2,
    padding: str | tuple[int, int] = "VALID",
    implementation: MaxPoolImplementation = "auto",
) -> jax.Array:
    """Max pooling of ``(N, H, W, C)`` maps over ``window x window`` windows every ``stride`` pixels.

    Every implementation gives the same values; the gradient goes to the first maximum of each window
    (``"slices"``: to one of the tied inputs).
    """
    if implementation == "auto":
        fits = x.dtype in onednn.ACTIVATION_DTYPES and x.ndim == 4
        implementation = "onednn" if fits and onednn.available() else "slices"
    if implementation == "onednn":
        pads = xla.pool_pads(x, window, stride, padding)
        xla.check_pool_fits(x, window, pads)
        return onednn.max_pool(x, (window, window), (stride, stride), pads)
    if implementation == "reduce_window":
        return xla.max_pool_reduce_window(x, window, stride, padding)
    if implementation == "slices":
        return xla.max_pool_slices(x, window, stride, padding)
    raise ValueError(
        f"unknown max_pool implementation {implementation!r}; expected 'auto', 'slices', 'reduce_window' or 'onednn'"
    )


def dense_dot_general(implementation: DenseImplementation = "auto") -> Callable[..., jax.Array]:
    """The ``dot_general`` a dense layer computes its product with: ``"auto"`` oneDNN's matrix product (forward and
    both gradients; :func:`deepsea.backends.onednn.dot_general`, which leaves any other product to XLA) where oneDNN
    is available, else ``jax.lax.dot_general``; ``"xla"`` XLA's always; ``"onednn"`` insists (RuntimeError where it
    is not available, ValueError for a product it does not compute).  The same function either way, up to the
    summation order."""
    if implementation == "xla":
        return jax.lax.dot_general
    if implementation == "onednn":
        reason = onednn.unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"oneDNN matmul is not available: {reason}")
        return functools.partial(onednn.dot_general, strict=True)
    if implementation == "auto":
        return onednn.dot_general if onednn.available() else jax.lax.dot_general
    raise ValueError(f"unknown dense implementation {implementation!r}; expected 'auto', 'xla' or 'onednn'")


def status() -> dict[str, str]:
    """``{"convolution": ..., "max_pool": ..., "dense": ...}``: the backend ``"auto"`` takes for float32 on the CPU,
    and why."""
    reason = onednn.unavailable_reason()
    if reason is None:
        return {"convolution": "oneDNN", "max_pool": "oneDNN", "dense": "oneDNN"}
    return {"convolution": f"XLA ({reason})", "max_pool": f"XLA slices ({reason})", "dense": f"XLA ({reason})"}
