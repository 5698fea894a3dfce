"""A run folder: what ``deepsea train`` writes and everything else reads back.

- ``config.json``: the experiment's configuration; ``classes.json``: the class names, in label order;
  ``split.json``: the data root, the training and validation images (relative paths) and what was skipped;
  ``preprocess.json``: the patch size, rescale and global statistics;
- ``metrics.jsonl``: one JSON line per logged training step and per validation pass; ``best.json``: the best
  validation pass;
- ``checkpoints/`` (the latest few) and ``best/`` (the lowest validation log loss): orbax checkpoints of the
  :class:`~deepsea.step.TrainState`.

Every JSON file is written atomically (a temporary file renamed over it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from deepsea.data.folders import ImageFolder
from deepsea.data.pipeline import Preprocess
from deepsea.data.transforms import Rescale
from deepsea.errors import UserError

__all__ = [
    "RunDataMismatch",
    "append_metrics",
    "checkpoint_managers",
    "load_config",
    "load_json",
    "load_preprocess",
    "load_run_data",
    "preprocess_from_dict",
    "preprocess_to_dict",
    "read_metrics",
    "restore_state",
    "save_json",
    "save_run_data",
    "save_state",
    "truncate_metrics",
]


class RunDataMismatch(UserError):
    """A dataset that does not match what a run was trained with (classes or split images)."""


def save_json(path: str, obj: Any) -> None:
    """Writes ``obj`` as JSON atomically (a temporary file renamed over ``path``)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def load_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def load_config(run_dir: str) -> Any:
    """The run's configuration: :func:`deepsea.configs.base_config` updated with the stored ``config.json`` and
    locked, so a key added to the recipe since the run was trained reads as its default, and nothing downstream
    restates defaults.  A stored key the recipe does not know (and the run's model builder does not take) is an
    error naming it."""
    from deepsea.configs import ConfigError, merge_stored

    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{run_dir!r} is not a run folder: it has no config.json")
    stored = load_json(path)
    model = stored.get("model", {})
    for old, new in _RENAMED_MODEL_KEYS.items():  # runs written before the keys took the builders' names
        if old in model:
            model.setdefault(new, model.pop(old))
    try:
        return merge_stored(stored)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


_RENAMED_MODEL_KEYS = {"dropout": "dropout_rate", "view_pool": "view_pool_mode"}


def save_run_data(
    run_dir: str,
    folder: ImageFolder,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    pp: Preprocess,
    seed: int,
    fraction: float,
    skipped: Sequence[tuple[str, str]] = (),
) -> None:
    """Writes ``classes.json``, ``split.json`` (image ids, relative paths) and ``preprocess.json``."""
    os.makedirs(run_dir, exist_ok=True)
    rel = [os.path.relpath(p, folder.root) for p in folder.paths]
    save_json(os.path.join(run_dir, "classes.json"), list(folder.classes))
    save_json(
        os.path.join(run_dir, "split.json"),
        {
            "root": os.path.abspath(folder.root),
            "seed": seed,
            "validation_fraction": fraction,
            "train": [rel[i] for i in train_idx],
            "validation": [rel[i] for i in val_idx],
            "validation_ids": [folder.ids[i] for i in val_idx],
            "skipped": [{"path": p, "reason": r} for p, r in skipped],
            "ignored": list(folder.ignored),
        },
    )
    save_json(os.path.join(run_dir, "preprocess.json"), preprocess_to_dict(pp))


def load_run_data(run_dir: str, folder: ImageFolder) -> tuple[np.ndarray, np.ndarray, Preprocess]:
    """Reads a run's split and preprocessing back against ``folder``.

    Raises :class:`RunDataMismatch` naming the difference when the class list
    differs or split images are missing from the folder.
    """
    classes = load_json(os.path.join(run_dir, "classes.json"))
    if list(folder.classes) != classes:
        missing = sorted(set(classes) - set(folder.classes))
        extra = sorted(set(folder.classes) - set(classes))
        raise RunDataMismatch(
            f"the classes of {folder.root!r} do not match run {run_dir!r} "
            f"({len(folder.classes)} vs {len(classes)} classes; missing {missing[:5]}, extra {extra[:5]})"
        )
    split = load_json(os.path.join(run_dir, "split.json"))
    index = {os.path.relpath(p, folder.root): i for i, p in enumerate(folder.paths)}
    lost = [p for p in split["train"] + split["validation"] if p not in index]
    if lost:
        raise RunDataMismatch(f"{len(lost)} image(s) of run {run_dir!r} are not in {folder.root!r}: {lost[:5]}")
    train = np.array([index[p] for p in split["train"]], np.int64)
    val = np.array([index[p] for p in split["validation"]], np.int64)
    return train, val, load_preprocess(run_dir)


def apply_class_map(run_dir: str, folder: ImageFolder) -> ImageFolder:
    """``folder`` with the class mapping the run was trained with (``class_map.json``: every original class to its
    name in the run, or null if dropped), if it had one."""
    from deepsea.data import map_classes

    path = os.path.join(run_dir, "class_map.json")
    return map_classes(folder, load_json(path)) if os.path.exists(path) else folder


def preprocess_to_dict(pp: Preprocess) -> dict[str, Any]:
    """``pp`` as JSON-ready values (``preprocess.json``; the exported model's ``model.json``)."""
    return {
        "size": pp.size,
        "rescale": {"kind": pp.rescale.kind, "value": pp.rescale.value},
        "channels": pp.channels,
        "mean": pp.mean,
        "std": pp.std,
        "extra_rotations": list(pp.extra_rotations),
        "second_size": pp.second_size,
        "second_rescale": {"kind": pp.second_rescale.kind, "value": pp.second_rescale.value},
        "background": pp.background,
        "gray_to_rgb": pp.gray_to_rgb,
        "pixel_size": pp.pixel_size,
    }


def preprocess_from_dict(meta: dict[str, Any]) -> Preprocess:
    """The inverse of :func:`preprocess_to_dict`; keys added since are optional (older runs)."""
    return Preprocess(
        size=meta["size"],
        rescale=Rescale(meta["rescale"]["kind"], meta["rescale"]["value"]),
        channels=meta["channels"],
        mean=meta["mean"],
        std=meta["std"],
        extra_rotations=tuple(meta.get("extra_rotations", ())),
        second_size=meta.get("second_size", 0),
        second_rescale=Rescale(**meta.get("second_rescale", {"kind": "factor", "value": 0.2})),
        background=meta.get("background", "white"),
        gray_to_rgb=meta.get("gray_to_rgb", False),
        pixel_size=meta.get("pixel_size", 0.0),
    )


def load_preprocess(run_dir: str) -> Preprocess:
    """The preprocessing (patch, rescale, global statistics) a run was trained with."""
    return preprocess_from_dict(load_json(os.path.join(run_dir, "preprocess.json")))


def append_metrics(run_dir: str, record: dict[str, Any]) -> None:
    """Appends one record to ``metrics.jsonl``."""
    with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
    """Every record of ``metrics.jsonl`` (none if it does not exist)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(ln) for ln in f if ln.strip()]


def truncate_metrics(run_dir: str, step: int) -> None:
    """Drops the records after ``step`` (a resumed run logs them again)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(path):
        rows = [r for r in read_metrics(run_dir) if r["step"] <= step]
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


def checkpoint_managers(run_dir: str, keep: int) -> tuple[Any, Any]:
    """Orbax managers of ``checkpoints/`` (the latest ``keep``) and ``best/`` (one)."""
    import orbax.checkpoint as ocp

    root = os.path.abspath(run_dir)
    latest = ocp.CheckpointManager(
        os.path.join(root, "checkpoints"), options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    )
    best = ocp.CheckpointManager(
        os.path.join(root, "best"), options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
    )
    return latest, best


def _as_tree(state: Any) -> dict[str, Any]:
    tree = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
    if state.model_state:  # absent for models without batch statistics: checkpoints stay as they were
        tree["model_state"] = state.model_state
    return tree


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _plain_sigint() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt, as by default, from a Python handler.  Orbax runs its work with
    ``asyncio.run``, which replaces Python's default SIGINT handler by one that holds its task and, taking it back
    (``signal.signal`` names the handler it replaces), formats that task and with it every array the task
    returned; a handler of our own is left alone, and a checkpoint costs no string formatting."""
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    signal.signal(signal.SIGINT, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def save_state(manager: Any, step: int, state: Any) -> None:
    """Saves a :class:`~deepsea.step.TrainState` as checkpoint ``step`` and waits for it."""
    import orbax.checkpoint as ocp

    with _plain_sigint():
        manager.save(step, args=ocp.args.StandardSave(_as_tree(state)), force=True)
        manager.wait_until_finished()


def restore_state(manager: Any, step: int, template: Any) -> Any:
    """Restores checkpoint ``step`` into the structure, shapes and placement of the state ``template``."""
    import jax
    import orbax.checkpoint as ocp

    from deepsea.step import TrainState

    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _as_tree(template))
    try:
        with _plain_sigint():
            restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # an emptied, truncated or foreign checkpoint: orbax's message names none of it
        where = os.path.join(str(manager.directory), str(step))
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"checkpoint {where!r} cannot be read ({reason}): it is damaged or from another model; delete that step's "
            "folder to fall back on an earlier one, or start a new run"
        ) from e
    return TrainState(**restored)
