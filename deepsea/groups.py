"""The cyclic group C4 and the dihedral group D4 acting on square pixel grids.

An element is a pair ``(k, f)`` standing for the map ``r**k . m**f``: first
mirror the image if ``f == 1`` (``m`` reverses the width axis), then rotate it
counter-clockwise by ``k * 90`` degrees (``r`` is :func:`numpy.rot90`).  Since
``m r m = r**-1``, composition is::

    (k1, f1) . (k2, f2) = (k1 + (-1)**f1 * k2 mod 4, f1 xor f2)

Elements are numbered ``4 * f + k``; the identity is 0.  This numbering is also
the order of the views that :func:`deepsea.ops.group_slice` stacks on the batch
axis, so view ``v`` of an image ``x`` is ``group.act(v, x)``.

The action on arrays uses only flips and transposes, so it is exact for every
dtype and never interpolates.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

ArrayT = TypeVar("ArrayT", np.ndarray, jax.Array)

__all__ = ["C4", "D4", "Group", "get_group"]


def _compose_pairs(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    (k1, f1), (k2, f2) = a, b
    return ((k1 + (-1) ** f1 * k2) % 4, f1 ^ f2)


@dataclasses.dataclass(frozen=True, eq=False)
class Group:
    """A finite group of pixel-grid symmetries: C4 (``flips=False``) or D4.

    Attributes:
      name: ``"c4"`` or ``"d4"``.
      elements: ``(k, f)`` pairs in view order (see the module docstring).
      table: ``table[i, j]`` is the index of ``elements[i] . elements[j]``.
      inverse: ``inverse[i]`` is the index of ``elements[i] ** -1``.
    """

    name: str
    elements: tuple[tuple[int, int], ...]
    table: np.ndarray
    inverse: np.ndarray

    @classmethod
    def _build(cls, name: str, flips: bool) -> Group:
        elements = tuple((k, f) for f in range(2 if flips else 1) for k in range(4))
        index = {e: i for i, e in enumerate(elements)}
        n = len(elements)
        table = np.array(
            [[index[_compose_pairs(a, b)] for b in elements] for a in elements],
            dtype=np.int32,
        )
        inverse = np.array([int(np.flatnonzero(table[i] == 0)[0]) for i in range(n)], np.int32)
        table.setflags(write=False)
        inverse.setflags(write=False)
        return cls(name=name, elements=elements, table=table, inverse=inverse)

    @property
    def order(self) -> int:
        """Number of elements, which is also the number of views."""
        return len(self.elements)

    @property
    def identity(self) -> int:
        return 0

    def compose(self, i: int, j: int) -> int:
        """Index of ``elements[i] . elements[j]`` (apply ``j`` first)."""
        return int(self.table[i, j])

    def label(self, i: int) -> str:
        """A readable name: ``e``, ``r``, ``r2``, ``r3``, ``m``, ``rm``, ..."""
        k, f = self.elements[i]
        rot = "" if k == 0 else ("r" if k == 1 else f"r{k}")
        s = rot + ("m" if f else "")
        return s or "e"

    def act(self, i: int, x: ArrayT, axes: tuple[int, int] = (-3, -2)) -> ArrayT:
        """Applies element ``i`` to the two spatial ``axes`` (height, width) of ``x``.

        Works on numpy and JAX arrays; rotations require equal sizes on ``axes``
        unless ``k`` is 0 or 2.
        """
        k, f = self.elements[i]
        xp: Any = np if isinstance(x, np.ndarray) else jnp
        h_axis, w_axis = axes
        if k % 2 and x.shape[h_axis] != x.shape[w_axis]:
            raise ValueError(
                f"a 90-degree rotation needs square maps; got {x.shape[h_axis]}x"
                f"{x.shape[w_axis]} on axes {axes} of an array of shape {x.shape}"
            )
        if f:
            x = xp.flip(x, axis=w_axis)
        if k:
            x = xp.rot90(x, k, axes=(h_axis, w_axis))
        return x

    def __repr__(self) -> str:
        return f"Group({self.name!r}, order={self.order})"


C4: Group = Group._build("c4", flips=False)
"""The four rotations by multiples of 90 degrees."""

D4: Group = Group._build("d4", flips=True)
"""The four rotations and four reflections of the square."""


@functools.cache
def _groups() -> dict[str, Group]:
    return {"c4": C4, "cyclic": C4, "d4": D4, "dihedral": D4}


def get_group(group: str | Group) -> Group:
    """Returns ``group`` itself, or the group named ``"c4"``/``"cyclic"``/``"d4"``/``"dihedral"``."""
    if isinstance(group, Group):
        return group
    try:
        return _groups()[str(group).lower()]
    except KeyError:
        raise ValueError(f"unknown group {group!r}; expected one of {sorted(_groups())}") from None
