"""Any model folder as a :class:`deepsea.predictor.Predictor`: the one place that decides its kind (a trained run,
an exported model, a fused run)."""

from __future__ import annotations

import os

from deepsea.errors import UserError
from deepsea.predictor import Predictor

__all__ = ["load_predictor", "predictor_kind"]


def predictor_kind(path: str) -> str:
    """``"fused"`` (a ``fused.json``), ``"exported"`` (``model.json``) or ``"run"`` (``config.json``); an error
    naming the path for anything else."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path!r} is not a folder: give a run folder, an exported model or a fused run")
    for name, kind in (("fused.json", "fused"), ("model.json", "exported"), ("config.json", "run")):
        if os.path.isfile(os.path.join(path, name)):
            return kind
    raise FileNotFoundError(
        f"{path!r} is neither a run (config.json), an exported model (model.json) nor a fused run (fused.json)"
    )


def load_predictor(
    path: str, checkpoint: str = "best", precision: str | None = None, orbit_average: str | None = None
) -> Predictor:
    """The predictor in the folder ``path``, whatever its kind (:func:`predictor_kind`).  ``checkpoint``,
    ``precision`` and ``orbit_average`` choose how a run (and a fused run's members) predicts; an exported model
    was fixed when it was exported, so they are errors there unless left at their defaults."""
    kind = predictor_kind(path)
    if kind != "run":
        given = [n for n, v in (("precision", precision), ("orbit average", orbit_average)) if v is not None]
        given += [] if checkpoint == "best" else ["checkpoint"]
        if given:
            what = "an exported model: its" if kind == "exported" else "a fused run: its members'"
            raise UserError(f"{path} is {what} {', '.join(given)} was fixed when it was made")
    if kind == "exported":
        from deepsea.export import load_model

        return load_model(path)
    if kind == "fused":
        from deepsea.fusion import load_fused

        return load_fused(path)
    from deepsea.runs import restore_run

    return restore_run(path, checkpoint, orbit_average, precision)
