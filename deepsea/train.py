"""The training loop: data-parallel over local devices, checkpoints, exact resume, divergence detection, and
runs sized by a time budget (``train.budget_minutes``: the step time is measured on the machine that trains).

``train(config, workdir)`` writes the run folder (:mod:`deepsea.rundir`).  A
killed run started again with the same ``workdir`` resumes from its last
checkpoint and ends with the same parameters as an uninterrupted run: batches
and dropout are functions of ``(seed, step)``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from deepsea import rundir
from deepsea.data import (
    AugmentedSource,
    AugmentRanges,
    MixedSource,
    Preprocess,
    check_images,
    compute_stats,
    map_classes,
    read_class_map,
    scan_labelled_folder,
    stratified_split,
    train_batches,
)
from deepsea.data.device_warp import warp_inputs
from deepsea.data.sources import resolve_data
from deepsea.errors import UserError
from deepsea.evaluation import Evaluation, evaluate_probs
from deepsea.mesh import data_mesh, put_batch
from deepsea.metrics import log_probabilities
from deepsea.runs import tta_probs
from deepsea.step import TrainState, create_train_state, drop_steps, make_train_step
from deepsea.teachers import align_teacher_predictions, load_teacher_predictions
from deepsea.tta import combine_probs, transforms_for, tta_ranges_for

__all__ = [
    "Budget",
    "TrainResult",
    "TrainingDiverged",
    "bag",
    "schedule_fits_budget",
    "step_batch",
    "train",
    "training_split",
]

log = logging.getLogger(__name__)


class TrainingDiverged(UserError, RuntimeError):
    """The training loss became NaN, infinite or larger than ``train.divergence_loss``."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a finished (or stopped) run reached: its last and best validation passes and its final state."""

    workdir: str
    final: Evaluation | None
    best: Evaluation | None
    state: TrainState


def class_weights(labels: np.ndarray, num_classes: int, power: float) -> np.ndarray | None:
    """Loss weight of each class, ``(its share of the images) ** -power`` scaled so that the training images'
    weights average 1 (``power`` 1: inverse frequency, every class counts as much in total; 0: None, no
    weighting)."""
    if power == 0:
        return None
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    share = np.where(counts > 0, counts / counts.sum(), 1.0)
    w = share**-power
    return (w / (np.sum(counts * w) / counts.sum())).astype(np.float32)


def _map_classes(config: Any, workdir: str, folder: Any, lead: bool) -> Any:
    """A new run's classes: ``data.class_map`` applied, then classes under ``data.min_class_size`` dropped; the
    resolved mapping (every original class to its name, or null) is saved as ``class_map.json`` for resuming,
    evaluation and prediction."""
    mapping = read_class_map(config.data.class_map) if config.data.class_map else {}
    unknown = sorted(set(mapping) - set(folder.classes))
    if unknown:  # a typo would leave the class it meant in training
        import difflib

        hints = [f"{u!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(u, folder.classes, 1)) else
                 repr(u) for u in unknown[:10]]  # fmt: skip
        raise UserError(
            f"{config.data.class_map}: class(es) that {folder.root!r} does not have: {', '.join(hints)}; nothing "
            "was trained"
        )
    resolved = {c: mapping.get(c, c) or None for c in folder.classes}
    minimum = config.data.min_class_size
    if minimum > 0:
        mapped = map_classes(folder, resolved)
        small = {c for c, n in zip(mapped.classes, mapped.class_counts(), strict=True) if n < minimum}
        if small:
            log.warning("dropping %d classes with fewer than %d images: %s", len(small), minimum, sorted(small)[:10])
        resolved = {c: None if t in small else t for c, t in resolved.items()}
    if all(c == t for c, t in resolved.items()):
        return folder
    if lead:
        os.makedirs(workdir, exist_ok=True)
        rundir.save_json(os.path.join(workdir, "class_map.json"), resolved)
    return map_classes(folder, resolved)


def training_split(config: Any, progress: bool = False) -> tuple[Any, np.ndarray, np.ndarray]:
    """The labelled folder, training and validation indices a new run of ``config`` would use: after its class
    map, ``data.min_class_size`` and (with ``data.skip_bad_images``) the unreadable images it skips; writes
    nothing.  Without ``skip_bad_images`` no image is decoded (training would stop at a bad one)."""
    folder = _map_classes(config, "", scan_labelled_folder(resolve_data(config)), lead=False)
    if config.data.skip_bad_images:
        folder, _, _ = check_images(folder, skip_bad=True, progress=progress, pp=Preprocess.from_config(config.data))
    train_idx, val_idx = _split(config, folder)
    return folder, train_idx, val_idx


def _split(config: Any, folder: Any) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation indices: another run's validation images (``data.split_from``), else a stratified
    split of ``data.validation_fraction`` of every class."""
    if config.data.split_from:
        return _split_as(config.data.split_from, folder)
    return stratified_split(folder.labels, config.data.validation_fraction, config.data.split_seed)


def _split_as(run: str, folder: Any) -> tuple[np.ndarray, np.ndarray]:
    """``data.split_from``: the images of ``folder`` that ``run`` validates on, and the others to train on."""
    from deepsea.runs import validation_set

    norm = lambda p: os.path.normpath(os.path.abspath(p))  # noqa: E731
    held = {norm(p) for p in validation_set(run).paths}
    is_val = np.array([norm(p) in held for p in folder.paths], bool)
    if not is_val.any():
        raise UserError(f"data.split_from={run!r}: none of its validation images is in {folder.root!r}")
    if is_val.sum() < len(held):
        log.warning("data.split_from=%s: %d of its %d validation images are not in %s (class map, skipped files)",
                    run, len(held) - int(is_val.sum()), len(held), folder.root)  # fmt: skip
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _new_run(config: Any, workdir: str, folder: Any, lead: bool, progress: bool) -> tuple[Any, Any, Any, Preprocess]:
    pp = Preprocess.from_config(config.data)
    folder, _, skipped = check_images(folder, skip_bad=config.data.skip_bad_images, progress=progress, pp=pp)
    train_idx, val_idx = _split(config, folder)
    if len(val_idx) == 0:
        raise UserError(
            f"the validation split of {folder.root!r} is empty: {len(folder)} images in {len(folder.classes)} "
            f"classes give none at data.validation_fraction={config.data.validation_fraction} (a class of 10 or "
            "more images always gives one)"
        )
    if config.train.init_from:  # the run's normalisation: its layers see the inputs they learnt from
        from deepsea.transfer import source_preprocess

        source = source_preprocess(config.train.init_from)
        mean, std = source.mean, source.std
    else:
        mean, std = compute_stats(folder.subset(train_idx), pp, config.data.stats_images, config.seed)
    pp = pp.with_stats(mean, std)
    if lead:
        data = config.data
        rundir.save_run_data(
            workdir, folder, train_idx, val_idx, pp, data.split_seed, data.validation_fraction, skipped
        )
    return folder, train_idx, val_idx, pp


@dataclasses.dataclass(frozen=True)
class Budget:
    """How a run with ``train.budget_minutes`` chose its steps: the time spent before training (setup and this
    measurement), one training step's time in the first epoch (``first_step_s``, while the loader decodes every
    image) and after it (``step_s``, from the image cache where ``data.cache_images`` keeps one), a validation
    pass's time, and the steps that fill the budget with them (``budget.json`` in the run folder)."""

    minutes: float
    setup_s: float
    step_s: float
    eval_s: float
    steps: int
    lr_drops_at: tuple[int, ...] = ()  # a step schedule's drops, scaled to these steps
    first_step_s: float = 0.0  # 0: every step costs step_s
    epoch_steps: int = 0  # the steps of the first epoch, which cost first_step_s

    @staticmethod
    def fit(
        minutes: float,
        setup_s: float,
        step_s: float,
        eval_s: float,
        eval_every: int,
        first_step_s: float = 0.0,
        epoch_steps: int = 0,
    ) -> Budget:
        """The most steps whose training (the first ``epoch_steps`` at ``first_step_s`` each where that is given,
        the others at ``step_s``), validation every ``eval_every`` steps and final validation fit."""
        left = 60.0 * minutes - setup_s - eval_s
        per_eval = eval_s / eval_every
        first = epoch_steps if first_step_s > 0 else 0
        if left <= first * (first_step_s + per_eval):
            steps = int(left / (first_step_s + per_eval))
        else:
            steps = first + int((left - first * (first_step_s + per_eval)) / (step_s + per_eval))
        return Budget(minutes, setup_s, step_s, eval_s, max(1, steps), (), first_step_s if first else 0.0, first)


class _Revisit:
    """The first ``n`` examples of ``source`` over and over: a second pass reads what the loader has cached."""

    def __init__(self, source: Any, n: int):
        self.source, self.n = source, n

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.source[int(i) % self.n]


def schedule_fits_budget(optim: Any, steps: int) -> tuple[int, ...]:
    """A step schedule's drops at the ``steps`` a time budget chose; a :class:`UserError` when one given as a step
    count lies beyond them (the rate would never drop: give the drops as fractions of the steps instead)."""
    if optim.schedule != "step":
        return ()
    drops = tuple(drop_steps(optim, steps))
    late = [d for d, b in zip(drops, optim.decay_steps, strict=True) if b >= 1 and d >= steps]  # counts, not fractions
    if late:
        raise UserError(
            f"optim.decay_steps={tuple(optim.decay_steps)}: the drop(s) at step {late} lie beyond the {steps} steps "
            "that fill train.budget_minutes, so the rate would never drop; give them as fractions of the steps "
            "(e.g. 0.84,0.95 for the seed's)"
        )
    return drops


def _eval_transforms(config: Any, pp: Preprocess) -> list:
    """The transforms of validation during training (``train.eval_tta``): the plain rescale, TenCrop or N
    Halton transforms within the training ranges, so the best checkpoint is chosen on the predictions users
    will make."""
    tta = str(config.train.eval_tta or "0")
    n: int | str = tta if tta == "tencrop" else int(tta)
    return transforms_for(n, pp.size, tta_ranges_for(AugmentRanges.from_config(config.aug)))


def validate(
    model: Any,
    variables: Any,
    paths: list,
    labels: Any,
    pp: Preprocess,
    batch_size: int,
    transforms: list,
    canvas: int = 0,
) -> Evaluation:
    """Scores ``model`` on ``paths`` under ``transforms`` (mean probability over them).  With several processes
    each predicts its contiguous share of ``paths`` and every process gathers all the predictions."""
    n, count = len(paths), jax.process_count()
    if count == 1:
        per = tta_probs(model, variables, paths, pp, transforms, batch_size, progress=False, canvas=canvas)
        return evaluate_probs(combine_probs(per), labels)
    from jax.experimental import multihost_utils

    from deepsea.distributed import process_share

    share = -(-n // count)  # the longest share: every process gathers arrays of one shape
    mine = list(paths[process_share(n)])
    part = np.zeros((len(transforms), share, 0), np.float32)
    if mine:
        part = tta_probs(model, variables, mine, pp, transforms, batch_size, progress=False, canvas=canvas)
    width = int(multihost_utils.process_allgather(np.int32(part.shape[-1])).max())  # a process may have none
    padded = np.zeros((len(transforms), share, width), np.float32)
    padded[:, : len(mine), : part.shape[-1]] = part
    gathered = multihost_utils.process_allgather(padded)  # (processes, transforms, share, classes)
    per = np.concatenate(list(gathered), axis=1)[:, :n]
    return evaluate_probs(combine_probs(per), labels)


def pseudo_targets(probs: np.ndarray, hard: bool) -> np.ndarray:
    """The pseudo-labelled images' targets: the teacher's probabilities (soft, the seed's choice) or, with
    ``data.pseudo_hard``, its top class one-hot (hard pseudo-labels, which the seed tried)."""
    if not hard:
        return probs
    return np.eye(probs.shape[1], dtype=probs.dtype)[probs.argmax(1)]


def step_batch(config: Any) -> int:
    """The images one training step takes: ``train.batch_size`` times ``train.accumulate`` micro-batches."""
    return config.train.batch_size * config.train.accumulate


def _augment_on_device(config: Any) -> bool:
    """``data.augment_on``, checked: whether the training step warps the images (``"device"``)."""
    where = config.data.augment_on
    if where not in ("host", "device"):
        raise UserError(f"data.augment_on={where!r}: expected 'host' (the loader warps) or 'device' (the step warps)")
    if where == "device":
        ranges = AugmentRanges.from_config(config.aug)
        if ranges.elastic or ranges.jitters:
            raise UserError(
                "data.augment_on='device' warps affinely: elastic distortions (aug.elastic) and colour jitter "
                "(aug.brightness, contrast, saturation, hue) run on the host only"
            )
    return where == "device"


def _device_canvas(config: Any) -> int:
    """The side of the squares the images travel in when the device warps them (``data.augment_on``), else 0."""
    return int(config.data.device_canvas) if _augment_on_device(config) else 0


def _train_step(config: Any, setup: Any, pp: Preprocess) -> Any:
    inputs = functools.partial(warp_inputs, pp=pp) if _augment_on_device(config) else None
    return make_train_step(
        setup.model,
        setup.optimizer,
        setup.schedule,
        distill_weight=config.train.distill_weight,
        distill_temperature=config.train.distill_temperature,
        accumulate=config.train.accumulate,
        bootstrap=config.train.bootstrap,
        bootstrap_beta=config.train.bootstrap_beta,
        inputs=inputs,
    )


def _corrupt_labels(labels: np.ndarray, classes: int, data: Any) -> np.ndarray:
    """``data.label_noise`` of the training labels (rounded to a whole number of images, drawn with
    ``data.split_seed``) each replaced by one of the other classes at random: noisy labels at a known rate, to test
    what is meant to resist them (``train.bootstrap``).  Validation labels are never touched."""
    rate = float(data.label_noise)
    if not 0.0 <= rate < 1.0:
        raise UserError(f"data.label_noise={rate}: expected a share in [0, 1)")
    if rate == 0.0:
        return labels
    rng = np.random.default_rng([int(data.split_seed), 0x6E015E])
    picked = rng.choice(len(labels), size=round(rate * len(labels)), replace=False)
    noisy = labels.copy()
    noisy[picked] = (labels[picked] + rng.integers(1, classes, len(picked))) % classes  # never the true class
    return noisy


def _training_source(
    config: Any, folder: Any, train_idx: np.ndarray, val_paths: list[str], pp: Preprocess
) -> AugmentedSource | MixedSource:
    """The training examples: the labelled images (with their teacher's predictions under ``data.distill``),
    mixed with the pseudo-labelled images of ``data.pseudo_labels`` at ``data.pseudo_fraction`` of every batch."""
    data, k = config.data, len(folder.classes)
    paths, labels = [folder.paths[i] for i in train_idx], _corrupt_labels(folder.labels[train_idx], k, data)
    weights = class_weights(labels, k, config.train.class_weight_power)
    ranges = AugmentRanges.from_config(config.aug)
    if data.distill and data.pseudo_labels:
        raise UserError("data.distill and data.pseudo_labels cannot be used together (the pseudo-labels are soft)")
    teacher = None
    if data.distill:
        tp = load_teacher_predictions(data.distill)
        teacher = log_probabilities(align_teacher_predictions(tp, paths, folder.classes, data.distill))
    common = {
        "pp": pp, "ranges": ranges, "cache": data.cache_images, "class_weights": weights,
        "canvas": _device_canvas(config),
    }  # fmt: skip
    real = AugmentedSource(paths, labels, seed=config.seed, balanced=data.balanced_sampling, teacher=teacher, **common)
    if not data.pseudo_labels:
        return real
    tp = load_teacher_predictions(data.pseudo_labels)
    if tp.classes != tuple(folder.classes):
        raise UserError(
            f"{data.pseudo_labels} holds predictions for other classes than this run's "
            f"({len(tp.classes)} vs {len(folder.classes)}); make them with teachers trained on these classes"
        )
    pseudo_paths = [os.path.join(tp.root, r) for r in tp.images]
    norm = lambda ps: {os.path.normpath(os.path.abspath(p)) for p in ps}  # noqa: E731
    leaked = norm(pseudo_paths) & norm(val_paths)
    if leaked:
        raise UserError(
            f"{data.pseudo_labels} pseudo-labels {len(leaked)} validation image(s) (e.g. {sorted(leaked)[:2]}): "
            "the validation score would see them in training"
        )
    targets = pseudo_targets(tp.probs, data.pseudo_hard)
    pseudo = AugmentedSource(pseudo_paths, tp.probs.argmax(1), seed=config.seed + 1, targets=targets, **common)
    per_batch = round(data.pseudo_fraction * step_batch(config))
    return MixedSource(real, pseudo, step_batch(config), per_batch, k)


def _measure_budget(
    config: Any,
    num_classes: int,
    source: Any,
    train_images: int,
    val_paths: list,
    val_labels: Any,
    pp: Preprocess,
    t_start: float,
) -> Budget:
    """Times the training step on real batches from a loader of its own and a fresh state: after one compiling
    step, ``train.budget_probe_steps`` steps on images the loader reads for the first time (the first epoch) and as
    many on the same images again (later epochs: with ``data.cache_images`` the loader keeps them decoded); then a
    validation pass from its first batches.  The run itself starts afresh afterwards."""
    probe = create_train_state(config, num_classes)
    mesh = data_mesh()
    step = _train_step(config, probe, pp)
    state = jax.device_put(probe.state, NamedSharding(mesh, PartitionSpec()))
    rng = jax.random.key(config.seed)
    batch, timed = step_batch(config), config.train.budget_probe_steps
    with train_batches(
        _Revisit(source, (timed + 1) * batch),
        batch,
        workers=config.data.workers,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    ) as batches:
        state, metrics = step(state, put_batch(next(batches), mesh), rng)
        jax.block_until_ready(metrics)
        times = []
        for _ in ("first reads", "read again"):
            t0 = time.perf_counter()
            for _ in range(timed):  # dispatched as training dispatches them: no sync per step
                state, metrics = step(state, put_batch(next(batches), mesh), rng)
            jax.block_until_ready(metrics)
            times.append((time.perf_counter() - t0) / timed)
    first_step_s, step_s = times
    bs = config.train.eval_batch_size
    head = min(len(val_paths), 2 * bs)
    transforms = _eval_transforms(config, pp)
    canvas = _device_canvas(config)
    validate(
        probe.model, state.variables(), val_paths[:bs], val_labels[:bs], pp, bs, transforms[:1], canvas
    )  # compiles
    t0 = time.perf_counter()
    validate(probe.model, state.variables(), val_paths[:head], val_labels[:head], pp, bs, transforms[:1], canvas)
    eval_s = (time.perf_counter() - t0) * len(val_paths) / head * len(transforms)
    setup_s = time.perf_counter() - t_start
    epoch_steps = -(-train_images // batch)
    budget = Budget.fit(
        config.train.budget_minutes, setup_s, step_s, eval_s, config.train.eval_every, first_step_s, epoch_steps
    )
    if jax.process_count() > 1:  # every host trains the steps the first one measured
        from jax.experimental import multihost_utils

        steps = int(multihost_utils.broadcast_one_to_all(np.int32(budget.steps)))
        budget = dataclasses.replace(budget, steps=steps)
    return budget


# Settings a resumed run may change: where files and threads go, how often it reports and saves; none of them
# changes the parameters it ends with.
_RESUMABLE = frozenset({
    "experiment_file", "data.path", "data.workers", "data.cache_images", "train.log_every", "train.eval_every",
    "train.checkpoint_every", "train.keep_checkpoints", "train.eval_batch_size", "train.budget_minutes",
    "train.budget_probe_steps",
})  # fmt: skip


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.loads(json.dumps(v, default=str))  # tuples and lists alike
    return out


def _check_resume(config: Any, workdir: str) -> None:
    """Refuses to resume ``workdir`` with settings that would change its result (naming them): the run folder
    must go on describing its model.  A budgeted run's steps were chosen when it started, so they are its own."""
    stored = _flat(rundir.load_config(workdir).to_dict())
    given = _flat(json.loads(config.to_json_best_effort()))
    budgeted = stored.get("train.budget_minutes", 0) > 0 and given.get("train.budget_minutes", 0) > 0
    ignore = _RESUMABLE | ({"train.steps"} if budgeted else set())
    changed = sorted(k for k in set(stored) | set(given) if k not in ignore and stored.get(k) != given.get(k))
    if changed:
        shown = "; ".join(f"{k}: {stored.get(k)!r} in the run, {given.get(k)!r} now" for k in changed[:6])
        raise UserError(
            f"{workdir} is a run trained with other settings ({shown}{'; ...' if len(changed) > 6 else ''}): "
            "resuming would change what it trains. Start a new run with another --workdir (or resume this one "
            "with its own settings: its config.json)"
        )


def bag(make_config: Any, copies: int, prefix: str, report: Any = log.info, progress: bool = True) -> list[str]:
    """Bagging: trains ``copies`` copies of ``make_config()`` (a fresh config each), copy ``i`` with split seed and
    seed raised by ``i``, into ``<prefix>_<i>`` (each resumes if killed); returns the run folders.  ``report`` is
    told of each copy and its best validation score."""
    if copies < 1:
        raise UserError(f"--copies must be at least 1, got {copies}")
    base = make_config()
    runs = []
    for i in range(copies):
        config = make_config()
        config.data.split_seed = base.data.split_seed + i
        config.seed = base.seed + i
        workdir = f"{prefix}_{i}"
        report(f"bag {i + 1}/{copies}: {config.name} with split seed {config.data.split_seed} in {workdir}")
        best = train(config, workdir, progress=progress).best
        report(f"  best validation {best} on its own split")
        runs.append(workdir)
    return runs


def _no_loss() -> jax.Array:
    return jnp.full((), -jnp.inf, jnp.float32)


@jax.jit
def _worst_loss(worst: jax.Array, loss: jax.Array) -> jax.Array:
    """The running maximum of the training loss; NaN propagates, so one NaN step is caught at the next check."""
    return jnp.maximum(worst, loss.astype(jnp.float32))


def _check_divergence(worst: float, first: int, last: int, limit: float, ckpt: Any, workdir: str) -> None:
    """Raises :class:`TrainingDiverged` when the largest loss of steps ``first..last`` is not finite or above
    ``limit``; runs before anything is logged, evaluated or checkpointed, so no checkpoint holds a diverged state."""
    if np.isfinite(worst) and worst <= limit:
        return
    ckpt.wait_until_finished()
    good = ckpt.latest_step()
    where = (
        f"The last good checkpoint is step {good} in {os.path.join(workdir, 'checkpoints')}"
        if good is not None
        else "No checkpoint was saved before it"
    )
    steps = f"step {last}" if first == last else f"steps {first}-{last}"
    raise TrainingDiverged(
        f"training loss reached {worst} in {steps} (limit {limit}); stopped. "
        f"{where}; lower optim.lr, set optim.grad_clip, or check the data."
    )


def train(config: Any, workdir: str, stop_after: int | None = None, progress: bool = True) -> TrainResult:
    """Trains (or resumes) ``config`` in ``workdir``.

    ``stop_after``: stop after that step as if killed (for tests of resume).
    """
    from tqdm.auto import tqdm

    from deepsea.plots import plot_metrics

    t_start = time.perf_counter()
    os.makedirs(workdir, exist_ok=True)
    lead = jax.process_index() == 0  # with several hosts, only the first writes files and shows progress
    progress = progress and lead
    folder = scan_labelled_folder(resolve_data(config))
    ckpt, best_mgr = rundir.checkpoint_managers(workdir, config.train.keep_checkpoints)
    resuming = ckpt.latest_step() is not None
    if resuming:
        try:
            _check_resume(config, workdir)
        except UserError:
            ckpt.close()
            best_mgr.close()
            raise
        log.info("resuming %s from step %d with the settings it started with", workdir, ckpt.latest_step())
    folder = rundir.apply_class_map(workdir, folder) if resuming else _map_classes(config, workdir, folder, lead)
    if resuming:
        train_idx, val_idx, pp = rundir.load_run_data(workdir, folder)
    else:
        folder, train_idx, val_idx, pp = _new_run(config, workdir, folder, lead, progress)
    val_paths = [folder.paths[i] for i in val_idx]
    val_labels = folder.labels[val_idx]
    source = _training_source(config, folder, train_idx, val_paths, pp)
    steps = config.train.steps
    if config.train.budget_minutes > 0:
        if resuming:  # the steps chosen when the run started, so that the schedule continues unchanged
            steps = int(rundir.load_config(workdir).train.steps)
        else:
            budget = _measure_budget(
                config, len(folder.classes), source, len(train_idx), val_paths, val_labels, pp, t_start
            )
            steps = budget.steps
            budget = dataclasses.replace(budget, lr_drops_at=schedule_fits_budget(config.optim, steps))
            log.info(
                "budget of %.1f minutes: %d steps of %.3f s (%.3f s in the first epoch)",
                budget.minutes,
                budget.steps,
                budget.step_s,
                budget.first_step_s,
            )
            if lead:
                rundir.save_json(os.path.join(workdir, "budget.json"), dataclasses.asdict(budget))
    if lead and not resuming:
        saved = json.loads(config.to_json_best_effort())
        saved["train"]["steps"] = steps  # what the run trains for, also when a budget chose it
        rundir.save_json(os.path.join(workdir, "config.json"), saved)
    setup = create_train_state(config, len(folder.classes), steps=steps)
    mesh = data_mesh()
    if config.train.batch_size % mesh.size:
        raise UserError(f"batch size {config.train.batch_size} is not divisible by the {mesh.size} devices")
    state, start = setup.state, 0
    if config.train.pretrained and not resuming:
        from deepsea.pretrain import load_pretrained

        state = dataclasses.replace(state, params=load_pretrained(config.train.pretrained, state.params))
    if config.train.init_from and not resuming:
        from deepsea.transfer import init_from_run

        origin = config.train.init_from
        params, model_state, took = init_from_run(origin, state.params, state.model_state, folder.classes)
        state = dataclasses.replace(state, params=params, model_state=model_state)
        if lead:
            rundir.save_json(os.path.join(workdir, "init_from.json"), dataclasses.asdict(took))
        log.info("initialised from %s (step %d): %d layers, %d shared classes", took.workdir, took.step,
                 len(took.layers), len(took.shared_classes))  # fmt: skip
    if resuming:
        start = int(ckpt.latest_step())
        state = rundir.restore_state(ckpt, start, state)
        log.info("resuming %s from step %d", workdir, start)
    state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
    rundir.truncate_metrics(workdir, start)
    best_path = os.path.join(workdir, "best.json")
    best = Evaluation.from_dict(rundir.load_json(best_path)) if os.path.exists(best_path) and resuming else None

    train_step = _train_step(config, setup, pp)
    rng = jax.random.key(config.seed)

    eval_transforms = _eval_transforms(config, pp)

    def run_eval(step: int) -> Evaluation:
        res = validate(
            setup.model,
            state.variables(),
            val_paths,
            val_labels,
            pp,
            config.train.eval_batch_size,
            eval_transforms,
            _device_canvas(config),
        )
        res = dataclasses.replace(res, step=step)
        if lead:
            rundir.append_metrics(workdir, {**res.to_dict(), "split": "validation"})
        return res

    last_val: Evaluation | None = None
    bs = step_batch(config)
    t_last, n_last, waited = time.perf_counter(), 0, 0.0
    worst, checked = _no_loss(), start  # the largest training loss since the last check, and that check's step
    try:
        with (
            train_batches(
                source,
                bs,
                workers=config.data.workers,
                start_step=start,
                process_index=jax.process_index(),
                process_count=jax.process_count(),
            ) as batches,
            tqdm(total=steps, initial=start, desc=config.name, unit="step", disable=not progress) as bar,
        ):
            for step in range(start, steps):
                t0 = time.perf_counter()
                batch = put_batch(next(batches), mesh)
                waited += time.perf_counter() - t0
                state, m = train_step(state, batch, rng)
                worst = _worst_loss(worst, m["loss"])  # on the device: no host sync per step
                done = step + 1
                n_last += bs
                bar.update(1)
                logging_now = done % config.train.log_every == 0 or done == steps
                checking = (
                    logging_now or done % config.train.eval_every == 0 or done % config.train.checkpoint_every == 0
                )
                if checking or (stop_after is not None and done >= stop_after):
                    _check_divergence(float(worst), checked + 1, done, config.train.divergence_loss, ckpt, workdir)
                    worst, checked = _no_loss(), done
                if logging_now:
                    now = time.perf_counter()
                    rate = n_last / max(now - t_last, 1e-9)
                    rec = {k: float(v) for k, v in m.items()}
                    rec["data_wait_share"] = waited / max(now - t_last, 1e-9)
                    t_last, n_last, waited = now, 0, 0.0
                    if lead:
                        rundir.append_metrics(workdir, {**rec, "step": done, "split": "train", "images_per_s": rate})
                    bar.set_postfix(loss=f"{rec['loss']:.3f}", img_s=f"{rate:.0f}", lr=f"{rec['lr']:.2g}")
                if done % config.train.eval_every == 0 or done == steps:
                    last_val = run_eval(done)
                    if best is None or last_val.log_loss < best.log_loss:
                        best = last_val
                        rundir.save_state(best_mgr, done, state)
                        if lead:
                            rundir.save_json(best_path, best.to_dict())
                    if lead:
                        plot_metrics(workdir)
                    bar.write(f"step {done}: validation {last_val}")
                if done % config.train.checkpoint_every == 0 or done == steps:
                    rundir.save_state(ckpt, done, state)
                if stop_after is not None and done >= stop_after:
                    break
    finally:  # also when training diverges or is interrupted: the managers' threads end, pending saves finish
        ckpt.close()
        best_mgr.close()
    return TrainResult(workdir, last_val, best, state)
