"""``deepsea info``: what a bug report needs: versions, devices, CPU features, active backends, XLA flags."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from typing import Any

__all__ = ["collect", "cpu_features", "format_info"]

_PACKAGES = (
    "deepsea", "jax", "jaxlib", "flax", "optax", "numpy", "grain", "orbax-checkpoint", "onednn-cpu-gomp",
    "onednn-devel-cpu-gomp",
)  # fmt: skip
_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma")


def cpu_features() -> dict[str, Any]:
    """The CPU's model name and which of the instruction-set extensions that matter here it has (Linux)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), **{flag: flag in flags for flag in _CPU_FLAGS}}


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def collect() -> dict[str, Any]:
    """Everything ``deepsea info`` prints, as a dict."""
    import jax

    from deepsea import backends

    try:
        from deepsea_kernels._blocks import interpret_default

        pallas = "interpret mode (no GPU)" if interpret_default() else "compiled (Triton)"
    except ImportError as e:  # pragma: no cover - a broken install
        pallas = f"unavailable: {e}"
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": {p: _version(p) for p in _PACKAGES},
        "devices": [f"{d.platform}:{d.id} {d.device_kind}" for d in jax.devices()],
        "default_backend": jax.default_backend(),
        "cpu": cpu_features(),
        "backends": {**backends.status(), "pallas kernels": pallas},
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "cache_dir": str(backends.onednn.cache_dir()),
    }


def format_info(info: dict[str, Any]) -> str:
    """``collect()`` as aligned ``key: value`` lines."""
    lines = [f"python: {info['python']} ({info['platform']})"]
    lines += [f"{k}: {v}" for k, v in info["versions"].items()]
    cpu = info["cpu"]
    feats = ", ".join(f"{k} {'yes' if cpu[k] else 'no'}" for k in _CPU_FLAGS)
    lines.append(f"cpu: {cpu['model']}, {cpu['cores']} cores; {feats}")
    lines.append(f"devices: {', '.join(info['devices'])} (default backend: {info['default_backend']})")
    lines += [f"{k}: {v}" for k, v in info["backends"].items()]
    lines.append(f"XLA_FLAGS: {info['xla_flags'] or '(none)'}")
    lines.append(f"build cache: {info['cache_dir']}")
    return "\n".join(lines)
