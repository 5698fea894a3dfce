"""deepsea: exact rotation-symmetric networks for plankton (NDSB 2015) and beyond.

The public API: the groups (:data:`C4`, :data:`D4`), the exact group operations (:mod:`deepsea.ops`), their
Flax layers and the seed's blocks (:mod:`deepsea.layers`), the equivariance checks, and the modules
:mod:`~deepsea.models`, :mod:`~deepsea.backends`, :mod:`~deepsea.configs`, :mod:`~deepsea.step`,
:mod:`~deepsea.train`, :mod:`~deepsea.inference` and :mod:`~deepsea.data`, imported on use.
"""

from deepsea import layers, ops
from deepsea.backends import max_pool
from deepsea.equivariance import check_equivariance, check_invariance
from deepsea.groups import C4, D4, Group, get_group
from deepsea.ops import (
    cyclic_conv_roll,
    cyclic_pool,
    cyclic_roll,
    cyclic_slice,
    dihedral_conv_roll,
    dihedral_pool,
    dihedral_roll,
    dihedral_slice,
    group_conv_roll,
    group_pool,
    group_roll,
    group_slice,
    permute_views,
    pooling_is_symmetric,
)

__version__ = "0.1.0"

__all__ = [
    "C4",
    "D4",
    "Group",
    "check_equivariance",
    "check_invariance",
    "cyclic_conv_roll",
    "cyclic_pool",
    "cyclic_roll",
    "cyclic_slice",
    "dihedral_conv_roll",
    "dihedral_pool",
    "dihedral_roll",
    "dihedral_slice",
    "get_group",
    "group_conv_roll",
    "group_pool",
    "group_roll",
    "group_slice",
    "layers",
    "max_pool",
    "ops",
    "permute_views",
    "pooling_is_symmetric",
]
