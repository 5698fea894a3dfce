"""Fine-tuning from a trained run (``train.init_from = RUN``): its network, all but the classifier, initialises a
new run's network for another class list.

Every layer but ``logits`` is copied from the run's best checkpoint (its parameters and batch statistics); the new
classifier is freshly initialised, except that the columns of classes the two lists share (by name) start from the
run's.  The input normalisation is the run's, so the copied layers see the inputs they learnt from.  The copied
layers can stay frozen for ``train.pretrained_frozen_steps`` and then learn at ``optim.pretrained_lr_multiplier``
times the classifier's rate, ramped over ``train.pretrained_warmup_steps`` (the switches pre-training uses).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from deepsea.errors import UserError

__all__ = ["HEAD", "InitFrom", "init_from_run", "is_backbone", "source_preprocess"]

HEAD = "logits"  # the classifier layer of every model in deepsea.models


def is_backbone(names: Sequence[str]) -> bool:
    """Whether a parameter (its path of module names) is copied from the run: everything but the classifier."""
    return HEAD not in [str(n) for n in names]


@dataclasses.dataclass(frozen=True)
class InitFrom:
    """What fine-tuning took from the run: its folder, checkpoint step, the layers copied and the shared classes."""

    workdir: str
    step: int
    layers: tuple[str, ...]
    shared_classes: tuple[str, ...]


def _layers(tree: Any) -> dict[str, Any]:
    from deepsea.models import network_layers

    return dict(network_layers(tree))


def _nest_like(layers: dict[str, Any], like: Any) -> Any:
    out, inner = layers, like
    while set(inner) == {"inner"}:  # an orbit average's nesting
        out, inner = {"inner": out}, inner["inner"]
    return out


def init_from_run(
    workdir: str, params: Any, model_state: dict[str, Any], classes: Sequence[str]
) -> tuple[Any, dict[str, Any], InitFrom]:
    """``params`` and ``model_state`` (a fresh network's) with every layer but the classifier replaced by the run's
    in ``workdir``, and the classifier's columns of shared classes too; a layer missing or of another shape is an
    error naming it (the two networks must be built alike)."""
    from deepsea.runs import restore_run

    _check_run(workdir)
    run = restore_run(workdir, "best")
    source = {k: _layers(v) for k, v in run.variables.items()}
    target = {"params": _layers(params), **{k: _layers(v) for k, v in model_state.items()}}
    copied = set()
    for collection, layers in target.items():
        theirs = source.get(collection, {})
        for name, value in layers.items():
            if name == HEAD:
                continue
            if name not in theirs:
                raise UserError(f"train.init_from={workdir}: layer {name!r} is not in the run's network ({collection})")
            their_flat = dict(_flat(theirs[name]))
            for key, leaf in _flat(value):
                got = their_flat.get(key)
                if got is None or np.shape(got) != np.shape(leaf):
                    raise UserError(
                        f"train.init_from={workdir}: {collection} {name}/{'/'.join(map(str, key))} has shape "
                        f"{None if got is None else np.shape(got)} in the run and {np.shape(leaf)} here: build the "
                        "network as the run did (model.* and data.size)"
                    )
            layers[name] = theirs[name]
            copied.add(name)
    shared = [c for c in classes if c in run.classes]
    head, their_head = dict(target["params"][HEAD]), source["params"][HEAD]
    if shared:
        mine_idx = np.array([list(classes).index(c) for c in shared])
        their_idx = np.array([list(run.classes).index(c) for c in shared])
        for k in head:  # kernel (features, classes) and bias (classes,): class columns on the last axis
            if np.shape(head[k])[:-1] != np.shape(their_head[k])[:-1]:
                raise UserError(f"train.init_from={workdir}: the classifier's {k} has another input size than here")
            head[k] = jnp.asarray(head[k]).at[..., mine_idx].set(jnp.asarray(their_head[k])[..., their_idx])
    target["params"][HEAD] = head
    new_params = _nest_like(target.pop("params"), params)
    new_state = {k: _nest_like(v, model_state[k]) for k, v in target.items()}
    info = InitFrom(workdir, run.step, tuple(sorted(copied)), tuple(shared))
    return new_params, new_state, info


def _flat(tree: Any, prefix: tuple = ()) -> list[tuple[tuple, Any]]:
    if isinstance(tree, dict):
        return [item for k in sorted(tree) for item in _flat(tree[k], (*prefix, k))]
    return [(prefix, tree)]


def _check_run(workdir: str) -> None:
    if not os.path.isfile(os.path.join(workdir, "config.json")):
        raise UserError(f"train.init_from={workdir!r} is not a run folder (no config.json)")


def source_preprocess(workdir: str) -> Any:
    """The run's preprocessing: a fine-tuned network keeps its input normalisation."""
    from deepsea import rundir

    _check_run(workdir)
    return rundir.load_preprocess(workdir)
