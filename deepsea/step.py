"""The training step and what it needs: the train state, example inputs, the optimizer and schedule.

:func:`create_train_state` and :func:`example_inputs` are the one way to build a model's variables and dummy
inputs from an experiment config: training, restoring, benchmarks, ``deepsea params`` and the tests use them.
:func:`make_train_step` is the pure jitted step ``(state, batch, rng) -> (state, metrics)``, donating its state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from deepsea.errors import UserError
from deepsea.models import build_model

__all__ = [
    "TrainSetup",
    "TrainState",
    "create_train_state",
    "drop_steps",
    "example_inputs",
    "example_losses",
    "forward",
    "make_optimizer",
    "make_train_step",
]

Batch = dict[str, jax.Array]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any = dataclasses.field(default_factory=dict)  # e.g. {"batch_stats": ...}; {} for most models

    def variables(self) -> dict[str, Any]:
        """The model's variables: ``{"params": ..., **model_state}``."""
        return {"params": self.params, **self.model_state}


def drop_steps(cfg: Any, total_steps: int) -> list[int]:
    """The steps at which a ``schedule="step"`` optimizer config (``config.optim``) drops its rate: ``decay_steps``
    entries below 1.0 are fractions of ``total_steps`` (so a time budget scales the schedule), others are steps."""
    return [round(b * total_steps) if isinstance(b, float) and b < 1 else int(b) for b in cfg.decay_steps]


def _schedule(cfg: Any, total_steps: int) -> optax.Schedule:
    kind = cfg.schedule
    if kind == "cosine":
        if cfg.warmup_steps >= total_steps:
            raise UserError(
                f"optim.warmup_steps={cfg.warmup_steps} must be smaller than the {total_steps} training steps"
            )
        return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.warmup_steps, total_steps, cfg.lr * cfg.end_factor)
    if kind != "step":
        raise UserError(f"unknown learning-rate schedule {kind!r}; expected 'step' or 'cosine'")
    boundaries: dict[int, float] = {}
    for step in drop_steps(cfg, total_steps):
        boundaries[step] = boundaries.get(step, 1.0) * cfg.decay_factor
    sched = optax.piecewise_constant_schedule(cfg.lr, boundaries)
    if cfg.warmup_steps:
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
    if cfg.grad_clip:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    if cfg.weight_decay:
        parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=kernels))
    if cfg.name == "sgd":
        parts.append(optax.sgd(sched, momentum=cfg.momentum, nesterov=True))
    elif cfg.name == "adam":
        parts.append(optax.adam(sched))
    else:
        raise UserError(f"unknown optimizer {cfg.name!r}; expected 'sgd' or 'adam'")
    return optax.chain(*parts), sched


def example_inputs(config: Any, batch_size: int = 1, seed: int | None = None) -> dict[str, np.ndarray]:
    """A batch of a model's inputs as the data pipeline makes them for ``config.data``: ``image`` (with the cp8
    copies in channels), ``image2`` (multiscale), ``raw_size`` and ``label``; zeros, or random with ``seed``."""
    data = config.data
    channels = data.channels
    size, second = data.size, data.second_size
    shapes = {"image": (batch_size, size, size, channels * (1 + len(data.extra_rotations)))}
    if second:
        shapes["image2"] = (batch_size, second, second, channels)
    rng = None if seed is None else np.random.default_rng(seed)
    batch = {
        k: np.zeros(s, np.float32) if rng is None else rng.standard_normal(s, np.float32) for k, s in shapes.items()
    }
    batch["raw_size"] = (
        np.full((batch_size, 2), 64, np.float32)
        if rng is None
        else rng.integers(20, 200, (batch_size, 2)).astype(np.float32)
    )
    batch["label"] = np.zeros(batch_size, np.int32)
    return batch


def forward(
    model: nn.Module, variables: Any, batch: Batch, train: bool, rng: jax.Array | None = None
) -> tuple[jax.Array, dict[str, Any]]:
    """Logits and, in training, the updated non-parameter collections (batch statistics; ``{}`` otherwise)."""
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


@dataclasses.dataclass(frozen=True)
class TrainSetup:
    """A model, its optimizer and schedule, and a fresh train state (abstract shapes with ``abstract=True``)."""

    model: nn.Module
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule
    state: TrainState


def create_train_state(
    config: Any, num_classes: int, *, steps: int | None = None, abstract: bool = False
) -> TrainSetup:
    """Builds ``config.model`` for ``num_classes``, its optimizer for ``steps`` (default ``config.train.steps``)
    and the initial state from ``config.seed``; ``abstract=True`` gives the state's shapes without computing it."""
    model = build_model(config.model, num_classes)
    tx, schedule = make_optimizer(config.optim, config.train.steps if steps is None else steps)
    if config.train.pretrained and config.train.init_from:
        raise UserError("train.pretrained and train.init_from cannot be used together: a run already has its layers")
    if config.train.pretrained or config.train.init_from:
        tx = _pretrained_groups(
            config, tx, make_optimizer(config.optim, config.train.steps if steps is None else steps)[0]
        )
    inputs = {k: jnp.asarray(v) for k, v in example_inputs(config).items()}

    def init() -> TrainState:
        variables = dict(
            model.init(
                jax.random.key(config.seed), inputs["image"], raw_size=inputs["raw_size"], x2=inputs.get("image2")
            )
        )
        params = variables.pop("params")
        return TrainState(jnp.asarray(0, jnp.int32), params, tx.init(params), variables)

    return TrainSetup(model, tx, schedule, jax.eval_shape(init) if abstract else jax.jit(init)())


def example_losses(
    logits: jax.Array,
    batch: Batch,
    distill_weight: float = 0.0,
    distill_temperature: float = 1.0,
    bootstrap: str = "",
    bootstrap_beta: float = 0.95,
) -> jax.Array:
    """Each example's loss: cross-entropy against its ``target`` probabilities (soft targets: pseudo-labels) or,
    without them, its integer ``label``; with a ``teacher`` (log-probabilities) in the batch, Hinton's
    distillation mix ``(1 - w) * that + w * T^2 * cross-entropy(softmax(teacher / T), softmax(logits / T))``.

    ``bootstrap`` (Reed et al. 2015, against noisy labels): the target becomes ``beta * label + (1 - beta) * q``
    with ``q`` the network's own prediction (``"soft"``) or its top class one-hot (``"hard"``); the paper used
    beta 0.95 (soft) and 0.8 (hard)."""
    logits = logits.astype(jnp.float32)
    k = logits.shape[-1]
    target = batch["target"].astype(jnp.float32) if "target" in batch else jax.nn.one_hot(batch["label"], k)
    if bootstrap:
        if bootstrap not in ("soft", "hard"):
            raise UserError(f"train.bootstrap={bootstrap!r}: expected 'soft', 'hard' or '' (none)")
        q = jax.nn.softmax(logits, axis=-1)
        own = q if bootstrap == "soft" else jax.nn.one_hot(jnp.argmax(logits, axis=-1), k)
        target = bootstrap_beta * target + (1.0 - bootstrap_beta) * own
    if "target" in batch or bootstrap:
        ce = optax.softmax_cross_entropy(logits, target)
    else:
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    if "teacher" in batch:
        t = distill_temperature
        soft = jax.nn.softmax(batch["teacher"].astype(jnp.float32) / t, axis=-1)
        kd = optax.softmax_cross_entropy(logits / t, soft) * t**2  # T^2 keeps the gradients' scale (Hinton)
        ce = (1.0 - distill_weight) * ce + distill_weight * kd
    return ce


def _pretrained_groups(config: Any, rest: optax.GradientTransformation, base: optax.GradientTransformation) -> Any:
    """Two parameter groups (``optax.multi_transform``): the layers something else initialised (the convolutions,
    ``conv*``, from a pre-trained autoencoder; or every layer but the classifier from a run, ``train.init_from``)
    update not at all for ``train.pretrained_frozen_steps`` steps, then at a rate that ramps up over
    ``train.pretrained_warmup_steps`` to ``optim.pretrained_lr_multiplier`` times the others'; the rest as usual."""
    from deepsea.transfer import is_backbone

    frozen, multiplier = config.train.pretrained_frozen_steps, config.optim.pretrained_lr_multiplier
    warmup = config.train.pretrained_warmup_steps

    def factor(step: jax.Array) -> jax.Array:
        ramp = jnp.clip((step - frozen + 1) / warmup, 0.0, 1.0) if warmup else 1.0
        return jnp.where(step < frozen, 0.0, multiplier * ramp)

    scale = optax.scale_by_schedule(factor)

    def labels(params: Any) -> Any:
        def label(path: tuple, _: Any) -> str:
            names = [getattr(k, "key", "") for k in path]
            if config.train.init_from:
                return "pretrained" if is_backbone(names) else "rest"
            return "pretrained" if any(str(n).startswith("conv") for n in names) else "rest"

        return jax.tree_util.tree_map_with_path(label, params)

    return optax.multi_transform({"pretrained": optax.chain(base, scale), "rest": rest}, labels)


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    distill_weight: float = 0.0,
    distill_temperature: float = 1.0,
    accumulate: int = 1,
    bootstrap: str = "",
    bootstrap_beta: float = 0.95,
    inputs: Callable[[Batch], Batch] | None = None,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """``(state, batch, rng) -> (state, metrics)``, jitted, donating the state.  The loss is
    :func:`example_losses` averaged with the batch's per-example ``weight`` where it has them.  ``inputs``: makes
    the network's inputs from the batch inside the step (``data.augment_on = "device"``: the warp of uint8
    images, :func:`deepsea.data.device_warp.warp_inputs`).

    ``accumulate = K``: the batch is ``K`` micro-batches, whose gradients (of their mean losses) are computed one
    after another (``lax.scan``: the memory of one) and averaged for one update, the large batch's gradient to
    float rounding; batch statistics are updated micro-batch by micro-batch, and each has its own dropout key."""
    if accumulate < 1:
        raise UserError(f"train.accumulate must be >= 1, got {accumulate}")

    def grads_of(params: Any, batch: Batch, dropout_rng: jax.Array, model_state: Any):
        def loss_fn(params):
            logits, new_state = forward(model, {"params": params, **model_state}, batch, True, dropout_rng)
            logits = logits.astype(jnp.float32)
            ce = example_losses(logits, batch, distill_weight, distill_temperature, bootstrap, bootstrap_beta)
            # per-example loss weights (class weights, pseudo-label weights) where the batch has them
            ce = jnp.mean(ce * batch["weight"]) if "weight" in batch else jnp.mean(ce)
            return ce, (logits, new_state)

        (loss, (logits, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        correct = jnp.sum(jnp.argmax(logits, -1) == batch["label"])
        return loss, correct, grads, dict(new_state)

    def step(state: TrainState, batch: Batch, rng: jax.Array):
        if inputs is not None:
            batch = inputs(batch)
        dropout_rng = jax.random.fold_in(rng, state.step)
        n = batch["label"].shape[0]
        if accumulate == 1:
            loss, correct, grads, model_state = grads_of(state.params, batch, dropout_rng, state.model_state)
        else:
            if n % accumulate:
                raise UserError(f"a batch of {n} does not split into train.accumulate={accumulate} micro-batches")
            micro = jax.tree.map(lambda a: a.reshape(accumulate, n // accumulate, *a.shape[1:]), batch)
            zeros = jax.tree.map(jnp.zeros_like, state.params)

            def body(carry, xs):
                loss_sum, correct_sum, grad_sum, model_state = carry
                mb, i = xs
                loss, correct, grads, model_state = grads_of(
                    state.params, mb, jax.random.fold_in(dropout_rng, i), model_state
                )
                grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
                return (loss_sum + loss, correct_sum + correct, grad_sum, model_state), None

            init = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32), zeros, dict(state.model_state))
            (loss, correct, grads, model_state), _ = jax.lax.scan(body, init, (micro, jnp.arange(accumulate)))
            loss = loss / accumulate
            grads = jax.tree.map(lambda g: g / accumulate, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "accuracy": correct / n,
            "grad_norm": optax.tree.norm(grads),
            "lr": jnp.asarray(schedule(state.step), jnp.float32),
        }
        return TrainState(state.step + 1, params, opt_state, model_state), metrics

    return jax.jit(step, donate_argnums=0)
