"""A deliberately wrong dihedral conv roll, to show that the equivariance checks can fail.

The original competition code took, for view g and block h, the maps of view
``g . h`` instead of ``h . g``; in the non-commutative D4 that breaks equivariance.
"""

import jax.numpy as jnp

from deepsea.groups import D4


def wrong_dihedral_conv_roll(x):
    v = x.reshape((8, x.shape[0] // 8, *x.shape[1:]))
    blocks = [D4.act(int(D4.inverse[h]), jnp.stack([v[D4.compose(g, h)] for g in range(8)]), (2, 3)) for h in range(8)]
    return jnp.concatenate(blocks, -1).reshape((*x.shape[:-1], 8 * x.shape[-1]))
