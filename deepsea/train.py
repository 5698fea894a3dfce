"""Training: one pure jitted step, data-parallel over local devices, orbax checkpoints, exact resume.

``train(config, workdir)`` writes into ``workdir``: ``config.json``,
``classes.json``, ``split.json``, ``preprocess.json``, ``checkpoints/``
(every ``train.checkpoint_every`` steps and at the end), ``best/`` (lowest
validation log loss), ``metrics.jsonl`` and ``metrics.png``.  A killed run
started again with the same ``workdir`` resumes from its last checkpoint and
ends with the same parameters as an uninterrupted run: batches and dropout are
functions of ``(seed, step)``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from deepsea import metrics as M
from deepsea.data import (
    AugmentedSource,
    AugmentRanges,
    Preprocess,
    Rescale,
    check_images,
    compute_stats,
    eval_batches,
    load_run_data,
    save_run_data,
    scan_labelled_folder,
    stratified_split,
    train_batches,
)
from deepsea.data.pipeline import load_json, load_preprocess, save_json
from deepsea.models import build_model, network_layers

__all__ = [
    "TrainState",
    "TrainingDiverged",
    "augment_ranges",
    "evaluate",
    "make_optimizer",
    "make_train_step",
    "predict_probs",
    "restore_run",
    "train",
]

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The training loss became NaN, infinite or larger than ``train.divergence_loss``."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any = dataclasses.field(default_factory=dict)  # e.g. {"batch_stats": ...}; {} for most models


def _schedule(cfg: Any, total_steps: int) -> optax.Schedule:
    kind = cfg.get("schedule", "step")
    if kind == "cosine":
        if cfg.get("warmup_steps", 0) >= total_steps:
            raise ValueError(
                f"optim.warmup_steps={cfg.warmup_steps} must be smaller than the {total_steps} training steps"
            )
        return optax.warmup_cosine_decay_schedule(
            0.0, cfg.lr, cfg.get("warmup_steps", 0), total_steps, cfg.lr * cfg.get("end_factor", 0.0)
        )
    if kind != "step":
        raise ValueError(f"unknown learning-rate schedule {kind!r}; expected 'step' or 'cosine'")
    boundaries = {}
    for b in cfg.decay_steps:
        step = round(b * total_steps) if isinstance(b, float) and b < 1 else int(b)
        boundaries[step] = boundaries.get(step, 1.0) * cfg.decay_factor
    sched = optax.piecewise_constant_schedule(cfg.lr, boundaries)
    if cfg.get("warmup_steps", 0):
        warm = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
        return optax.join_schedules([warm, lambda s: sched(s + cfg.warmup_steps)], [cfg.warmup_steps])
    return sched


def make_optimizer(cfg: Any, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Nesterov SGD (or Adam) on a piecewise-constant (or cosine) schedule, with L2 decay on kernels only.

    ``decay_steps`` entries below 1.0 are fractions of ``total_steps``.  ``schedule="cosine"``: a linear
    warm-up to ``lr``, then a cosine decay to ``end_factor * lr`` at ``total_steps``.
    """
    sched = _schedule(cfg, total_steps)

    def kernels(params: Any) -> Any:
        return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", "") == "kernel", params)

    parts = []
    if cfg.get("grad_clip", 0.0):
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    if cfg.weight_decay:
        parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=kernels))
    if cfg.name == "sgd":
        parts.append(optax.sgd(sched, momentum=cfg.momentum, nesterov=True))
    elif cfg.name == "adam":
        parts.append(optax.adam(sched))
    else:
        raise ValueError(f"unknown optimizer {cfg.name!r}; expected 'sgd' or 'adam'")
    return optax.chain(*parts), sched


def _forward(model: nn.Module, variables: Any, batch: dict[str, jax.Array], train: bool, rng: jax.Array | None):
    """Logits; in training, also the updated non-parameter collections (batch statistics), if the model has any."""
    rngs = {"dropout": rng} if rng is not None else None
    mutable = [k for k in variables if k != "params"] if train else False
    out = model.apply(
        variables,
        batch["image"],
        train=train,
        raw_size=batch["raw_size"],
        x2=batch.get("image2"),
        rngs=rngs,
        mutable=mutable,
    )
    return out if train else (out, {})


def make_train_step(
    model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule
) -> Callable[[TrainState, dict[str, jax.Array], jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """``(state, batch, rng) -> (state, metrics)``, jitted, donating the state."""

    def step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array):
        dropout_rng = jax.random.fold_in(rng, state.step)

        def loss_fn(params):
            logits, model_state = _forward(model, {"params": params, **state.model_state}, batch, True, dropout_rng)
            logits = logits.astype(jnp.float32)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
            return ce, (logits, model_state)

        (loss, (logits, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
            "grad_norm": optax.tree.norm(grads),
            "lr": jnp.asarray(schedule(state.step), jnp.float32),
        }
        return TrainState(state.step + 1, params, opt_state, dict(model_state)), metrics

    return jax.jit(step, donate_argnums=0)


def _mesh() -> jax.sharding.Mesh:
    # Auto axes: the compiler propagates shardings (the batch is split, the state replicated).
    # All devices of all processes (hosts) after jax.distributed.initialize().
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def _put_batch(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """Places a batch on the mesh, split over the batch axis; with several processes, ``batch`` is this
    process's slice of the global batch."""
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    keep = ("image", "image2", "label", "raw_size")
    if jax.process_count() > 1:
        return {k: jax.make_array_from_process_local_data(sharding, batch[k]) for k in keep if k in batch}
    return {k: jax.device_put(batch[k], sharding) for k in keep if k in batch}


def predict_probs(
    model: nn.Module,
    params: Any,
    batches: Iterable[dict[str, np.ndarray]],
    mesh: jax.sharding.Mesh | None = None,
) -> np.ndarray:
    """Softmax probabilities for every unmasked example of ``batches``, in order (float64)."""
    mesh = mesh or _mesh()
    fn = _predict_fn(model)
    out = []
    for batch in batches:
        probs = np.asarray(fn(params, _put_batch(batch, mesh)), np.float64)
        out.append(probs[batch["mask"] > 0])
    return np.concatenate(out)


@functools.lru_cache(maxsize=8)
def _predict_fn(model: nn.Module):
    """One jitted prediction function per model (Linen modules hash by value), so every validation pass
    of a run reuses the same compiled code instead of tracing anew."""

    @jax.jit
    def fn(variables, batch):
        logits, _ = _forward(model, variables, batch, False, None)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    return fn


def evaluate(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Log loss (as Kaggle scored it), accuracy and top-5 accuracy."""
    return {
        "log_loss": M.log_loss(probs, labels),
        "accuracy": M.accuracy(probs, labels),
        "top5": M.top_k_accuracy(probs, labels, 5),
    }


def augment_ranges(cfg: Any) -> AugmentRanges:
    """An experiment's ``config.aug`` as :class:`~deepsea.data.AugmentRanges`."""
    return AugmentRanges(cfg.rotation, cfg.shift, cfg.zoom, cfg.shear, cfg.stretch, bool(cfg.flip))


def _checkpointers(workdir: str, keep: int):
    import orbax.checkpoint as ocp

    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    ckpt = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), options=opts)
    best = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "best"),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
    )
    return ckpt, best


def _save(manager: Any, step: int, state: TrainState) -> None:
    import orbax.checkpoint as ocp

    manager.save(step, args=ocp.args.StandardSave(_as_tree(state)), force=True)
    manager.wait_until_finished()


def _restore(manager: Any, step: int, template: TrainState) -> TrainState:
    import orbax.checkpoint as ocp

    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _as_tree(template))
    restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    return TrainState(**restored)


def _as_tree(state: TrainState) -> dict[str, Any]:
    tree = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
    if state.model_state:  # absent for models without batch statistics: checkpoints stay as they were
        tree["model_state"] = state.model_state
    return tree


def _resolve_data(config: Any) -> str:
    if config.data.path:
        return config.data.path
    from deepsea.data.synthetic import default_synthetic_dir

    return default_synthetic_dir(per_class=config.data.synthetic_per_class)


def _init_state(model: nn.Module, tx: optax.GradientTransformation, pp: Preprocess, seed: int) -> TrainState:
    channels = pp.channels * (1 + len(pp.extra_rotations))
    x = jnp.zeros((1, pp.size, pp.size, channels), jnp.float32)
    x2 = jnp.zeros((1, pp.second_size, pp.second_size, pp.channels), jnp.float32) if pp.second_size else None
    variables = dict(model.init(jax.random.key(seed), x, raw_size=jnp.ones((1, 2), jnp.float32), x2=x2))
    params = variables.pop("params")
    return TrainState(jnp.asarray(0, jnp.int32), params, tx.init(params), variables)


def _variables(state: TrainState) -> dict[str, Any]:
    return {"params": state.params, **state.model_state}


def _append_jsonl(path: str, record: dict[str, Any]) -> None:
    if jax.process_index():
        return
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_jsonl(path: str, step: int) -> None:
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [ln for ln in f if ln.strip() and json.loads(ln)["step"] <= step]
    with open(path, "w") as f:
        f.writelines(lines)


def plot_metrics(workdir: str) -> str:
    """Training loss, validation log loss and accuracy against steps, as ``workdir/metrics.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = os.path.join(workdir, "metrics.jsonl")
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            rows = [json.loads(ln) for ln in f if ln.strip()]
    tr = [r for r in rows if r["split"] == "train"]
    va = [r for r in rows if r["split"] == "validation"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if tr:
        ax1.plot([r["step"] for r in tr], [r["loss"] for r in tr], label="training loss (cross-entropy)", alpha=0.7)
    if va:
        ax1.plot([r["step"] for r in va], [r["log_loss"] for r in va], "o-", label="validation log loss")
        ax2.plot([r["step"] for r in va], [r["accuracy"] for r in va], "o-", label="validation accuracy")
        ax2.plot([r["step"] for r in va], [r["top5"] for r in va], "s--", label="validation top-5")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.set_xlabel("step")
    ax2.set_ylabel("accuracy")
    ax2.set_ylim(0, 1)
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.suptitle(os.path.basename(os.path.abspath(workdir)))
    fig.tight_layout()
    out = os.path.join(workdir, "metrics.png")
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def train(config: Any, workdir: str, stop_after: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Trains (or resumes) ``config`` in ``workdir``; returns the final and best validation metrics.

    ``stop_after``: stop after that step as if killed (for tests of resume).
    """
    from tqdm.auto import tqdm

    os.makedirs(workdir, exist_ok=True)
    lead = jax.process_index() == 0  # with several hosts, only the first writes files and shows progress
    progress = progress and lead
    data_root = _resolve_data(config)
    folder = scan_labelled_folder(data_root)
    ckpt, best_mgr = _checkpointers(workdir, config.train.keep_checkpoints)
    resuming = ckpt.latest_step() is not None
    if resuming:
        train_idx, val_idx, pp = load_run_data(workdir, folder)
    else:
        folder, _, skipped = check_images(folder, skip_bad=config.data.skip_bad_images, progress=progress)
        train_idx, val_idx = stratified_split(folder.labels, config.data.validation_fraction, config.data.split_seed)
        pp = Preprocess(
            size=config.data.size,
            rescale=Rescale.parse(config.data.rescale),
            extra_rotations=tuple(config.data.extra_rotations),
            second_size=config.data.second_size,
            second_rescale=Rescale.parse(config.data.second_rescale),
        )
        mean, std = compute_stats(folder.subset(train_idx), pp, config.data.stats_images, config.seed)
        pp = pp.with_stats(mean, std)
        if lead:
            save_run_data(
                workdir,
                folder,
                train_idx,
                val_idx,
                pp,
                config.data.split_seed,
                config.data.validation_fraction,
                skipped,
            )
        if lead:
            save_json(os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort()))
    num_classes = len(folder.classes)
    model = build_model(config.model, num_classes)
    steps = config.train.steps
    tx, schedule = make_optimizer(config.optim, steps)
    mesh = _mesh()
    if config.train.batch_size % mesh.size:
        raise ValueError(f"batch size {config.train.batch_size} is not divisible by the {mesh.size} devices")
    state = _init_state(model, tx, pp, config.seed)
    start = 0
    if resuming:
        start = int(ckpt.latest_step())
        state = _restore(ckpt, start, state)
        log.info("resuming %s from step %d", workdir, start)
    state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    _truncate_jsonl(metrics_path, start)
    best_path = os.path.join(workdir, "best.json")
    best = load_json(best_path) if os.path.exists(best_path) and resuming else None

    train_step = make_train_step(model, tx, schedule)
    rng = jax.random.key(config.seed)
    source = AugmentedSource(
        [folder.paths[i] for i in train_idx],
        folder.labels[train_idx],
        pp,
        augment_ranges(config.aug),
        seed=config.seed,
        cache=config.data.get("cache_images", False),
    )
    val_paths = [folder.paths[i] for i in val_idx]
    val_labels = folder.labels[val_idx]

    def run_eval(step: int) -> dict[str, Any]:
        batches = eval_batches(val_paths, val_labels, pp, config.train.eval_batch_size)
        res = evaluate(predict_probs(model, _variables(state), batches, mesh), val_labels)
        res.update(step=step, split="validation")
        _append_jsonl(metrics_path, res)
        return res

    last_val: dict[str, Any] | None = None
    bs = config.train.batch_size
    t_last, n_last = time.perf_counter(), 0
    with (
        train_batches(
            source,
            bs,
            workers=config.data.workers,
            start_step=start,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        ) as batches,
        tqdm(total=steps, initial=start, desc=config.get("name", "train"), unit="step", disable=not progress) as bar,
    ):
        for step in range(start, steps):
            batch = _put_batch(next(batches), mesh)
            state, m = train_step(state, batch, rng)
            done = step + 1
            loss = float(m["loss"])
            if not np.isfinite(loss) or loss > config.train.divergence_loss:
                ckpt.wait_until_finished()
                last = ckpt.latest_step()
                raise TrainingDiverged(
                    f"training loss is {loss} at step {done} (limit {config.train.divergence_loss}); stopped. "
                    f"The last good checkpoint is step {last} in {os.path.join(workdir, 'checkpoints')}; "
                    "lower optim.lr or check the data."
                )
            n_last += bs
            bar.update(1)
            if done % config.train.log_every == 0 or done == steps:
                now = time.perf_counter()
                rate = n_last / max(now - t_last, 1e-9)
                t_last, n_last = now, 0
                rec = {k: float(v) for k, v in m.items()}
                rec.update(step=done, split="train", images_per_s=rate)
                _append_jsonl(metrics_path, rec)
                bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{rate:.0f}", lr=f"{rec['lr']:.2g}")
            if done % config.train.eval_every == 0 or done == steps:
                last_val = run_eval(done)
                if best is None or last_val["log_loss"] < best["log_loss"]:
                    best = dict(last_val)
                    _save(best_mgr, done, state)
                    if lead:
                        save_json(best_path, best)
                if lead:
                    plot_metrics(workdir)
                bar.write(
                    f"step {done}: validation log loss {last_val['log_loss']:.4f}, "
                    f"accuracy {last_val['accuracy']:.4f}, top-5 {last_val['top5']:.4f}"
                )
            if done % config.train.checkpoint_every == 0 or done == steps:
                _save(ckpt, done, state)
            if stop_after is not None and done >= stop_after:
                break
    ckpt.close()
    best_mgr.close()
    return {"final": last_val, "best": best, "state": state, "workdir": workdir}


def restore_run(
    workdir: str, which: str = "best", orbit_average: str | None = None
) -> tuple[nn.Module, Any, Preprocess, list[str], Any]:
    """Loads a run's model, variables (``{"params": ...}``, ``best`` or ``latest``), preprocessing, classes, config.

    ``orbit_average`` (``"c4"``, ``"d4"`` or ``""`` for none) evaluates the trained network with another
    :class:`~deepsea.models.OrbitAverage` than it was trained with (the wrapper has no parameters of its own).
    """
    import ml_collections

    config = ml_collections.ConfigDict(load_json(os.path.join(workdir, "config.json")))
    classes = load_json(os.path.join(workdir, "classes.json"))
    pp = load_preprocess(workdir)
    model = build_model(config.model, len(classes))
    tx, _ = make_optimizer(config.optim, config.train.steps)
    template = _init_state(model, tx, pp, config.seed)
    ckpt, best = _checkpointers(workdir, config.train.keep_checkpoints)
    manager = best if which == "best" and best.latest_step() is not None else ckpt
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {workdir!r}")
    state = _restore(manager, step, template)
    config.restored_step = int(step)
    ckpt.close()
    best.close()
    variables = _variables(state)
    trained = config.model.get("orbit_average", "")
    if orbit_average is not None and orbit_average != trained:
        variables = {k: network_layers(v) for k, v in variables.items()}  # the wrapper has no parameters
        config.model.orbit_average = orbit_average
        model = build_model(config.model, len(classes))
        if orbit_average:
            variables = {k: {"inner": v} for k, v in variables.items()}
    return model, variables, pp, classes, config
