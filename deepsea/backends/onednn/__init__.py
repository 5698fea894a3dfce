"""oneDNN convolutions and max pooling on the CPU, called from XLA through the FFI.

:func:`conv` is a stride-1 NHWC/HWIO float32 convolution whose forward pass, input gradient and kernel gradient are
oneDNN primitives (``onednn_ffi.cc`` beside this file), with the value and gradients of
:func:`deepsea.backends.xla.conv_reference` up to the summation order; :func:`conv_bias_leaky_relu` fuses the bias
and a leaky ReLU into the forward convolution; :func:`max_pool` is max pooling whose value and gradient are oneDNN
primitives; :func:`matmul` is a matrix product whose value and both gradients are oneDNN's (:func:`dot_general`
puts it under ``flax.linen.Dense``).  Each is a ``jax.custom_vjp`` whose CPU branch is the FFI call and whose other
platforms get XLA's op in the same jitted function (``lax.platform_dependent``).

The library comes from the ``onednn-cpu-gomp`` wheel and its headers from ``onednn-devel-cpu-gomp`` (both
dependencies on Linux x86-64).  The handlers are compiled with the system's C++ compiler (``$CXX`` or ``c++``) on
first use and cached under ``$DEEPSEA_CACHE_DIR`` (default ``~/.cache/deepsea``); builds of other versions are
removed then.  Where any of that is missing, or JAX's default backend is not the CPU, :func:`available` is False,
:func:`unavailable_reason` says why, and a ``RuntimeWarning`` says so once (except for ``DEEPSEA_ONEDNN=0``, which
switches it off on purpose); :mod:`deepsea.backends` then takes XLA's operations.

oneDNN chooses each primitive's implementation by its own rules.  With ``DEEPSEA_ONEDNN_TUNE=1`` (read at each
call; ``0`` or unset is off, anything else an error) each convolution pass instead times oneDNN's candidates once
per shape and keeps the fastest, unless it is within 5% of oneDNN's choice.  Off by default: implementations round
differently, so a choice made by timing could make two runs of the same code differ in their last bits.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import logging
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from deepsea.backends.xla import Padding, bias_gradient, conv_pads, conv_reference, leaky_relu, reduce_window_max

__all__ = [
    "FFI_TARGETS",
    "available",
    "cache_dir",
    "conv",
    "conv_bias_leaky_relu",
    "dot_general",
    "matmul",
    "max_pool",
    "primitive_times",
    "supports",
    "unavailable_reason",
]

log = logging.getLogger(__name__)

_SOURCE = pathlib.Path(__file__).with_name("onednn_ffi.cc")
_BUILD_PREFIX = "onednn_ffi-"
FFI_TARGETS = tuple(
    name + suffix
    for name in (
        "deepsea_conv_fwd", "deepsea_conv_bwd_data", "deepsea_conv_bwd_weights", "deepsea_conv_fwd_bias_leaky_relu",
        "deepsea_conv_bwd_weights_bias", "deepsea_max_pool", "deepsea_max_pool_train", "deepsea_max_pool_bwd",
        "deepsea_matmul",
    )
    for suffix in ("", "_bf16")
)  # fmt: skip
"""The handlers' FFI target names (float32 and ``_bf16`` forms), registered for the CPU by :func:`available`."""
ACTIVATION_DTYPES = (jnp.float32, jnp.bfloat16)
"""The activations' dtypes the handlers take; kernels, kernel gradients and biases are float32 either way."""


def _target(name: str, dtype: jnp.dtype) -> str:
    return name + ("_bf16" if dtype == jnp.bfloat16 else "")


def _reference_conv(x: jax.Array, kernel: jax.Array, padding: Padding) -> jax.Array:
    """XLA's convolution accumulated in float32, in the activations' dtype: what other platforms run."""
    return conv_reference(x.astype(jnp.float32), kernel, padding).astype(x.dtype)


def _distribution_file(package: str, name: str) -> pathlib.Path:
    try:
        files = importlib.metadata.distribution(package).files or []
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(f"the {package} package is not installed") from None
    for f in files:
        if str(f).replace("\\", "/").endswith(name):
            return pathlib.Path(f.locate()).resolve()
    raise RuntimeError(f"the {package} package has no {name}")


def _libdnnl() -> pathlib.Path:
    return _distribution_file("onednn-cpu-gomp", "libdnnl.so.3")


def _include_dir() -> pathlib.Path:
    """The folder holding ``oneapi/dnnl/dnnl.hpp`` (from ``onednn-devel-cpu-gomp``)."""
    return _distribution_file("onednn-devel-cpu-gomp", "oneapi/dnnl/dnnl.hpp").parent.parent.parent


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("DEEPSEA_CACHE_DIR") or pathlib.Path.home() / ".cache" / "deepsea")


def _build() -> pathlib.Path:
    """Compiles the handlers (once per source, jaxlib, library and compiler) and returns the shared library."""
    lib, include = _libdnnl(), _include_dir()
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        raise RuntimeError("no C++ compiler found (install g++ or set CXX)")
    key = hashlib.sha256(_SOURCE.read_bytes())
    key.update(f"{jax.__version__} {lib} {include} {cxx}".encode())
    out = cache_dir() / f"{_BUILD_PREFIX}{key.hexdigest()[:16]}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_out = pathlib.Path(tmp) / out.name
        cmd = [
            cxx, "-O2", "-std=c++17", "-shared", "-fPIC", str(_SOURCE), "-isystem", jax.ffi.include_dir(),
            "-isystem", str(include), str(lib), f"-Wl,-rpath,{lib.parent}", "-o", str(tmp_out),
        ]  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"compiling {_SOURCE} failed:\n{' '.join(cmd)}\n{res.stderr[-2000:]}")
        os.replace(tmp_out, out)  # atomic: concurrent builds of the same key write the same file
    for stale in out.parent.glob(f"{_BUILD_PREFIX}*.so"):
        if stale != out:
            stale.unlink(missing_ok=True)  # a process that loaded it keeps its mapping
    return out


_LIBRARY: list[ctypes.CDLL] = []  # the loaded handlers, once _load() succeeded


@functools.cache
def _load() -> str | None:
    """Builds, loads and registers the FFI targets; returns why not (warning once), or None when they are ready."""
    if os.environ.get("DEEPSEA_ONEDNN", "1") == "0":
        return "switched off by DEEPSEA_ONEDNN=0"
    reason = _why_not_here()
    if reason is None:
        try:
            lib = ctypes.cdll.LoadLibrary(str(_build()))
        except (RuntimeError, OSError) as e:
            reason = str(e)
        else:
            for name in FFI_TARGETS:
                jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
            lib.deepsea_onednn_stats.restype = ctypes.c_int64
            lib.deepsea_onednn_stats.argtypes = [ctypes.c_char_p, ctypes.c_int64, ctypes.c_int]
            lib.deepsea_onednn_pool_workspace_bytes.restype = ctypes.c_int64
            i64 = ctypes.c_int64
            lib.deepsea_onednn_pool_workspace_bytes.argtypes = [ctypes.POINTER(i64), ctypes.c_int, ctypes.c_char_p, i64]
            _LIBRARY.append(lib)
            return None
    warnings.warn(
        f"deepsea: oneDNN convolutions and pooling are not available ({reason}); using XLA's, which are slower "
        "on the CPU and round differently. `deepsea info` shows the backends; DEEPSEA_ONEDNN=0 silences this.",
        RuntimeWarning,
        stacklevel=3,
    )
    return reason


def _why_not_here() -> str | None:
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return f"built for Linux x86-64 only, not {platform.system()} {platform.machine()}"
    if jax.default_backend() != "cpu":
        return f"JAX's default backend is {jax.default_backend()}, not the CPU"
    return None


def available() -> bool:
    """Whether :func:`conv` can run through oneDNN here (builds the handlers on the first call)."""
    return _load() is None


def unavailable_reason() -> str | None:
    """Why oneDNN convolutions are not available, or None when they are."""
    return _load()


def primitive_times(reset: bool = False) -> list[dict]:
    """The wall time of every oneDNN call so far, one row per primitive and shape: ``key`` (what ran, e.g.
    ``conv_bwd_weights bf16 128x47x47x16->8 k3x3``), ``impl`` (oneDNN's implementation, e.g.
    ``jit_bf16:avx512_core_bf16``), ``calls``, ``reorder_ms`` (the kernel's conversions to and from oneDNN's
    layout) and ``exec_ms`` (the primitive), both summed over the calls, and ``candidates``: for a convolution
    whose implementation was chosen by timing (``DEEPSEA_ONEDNN_TUNE=1``; its key ends in ``tuned``), each
    implementation timed and its milliseconds per call, oneDNN's own choice first (empty otherwise).  ``reset``
    clears the rows afterwards.  Empty where oneDNN is not :func:`available`."""
    if not available():
        return []
    get = _LIBRARY[0].deepsea_onednn_stats
    size = get(None, 0, 0) + 1
    while True:
        buf = ctypes.create_string_buffer(size)
        n = get(buf, size, int(reset))
        if n < size:  # all rows fit (rows added since the first call may not: then nothing was reset; again)
            break
        size = n + 1
    rows = []
    for line in buf.value.decode().splitlines():
        key, impl, calls, reorder_ns, exec_ns, candidates = line.split("\t")
        timed = [c.rpartition("=") for c in candidates.split(",")] if candidates else []
        rows.append({"key": key, "impl": impl, "calls": int(calls), "reorder_ms": int(reorder_ns) / 1e6,
                     "exec_ms": int(exec_ns) / 1e6,
                     "candidates": {name: float(ms) for name, _, ms in timed}})  # fmt: skip
    return rows


def supports(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding: str | Sequence[tuple[int, int]]) -> bool:
    """Whether :func:`conv` computes this convolution: float32 or bfloat16 NHWC ``x``, a float32 kernel, stride 1,
    non-negative padding."""
    if x.ndim != 4 or kernel.ndim != 4 or tuple(strides) != (1, 1):
        return False
    if x.dtype not in ACTIVATION_DTYPES or kernel.dtype != jnp.float32 or kernel.shape[2] != x.shape[3]:
        return False
    return all(lo >= 0 and hi >= 0 for lo, hi in conv_pads(x, kernel, padding))


def conv(x: jax.Array, kernel: jax.Array, padding: str | Sequence[tuple[int, int]] = "SAME") -> jax.Array:
    """A stride-1 convolution of ``x (N, H, W, C)`` with ``kernel (kh, kw, C, F)`` through oneDNN on the CPU
    (forward, input and kernel gradients) and XLA's convolution on other platforms.

    ``x`` is float32 or bfloat16 (the output and the input gradient too; products accumulate in float32); the
    kernel and its gradient are float32 (oneDNN converts the kernel to ``x``'s dtype as it reorders it).

    Raises RuntimeError where oneDNN is not :func:`available`, ValueError where it does not :func:`supports` the
    arguments.
    """
    if not supports(x, kernel, (1, 1), padding):
        raise ValueError(
            f"deepsea.onednn.conv takes float32 or bfloat16 NHWC x, a float32 HWIO kernel with matching channels and "
            f"non-negative "
            f"padding; got x {x.dtype}{tuple(x.shape)}, kernel {kernel.dtype}{tuple(kernel.shape)}, padding {padding!r}"
        )
    _require("convolution")
    return _conv(x, kernel, conv_pads(x, kernel, padding))


def _require(what: str) -> None:
    reason = _load()
    if reason is not None:
        raise RuntimeError(f"oneDNN {what} is not available: {reason}")


def _pad_attr(padding: Padding) -> np.ndarray:
    """The handlers' ``padding`` attribute: ``[top, bottom, left, right]``."""
    return np.asarray([*padding[0], *padding[1]], np.int64)


def _on_cpu(target: str, out: jax.ShapeDtypeStruct, a: jax.Array, b: jax.Array, padding: Padding, default):
    def ffi(a, b):
        call = jax.ffi.ffi_call(_target(target, a.dtype), out, vmap_method="sequential")
        return call(a, b, padding=_pad_attr(padding))

    return jax.lax.platform_dependent(a, b, cpu=ffi, default=lambda a, b: default(a, b))


def _out_shape(x: jax.Array, kernel: jax.Array, padding: Padding) -> tuple[int, ...]:
    (t, b), (left, r) = padding
    kh, kw, _, f = kernel.shape
    return (x.shape[0], x.shape[1] + t + b - kh + 1, x.shape[2] + left + r - kw + 1, f)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x: jax.Array, kernel: jax.Array, padding: Padding) -> jax.Array:
    out = jax.ShapeDtypeStruct(_out_shape(x, kernel, padding), x.dtype)
    return _on_cpu("deepsea_conv_fwd", out, x, kernel, padding, lambda x, k: _reference_conv(x, k, padding))


def _conv_fwd(x, kernel, padding):
    return _conv(x, kernel, padding), (x, kernel)


def _xla_vjp(padding: Padding, x: jax.Array, kernel: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    """XLA's input and kernel gradients of the convolution (float32 arithmetic), off the CPU."""
    dx, dk = jax.vjp(lambda x, k: conv_reference(x, k, padding), x.astype(jnp.float32), kernel)[1](
        g.astype(jnp.float32)
    )
    return dx.astype(g.dtype), dk


def _input_grad(padding: Padding, x: jax.Array, kernel: jax.Array, g: jax.Array) -> jax.Array:
    dx_out = jax.ShapeDtypeStruct(x.shape, x.dtype)
    return _on_cpu("deepsea_conv_bwd_data", dx_out, g, kernel, padding, lambda g, k: _xla_vjp(padding, x, k, g)[0])


def _conv_bwd(padding, res, g):
    x, kernel = res
    g = g.astype(x.dtype)
    dw_out = jax.ShapeDtypeStruct(kernel.shape, jnp.float32)
    dw = _on_cpu("deepsea_conv_bwd_weights", dw_out, x, g, padding, lambda x, g: _xla_vjp(padding, x, kernel, g)[1])
    return _input_grad(padding, x, kernel, g), dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def max_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int], padding: Padding) -> jax.Array:
    """Max pooling of float32 or bfloat16 ``x (N, H, W, C)`` over ``window`` windows every ``strides`` pixels, with
    explicit ``padding ((top, bottom), (left, right))`` whose cells never win, through oneDNN on the CPU.

    The same value as :func:`deepsea.backends.xla.reduce_window_max` and the same gradient, which goes to the
    first maximum of each window (row-major), as XLA's select-and-scatter does.  Maps of few channels are pooled
    with several images side by side in the channels (:func:`_pool_batch_fold`), where oneDNN's gradient runs at
    the speed of many channels.  Raises RuntimeError where oneDNN is not :func:`available`, ValueError for other
    NHWC input or a window that does not fit.
    """
    window = (int(window[0]), int(window[1]))
    strides = (int(strides[0]), int(strides[1]))
    padding = ((int(padding[0][0]), int(padding[0][1])), (int(padding[1][0]), int(padding[1][1])))
    out = [(x.shape[1 + i] + sum(padding[i]) - window[i]) // strides[i] + 1 for i in range(2)] if x.ndim == 4 else [0]
    bad = x.ndim != 4 or x.dtype not in ACTIVATION_DTYPES
    if bad or min(out) < 1 or min(strides) < 1 or min(map(min, padding)) < 0:
        raise ValueError(
            f"deepsea.onednn.max_pool takes float32 or bfloat16 NHWC x whose padded size fits the window; got x "
            f"{x.dtype}{tuple(x.shape)}, window {window}, strides {strides}, padding {padding}"
        )
    _require("max pooling")
    k = _pool_batch_fold(x.shape[0], x.shape[3])
    if k == 1:
        return _max_pool(x, window, strides, padding)
    # k images side by side in the channels: every channel pools alone, so the values and gradients are the same
    n, h, w, c = x.shape
    folded = x.reshape(n // k, k, h, w, c).transpose(0, 2, 3, 1, 4).reshape(n // k, h, w, k * c)
    y = _max_pool(folded, window, strides, padding)
    ho, wo = y.shape[1:3]
    return y.reshape(n // k, ho, wo, k, c).transpose(0, 3, 1, 2, 4).reshape(n, ho, wo, c)


_THIN_POOL_CHANNELS = 8  # below this, oneDNN's NHWC max pooling gradient is slow (docs/results.md, issue 27)
_POOL_FOLD_CHANNELS = 16  # what a fold aims for: one AVX-512 vector of bfloat16 or float32 lanes


def _pool_batch_fold(n: Any, c: int) -> int:
    """How many images :func:`max_pool` puts side by side in the channels: 1 for ``c`` of at least
    ``_THIN_POOL_CHANNELS`` or a symbolic batch ``n`` (an exported model's), else the smallest divisor ``k`` of the
    batch with ``k * c`` at least ``_POOL_FOLD_CHANNELS`` (1 if none)."""
    if c >= _THIN_POOL_CHANNELS or not isinstance(n, int):
        return 1
    return next((k for k in range(2, n + 1) if n % k == 0 and k * c >= _POOL_FOLD_CHANNELS), 1)


def _pool_attrs(window, strides, padding) -> dict[str, np.ndarray]:
    return {
        "window": np.asarray(window, np.int64),
        "strides": np.asarray(strides, np.int64),
        "padding": _pad_attr(padding),
    }


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x: jax.Array, window, strides, padding) -> jax.Array:
    def on_cpu(x):
        shape = jax.eval_shape(lambda x: reduce_window_max(x, window, strides, padding), x)
        call = jax.ffi.ffi_call(_target("deepsea_max_pool", x.dtype), shape, vmap_method="sequential")
        return call(x, **_pool_attrs(window, strides, padding))

    return jax.lax.platform_dependent(x, cpu=on_cpu, default=lambda x: reduce_window_max(x, window, strides, padding))


def _pool_workspace_bytes(x: jax.Array, y_hw: tuple[int, int], window, strides, padding) -> int:
    """The bytes of oneDNN's workspace (each window's argmax) for pooling ``x``, as oneDNN sizes it."""
    n, h, w, c = x.shape
    dims = (n, h, w, c, *y_hw, *window, *strides, *padding[0], *padding[1])
    err = ctypes.create_string_buffer(512)
    size = _LIBRARY[0].deepsea_onednn_pool_workspace_bytes(
        (ctypes.c_int64 * len(dims))(*dims), int(x.dtype == jnp.bfloat16), err, len(err)
    )
    if size < 0:
        raise RuntimeError(f"deepsea oneDNN max pooling of {x.dtype}{tuple(x.shape)}: {err.value.decode()}")
    return size


def _max_pool_fwd(x, window, strides, padding):
    """The value and oneDNN's workspace: the backward pass reads the argmax instead of pooling again."""
    shape = jax.eval_shape(lambda x: reduce_window_max(x, window, strides, padding), x)
    if not isinstance(x.shape[0], int):  # an exported model's symbolic batch: no workspace size to give XLA
        return _max_pool(x, window, strides, padding), (x, None)
    ws = jax.ShapeDtypeStruct((_pool_workspace_bytes(x, shape.shape[1:3], window, strides, padding),), jnp.uint8)

    def on_cpu(x):
        call = jax.ffi.ffi_call(_target("deepsea_max_pool_train", x.dtype), (shape, ws), vmap_method="sequential")
        return tuple(call(x, **_pool_attrs(window, strides, padding)))

    def default(x):
        return reduce_window_max(x, window, strides, padding), jnp.zeros(ws.shape, ws.dtype)

    y, workspace = jax.lax.platform_dependent(x, cpu=on_cpu, default=default)
    return y, (x, workspace)


def _max_pool_bwd(window, strides, padding, res, g):
    x, workspace = res

    def on_cpu(x, workspace, g):
        call = jax.ffi.ffi_call(
            _target("deepsea_max_pool_bwd", x.dtype), jax.ShapeDtypeStruct(x.shape, x.dtype), vmap_method="sequential"
        )
        return call(workspace, g, **_pool_attrs(window, strides, padding))

    def default(x, workspace, g):
        return jax.vjp(lambda x: reduce_window_max(x, window, strides, padding), x)[1](g)[0]

    if workspace is None:
        return (default(x, None, g.astype(x.dtype)),)
    return (jax.lax.platform_dependent(x, workspace, g.astype(x.dtype), cpu=on_cpu, default=default),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def conv_bias_leaky_relu(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array,
    negative_slope: float,
    padding: str | Sequence[tuple[int, int]] = "SAME",
) -> jax.Array:
    """``leaky_relu(conv(x, kernel) + bias, negative_slope)`` as one oneDNN primitive on the CPU (the bias and the
    activation are post-operations of the convolution: no extra pass over the output).

    The gradient takes the activation's derivative from the output's sign (the same as the input's for
    ``negative_slope >= 0``), the kernel and bias gradients from one oneDNN primitive (one pass over the output's
    gradient, summed in float32), and :func:`conv`'s input gradient.  Raises
    like :func:`conv`, and ValueError for a negative slope.
    """
    if not negative_slope >= 0:
        raise ValueError(f"negative_slope must be >= 0 (the output's sign gives the gradient); got {negative_slope}")
    if not supports(x, kernel, (1, 1), padding) or bias.shape != (kernel.shape[3],) or bias.dtype != jnp.float32:
        raise ValueError(
            f"deepsea.onednn.conv_bias_leaky_relu takes float32 or bfloat16 NHWC x, a float32 HWIO kernel and a "
            f"float32 bias per output channel "
            f"with non-negative padding; got x {x.dtype}{tuple(x.shape)}, kernel {kernel.dtype}{tuple(kernel.shape)}, "
            f"bias {bias.dtype}{tuple(bias.shape)}, padding {padding!r}"
        )
    _require("convolution")
    return _conv_act(x, kernel, bias, float(negative_slope), conv_pads(x, kernel, padding))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv_act(x: jax.Array, kernel: jax.Array, bias: jax.Array, negative_slope: float, padding: Padding) -> jax.Array:
    def on_cpu(x, kernel, bias):
        out = jax.ShapeDtypeStruct(_out_shape(x, kernel, padding), x.dtype)
        call = jax.ffi.ffi_call(_target("deepsea_conv_fwd_bias_leaky_relu", x.dtype), out, vmap_method="sequential")
        return call(x, kernel, bias, padding=_pad_attr(padding), negative_slope=np.float32(negative_slope))

    def default(x, kernel, bias):
        z = conv_reference(x.astype(jnp.float32), kernel, padding) + bias
        return leaky_relu(z, negative_slope).astype(x.dtype)

    return jax.lax.platform_dependent(x, kernel, bias, cpu=on_cpu, default=default)


def _conv_act_fwd(x, kernel, bias, negative_slope, padding):
    y = _conv_act(x, kernel, bias, negative_slope, padding)
    return y, (x, kernel, y)


def _conv_act_bwd(negative_slope, padding, res, g):
    x, kernel, y = res
    # for a slope > 0, y >= 0 exactly where conv + bias >= 0; for a ReLU, y > 0 where conv + bias > 0 (and the
    # derivative at 0 is taken as 0, as jax.nn.relu's)
    g = g.astype(y.dtype)
    dz = jnp.where(y >= 0 if negative_slope > 0 else y > 0, g, jnp.asarray(negative_slope, g.dtype) * g)
    return _input_grad(padding, x, kernel, dz), *_kernel_and_bias_grad(padding, x, kernel, dz)


def _kernel_and_bias_grad(padding: Padding, x: jax.Array, kernel: jax.Array, dz: jax.Array):
    def ffi(x, dz):
        out = (jax.ShapeDtypeStruct(kernel.shape, jnp.float32), jax.ShapeDtypeStruct(kernel.shape[-1:], jnp.float32))
        call = jax.ffi.ffi_call(_target("deepsea_conv_bwd_weights_bias", x.dtype), out, vmap_method="sequential")
        return call(x, dz, padding=_pad_attr(padding))

    def default(x, dz):
        return _xla_vjp(padding, x, kernel, dz)[1], bias_gradient(dz)

    return jax.lax.platform_dependent(x, dz, cpu=ffi, default=default)


_conv_act.defvjp(_conv_act_fwd, _conv_act_bwd)


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` for float32 or bfloat16 matrices of one dtype through oneDNN on the CPU (the product and both
    gradients, each one oneDNN matmul reading the transposes in place; products accumulate in float32 and the
    result is rounded once to the dtype), XLA's dot elsewhere.  Raises RuntimeError where oneDNN is not
    :func:`available`, ValueError for other arguments."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0] or a.dtype != b.dtype or a.dtype not in ACTIVATION_DTYPES:
        raise ValueError(
            f"deepsea.onednn.matmul takes two float32 or bfloat16 matrices of one dtype whose inner sizes agree; "
            f"got {a.dtype}{tuple(a.shape)} and {b.dtype}{tuple(b.shape)}"
        )
    _require("matmul")
    return _matmul(a, b)


def _product(a: jax.Array, b: jax.Array, transpose_a: bool, transpose_b: bool) -> jax.Array:
    """``op(a) @ op(b)`` (op: the transpose where asked) in ``a``'s dtype: oneDNN on the CPU, XLA's dot elsewhere."""
    m = a.shape[1] if transpose_a else a.shape[0]
    n = b.shape[0] if transpose_b else b.shape[1]

    def ffi(a, b):
        call = jax.ffi.ffi_call(
            _target("deepsea_matmul", a.dtype), jax.ShapeDtypeStruct((m, n), a.dtype), vmap_method="sequential"
        )
        return call(a, b, transpose_a=transpose_a, transpose_b=transpose_b)

    def default(a, b):
        lhs, rhs = (a.T if transpose_a else a), (b.T if transpose_b else b)
        return jnp.dot(lhs, rhs, preferred_element_type=jnp.float32).astype(a.dtype)

    return jax.lax.platform_dependent(a, b, cpu=ffi, default=default)


@jax.custom_vjp
def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    return _product(a, b, False, False)


def _matmul_fwd(a, b):
    return _matmul(a, b), (a, b)


def _matmul_bwd(res, g):
    a, b = res
    g = g.astype(a.dtype)
    return _product(g, b, False, True), _product(a, g, True, False)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dot_general(
    lhs: jax.Array,
    rhs: jax.Array,
    dimension_numbers: Any,
    precision: Any = None,
    preferred_element_type: Any = None,
    *,
    strict: bool = False,
) -> jax.Array:
    """``jax.lax.dot_general`` with a dense layer's product, ``lhs (..., K)`` contracted with ``rhs (K, N)`` in one
    float32 or bfloat16 dtype, through :func:`matmul` (``flax.linen.Dense(dot_general=...)``); any other product,
    or a ``precision`` or result type it does not take, goes to XLA's, or with ``strict`` is a ValueError naming
    it (and a RuntimeError where oneDNN is not :func:`available`)."""
    (lc, rc), (lb, rb) = dimension_numbers
    dense = tuple(lc) == (lhs.ndim - 1,) and tuple(rc) == (0,) and not tuple(lb) and not tuple(rb) and rhs.ndim == 2
    same = lhs.dtype == rhs.dtype and lhs.dtype in ACTIVATION_DTYPES and preferred_element_type in (None, lhs.dtype)
    if strict:
        _require("matmul")
        if not (dense and same and precision is None):
            raise ValueError(
                f"the oneDNN dense product takes lhs (..., K) and rhs (K, N) of one float32 or bfloat16 dtype without "
                f"a precision or result type; got {lhs.dtype}{tuple(lhs.shape)} and {rhs.dtype}{tuple(rhs.shape)}, "
                f"dimension numbers {dimension_numbers}, precision {precision}, result type {preferred_element_type}"
            )
    elif not (dense and same and precision is None) or _load() is not None:
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type)
    y = _matmul(lhs.reshape(-1, lhs.shape[-1]), rhs)
    return y.reshape(*lhs.shape[:-1], rhs.shape[1])
