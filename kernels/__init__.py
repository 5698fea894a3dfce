"""Fused Pallas kernels for the roll operations (imported as ``deepsea_kernels``).

Each kernel file holds its reference (the pure-JAX op of :mod:`deepsea.ops`), its kernels and its
``jax.custom_vjp`` gradient.  :func:`conv_roll` is compiled on a GPU (Pallas' Triton backend) and interpreted
elsewhere; select it in a network with ``deepsea.layers.ConvRoll(implementation="pallas")``.  The dense roll
(``deepsea_kernels.roll``) runs in interpret mode only and is not exported here: see its status.

The package depends on ``deepsea.groups`` and ``deepsea.ops``; ``deepsea`` imports it only when a layer asks for
``implementation="pallas"``.
"""

from deepsea_kernels.conv_roll import conv_roll

__all__ = ["conv_roll"]
