"""Checks that a function commutes with the group: run over every element, report each.

In the style of escnn's ``check_equivariance``: for each element ``a`` of the
group, compare ``fn(in_action(a, x))`` with ``out_action(a, fn(x))``.  Actions
are named:

- ``"spatial"``: ``a`` acts on the height and width axes of an NHWC array;
- ``"views"``: ``a`` permutes stacked views, view ``g`` <- view ``g . a``
  (how slice, roll and their outputs transform, :func:`deepsea.ops.permute_views`);
- ``"trivial"``: nothing changes (an invariant output).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from deepsea.groups import Group, get_group
from deepsea.ops import permute_views

__all__ = ["Action", "check_equivariance", "check_invariance"]

Action = Literal["spatial", "views", "trivial"] | Callable[[int, jax.Array], jax.Array]


def _action(action: Action, group: Group) -> Callable[[int, jax.Array], jax.Array]:
    if callable(action):
        return action
    if action == "spatial":
        return lambda a, x: group.act(a, x, axes=(1, 2))
    if action == "views":
        return lambda a, x: permute_views(x, group, a)
    if action == "trivial":
        return lambda a, x: x
    raise ValueError(f"unknown action {action!r}; expected 'spatial', 'views', 'trivial' or a callable")


def check_equivariance(
    fn: Callable[[jax.Array], jax.Array],
    group: str | Group,
    x: jax.Array,
    in_action: Action = "spatial",
    out_action: Action = "views",
    atol: float = 0.0,
    rtol: float = 0.0,
) -> dict[str, float]:
    """Asserts ``fn(in_action(a, x)) == out_action(a, fn(x))`` for every element ``a``.

    Returns the largest absolute error for each element (by label, e.g. ``"r2m"``).
    Raises ``AssertionError`` listing every element whose error exceeds
    ``atol + rtol * |expected|``; the defaults demand bitwise equality.
    """
    g = get_group(group)
    act_in, act_out = _action(in_action, g), _action(out_action, g)
    # The named actions move the values in numpy (exact permutations): no program to compile per element and shape.
    x_in = np.asarray(x) if isinstance(in_action, str) else x
    y = fn(x)
    y_out = np.asarray(y) if isinstance(out_action, str) else y
    errors: dict[str, float] = {}
    failed = []
    for a in range(g.order):
        got = np.asarray(fn(jnp.asarray(act_in(a, x_in))), dtype=np.float64)
        want = np.asarray(act_out(a, y_out), dtype=np.float64)
        if got.shape != want.shape:
            raise AssertionError(f"element {g.label(a)}: output shape {got.shape} != {want.shape}")
        err = np.abs(got - want)
        errors[g.label(a)] = float(err.max(initial=0.0))
        if np.any(err > atol + rtol * np.abs(want)) or np.any(np.isnan(got) != np.isnan(want)):
            failed.append(f"{g.label(a)} (max error {errors[g.label(a)]:.3g})")
    if failed:
        raise AssertionError(
            f"not equivariant under {g.name.upper()} elements {', '.join(failed)} (atol={atol}, rtol={rtol})"
        )
    return errors


def check_invariance(
    fn: Callable[[jax.Array], jax.Array],
    group: str | Group,
    x: jax.Array,
    atol: float = 1e-5,
    rtol: float = 0.0,
) -> dict[str, float]:
    """Asserts ``fn(a x) == fn(x)`` within ``atol`` for every element ``a`` acting on NHWC ``x``."""
    return check_equivariance(fn, group, x, "spatial", "trivial", atol=atol, rtol=rtol)
