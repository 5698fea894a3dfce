"""Where arrays go: the device mesh over the batch axis (training: every process's devices; prediction: this
process's), a batch's model inputs placed on it, and a replicated state's local copy."""

from __future__ import annotations

import logging
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

__all__ = [
    "data_mesh",
    "local_variables",
    "put_batch",
]

log = logging.getLogger(__name__)


def data_mesh(local: bool = False) -> jax.sharding.Mesh:
    """A 1-D mesh over every device of every process (training), or of this process (``local``: prediction,
    where each process predicts its own images), the batch axis split over it."""
    devices = jax.local_devices() if local else jax.devices()
    return jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def local_variables(variables: Any) -> Any:
    """``variables`` as this process's arrays: a parameter replicated over several processes' devices (a training
    state) becomes its local copy, so this process can predict with its own devices."""

    def local(a: Any) -> Any:
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return a.addressable_shards[0].data
        return a

    return jax.tree.map(local, variables)


_MODEL_INPUTS = ("image", "image2", "label", "raw_size", "weight", "target", "teacher")
_DEVICE_WARP_INPUTS = ("canvas", "canvas_size", "forward", "forward2")  # data.augment_on="device"


def put_batch(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """Places a batch's model inputs on the mesh, split over the batch axis; with several processes, ``batch``
    is this process's slice of the global batch."""
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    if mesh.is_multi_process:
        keys = [k for k in _MODEL_INPUTS + _DEVICE_WARP_INPUTS if k in batch]
        return {k: jax.make_array_from_process_local_data(sharding, batch[k]) for k in keys}
    return {k: jax.device_put(batch[k], sharding) for k in _MODEL_INPUTS + _DEVICE_WARP_INPUTS if k in batch}
