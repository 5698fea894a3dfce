"""deepsea: exact rotation-symmetric networks for plankton (NDSB 2015) and beyond."""

from deepsea import layers, onednn, ops
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
    max_pool,
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
    "onednn",
    "ops",
    "permute_views",
    "pooling_is_symmetric",
]
