"""Fused Pallas kernels for the roll operations (imported as ``deepsea_kernels``).

Each op has one file: its kernel(s), gradient (``jax.custom_vjp``) and block
size choice; its reference is the pure-JAX op in :mod:`deepsea.ops`, selected
with ``implementation="xla"`` (the default).  ``implementation="pallas"`` runs
these, compiled on a GPU and in interpret mode elsewhere.
"""

from deepsea_kernels.conv_roll import conv_roll
from deepsea_kernels.roll import roll

__all__ = ["conv_roll", "roll"]
