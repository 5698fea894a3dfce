"""deepsea: exact rotation-symmetric networks for plankton (NDSB 2015) and beyond.

The public API: the groups (``C4``, ``D4``), the exact group operations (:mod:`deepsea.ops` and their named
forms here), their Flax layers and the seed's blocks (:mod:`deepsea.layers`), the equivariance checks, and the
modules ``models``, ``backends``, ``configs``, ``step``, ``train``, ``data``, ``predictor`` (one way to predict
for runs, exported models and fused runs), ``runs`` (a restored run), ``evaluation``, ``fitting`` (calibration
and thresholds), ``ensemble``, ``submission``, ``mesh``, ``calibration``, ``stream`` (large folders), ``export``
(models without the training code), ``distributed``, ``teachers`` (pseudo-labels, distillation), ``features`` and
``fusion`` (image features late-fused), ``pretrain`` (the tied convolutional autoencoder), ``sweep`` (grids of runs
at equal budgets), ``cost`` and ``frontier`` (networks at equal compute), ``abundance`` (class counts of samples,
corrected for prior shift), ``allocator`` (freed buffers kept for the next step) and ``errors`` (``UserError``).
Names are imported on first use, so the command line starts without loading JAX.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_FROM = {
    "C4": "deepsea.groups",
    "D4": "deepsea.groups",
    "Group": "deepsea.groups",
    "get_group": "deepsea.groups",
    "check_equivariance": "deepsea.equivariance",
    "check_invariance": "deepsea.equivariance",
    "max_pool": "deepsea.backends",
    "Predictor": "deepsea.predictor",
    "load_predictor": "deepsea.load",
    "UserError": "deepsea.errors",
    **{
        name: "deepsea.ops"
        for name in (
            "cyclic_conv_roll",
            "cyclic_pool",
            "cyclic_roll",
            "cyclic_slice",
            "dihedral_conv_roll",
            "dihedral_pool",
            "dihedral_roll",
            "dihedral_slice",
            "group_conv_roll",
            "group_pool",
            "group_roll",
            "group_slice",
            "permute_views",
            "pooling_is_symmetric",
        )
    },
}
_MODULES = (
    "abundance",
    "allocator",
    "backends",
    "calibration",
    "configs",
    "cost",
    "data",
    "distributed",
    "export",
    "features",
    "frontier",
    "fusion",
    "ensemble",
    "errors",
    "evaluation",
    "fitting",
    "mesh",
    "runs",
    "submission",
    "layers",
    "load",
    "models",
    "ops",
    "predictor",
    "pretrain",
    "review",
    "step",
    "stream",
    "sweep",
    "teachers",
    "train",
    "transfer",
)

__all__ = sorted([*_FROM, *_MODULES])

if TYPE_CHECKING:  # pragma: no cover
    from deepsea import (  # noqa: F401
        backends,
        calibration,
        configs,
        cost,
        data,
        distributed,
        ensemble,
        errors,
        evaluation,
        export,
        features,
        fitting,
        frontier,
        fusion,
        layers,
        load,
        mesh,
        models,
        ops,
        predictor,
        pretrain,
        runs,
        step,
        stream,
        submission,
        sweep,
        teachers,
        train,
    )
    from deepsea.backends import max_pool  # noqa: F401
    from deepsea.equivariance import check_equivariance, check_invariance  # noqa: F401
    from deepsea.errors import UserError  # noqa: F401
    from deepsea.groups import C4, D4, Group, get_group  # noqa: F401
    from deepsea.load import load_predictor  # noqa: F401
    from deepsea.ops import (  # noqa: F401
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
    from deepsea.predictor import Predictor  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        value = importlib.import_module(f"deepsea.{name}")
    elif name in _FROM:
        value = getattr(importlib.import_module(_FROM[name]), name)
    else:
        raise AttributeError(f"module 'deepsea' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
