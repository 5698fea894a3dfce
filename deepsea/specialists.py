"""Specialists for confusable classes, distilled from a general model and merged at prediction (the seed tried them;
Hinton, Vinyals and Dean, "Distilling the knowledge in a neural network", 2015).

:func:`confusable_group` picks the ``k`` classes a general run confuses most among themselves (from its validation
predictions: the most confused pair first, then the class most confused with the group so far).  A specialist is a
run over the group's classes plus one class, :data:`OTHER`, for every other image (a class map), trained on the
general run's training images (``data.split_from``: the general run's validation images stay out) with the general
run's predictions, collapsed onto those classes (:func:`collapse`), as its distillation targets.  At prediction
:func:`merge` keeps the general run's probability that an image belongs to the group and shares it among the group's
classes as the specialist does.

``deepsea specialist --workdir GENERAL --size K --out DIR`` writes the group, the class map and the teacher file and
prints the specialist's training command; ``deepsea specialist --workdir GENERAL --merge SPECIALIST`` scores the
general run and the merged prediction on the general run's validation split.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from deepsea.errors import UserError

__all__ = ["OTHER", "collapse", "confusable_group", "group_class_map", "merge"]

OTHER = "_other"  # the specialist's class for every image outside its group


def confusable_group(probs: np.ndarray, labels: np.ndarray, k: int) -> list[int]:
    """The ``k`` classes (indices, in the order chosen) that ``probs`` (``(N, K)``) confuses most among themselves:
    confusion between two classes is the probability each gets on the other's images, summed both ways; the most
    confused pair starts the group, then the class with the most confusion with the group joins, until ``k``."""
    n_classes = probs.shape[1]
    if not 2 <= k <= n_classes:
        raise UserError(f"a confusable group holds 2 to {n_classes} classes, not {k}")
    confusion = np.zeros((n_classes, n_classes), np.float64)
    np.add.at(confusion, labels, probs.astype(np.float64))  # row: true class, column: its probability mass
    np.fill_diagonal(confusion, 0.0)
    both = confusion + confusion.T
    i, j = np.unravel_index(np.argmax(both), both.shape)
    group = [int(min(i, j)), int(max(i, j))]
    while len(group) < k:
        score = both[:, group].sum(1)
        score[group] = -1.0
        group.append(int(np.argmax(score)))
    return group


def group_class_map(classes: Sequence[str], group: Sequence[int]) -> dict[str, str]:
    """The class map of a specialist: the group's classes keep their names, every other class becomes
    :data:`OTHER`."""
    if OTHER in classes:
        raise UserError(f"a class is already named {OTHER!r}: the specialist's other class needs that name")
    keep = {classes[g] for g in group}
    return {c: (c if c in keep else OTHER) for c in classes}


def _specialist_classes(classes: Sequence[str], group: Sequence[int]) -> tuple[str, ...]:
    return tuple(sorted({classes[g] for g in group} | {OTHER}))  # as the class map sorts them


def collapse(probs: np.ndarray, classes: Sequence[str], group: Sequence[int]) -> tuple[np.ndarray, tuple[str, ...]]:
    """``(N, K)`` probabilities over ``classes`` -> over the specialist's classes (sorted, as its run holds them):
    each group class keeps its probability, :data:`OTHER` gets the sum of the others'."""
    spec = _specialist_classes(classes, group)
    out = np.zeros((probs.shape[0], len(spec)), np.float64)
    in_group = np.zeros(len(classes), bool)
    in_group[list(group)] = True
    for g in group:
        out[:, spec.index(classes[g])] = probs[:, g]
    out[:, spec.index(OTHER)] = probs[:, ~in_group].sum(1)
    return out.astype(np.float32), spec


def merge(
    general: np.ndarray,
    specialist: np.ndarray,
    classes: Sequence[str],
    specialist_classes: Sequence[str],
    group: Sequence[int],
) -> np.ndarray:
    """The general run's ``(N, K)`` probabilities with its mass on the group shared among the group's classes as
    the specialist's ``(N, K_s)`` probabilities share theirs (its :data:`OTHER` left out); the classes outside the
    group, and the group's total, stay the general run's."""
    expected = _specialist_classes(classes, group)
    if tuple(specialist_classes) != expected:
        raise UserError(f"the specialist's classes {list(specialist_classes)} are not the group's {list(expected)}")
    cols = [expected.index(classes[g]) for g in group]
    inner = specialist[:, cols].astype(np.float64)
    inner /= np.maximum(inner.sum(1, keepdims=True), np.finfo(np.float64).tiny)
    out = general.astype(np.float64).copy()
    mass = out[:, list(group)].sum(1, keepdims=True)
    out[:, list(group)] = mass * inner
    return out.astype(np.float32)


def save_group(out_dir: str, workdir: str, classes: Sequence[str], group: Sequence[int]) -> dict[str, str]:
    """Writes ``group.json`` (the general run, the group's classes in the order chosen) and ``class_map.json``
    under ``out_dir``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"group": os.path.join(out_dir, "group.json"), "class_map": os.path.join(out_dir, "class_map.json")}
    with open(paths["group"], "w") as f:
        json.dump({"general": os.path.abspath(workdir), "classes": [classes[g] for g in group]}, f, indent=1)
    with open(paths["class_map"], "w") as f:
        json.dump(group_class_map(classes, group), f, indent=1)
    return paths


def load_group(path: str, classes: Sequence[str]) -> list[int]:
    """The group of ``group.json`` as indices into ``classes`` (the general run's)."""
    with open(path) as f:
        names = json.load(f)["classes"]
    missing = [n for n in names if n not in classes]
    if missing:
        raise UserError(f"{path}: the group names classes the general run does not have: {missing[:5]}")
    return [list(classes).index(n) for n in names]
