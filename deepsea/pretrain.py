"""Convolutional autoencoder pre-training of a RollNet's convolutional stack (the seed tried it; it regularised
strongly but did not beat TTA-averaged baselines).

The decoder is tied to the encoder: it runs the transpose of every operation of the stack in reverse order, with
the encoder's own parameters.  The transpose of a convolution is the transposed convolution with the same
kernel (one parameter, not a copy), of a max pooling the unpooling through its switches (each value back to the
position of its window's maximum), and of the slice and conv roll their adjoints; each transposed convolution
but the last (which outputs the image) has its own bias and the leaky ReLU.  All of them are computed as
:func:`jax.vjp` of the encoder's linear maps, so the decoder cannot drift from the encoder.

:func:`pretrain` trains it on images without labels (a run's training images or an unlabelled folder): greedily,
one convolution at a time (only its parameters and its decoder bias move, the reconstruction goes through every
layer below), then the whole stack jointly; it writes ``params.npz`` (the convolutions, named as in the
classifier), ``metrics.jsonl`` and ``reconstruction.png``, and resumes from its last checkpoint.  A classifier
starts from it with ``train.pretrained = DIR``; ``train.pretrained_frozen_steps`` keeps those layers frozen for
the first steps and ``optim.pretrained_lr_multiplier`` scales their learning rate after (``optax.multi_transform``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from deepsea.errors import UserError

__all__ = ["PretrainResult", "autoencoder_layers", "load_pretrained", "pretrain", "reconstruct"]


def autoencoder_layers(model_cfg: Any, num_classes: int = 2) -> tuple[Any, list[tuple[str, ...]]]:
    """The RollNet behind ``model_cfg`` and its convolutional stack as operations: ``("slice",)``,
    ``("conv", name)``, ``("pool",)``, ``("roll",)``, in the order the network applies them."""
    from deepsea.models import RollNet, build_model

    model = build_model(model_cfg, num_classes)
    net = getattr(model, "inner", model)
    if not isinstance(net, RollNet):
        raise UserError(
            f"autoencoder pre-training needs a RollNet (rollnet, plain, convroll4), got {type(net).__name__}"
        )
    if net.batch_norm or net.rotated_inputs != 1:
        raise UserError("autoencoder pre-training supports RollNets without batch norm and rotated inputs")
    ops: list[tuple[str, ...]] = [("slice",)] if net.symmetry is not None else []
    for i, stage in enumerate(net.stages):
        for j in range(len(stage)):
            ops.append(("conv", f"conv{i}_{j}"))
        ops.append(("pool",))
        if net.symmetry is not None and net.conv_roll:
            ops.append(("roll",))
    return net, ops


def _prefix(ops: list[tuple[str, ...]], depth: int) -> list[tuple[str, ...]]:
    """The operations up to the ``depth``-th convolution, with the pooling (and roll) that close its stage when
    it is the stage's last."""
    out, convs = [], 0
    for op in ops:
        if op[0] == "conv":
            if convs == depth:
                break
            convs += 1
        out.append(op)
    return out


def reconstruct(net: Any, ops: list[tuple[str, ...]], params: dict, x: jax.Array, depth: int) -> jax.Array:
    """The tied autoencoder of the first ``depth`` convolutions: ``x (B, H, W, C)`` encoded and decoded back
    to its shape.  ``params``: ``{conv name: {"kernel", "bias"}, "decoder": {conv name: bias}}``."""
    from deepsea import ops as gops
    from deepsea.backends import conv, max_pool
    from deepsea.layers import leaky_relu

    g = net.symmetry
    slope = net.negative_slope
    h = x.astype(jnp.dtype(net.precision))
    stack: list[tuple[str, Callable, str]] = []
    for op in _prefix(ops, depth):
        if op[0] == "conv":
            kernel, bias = params[op[1]]["kernel"], params[op[1]]["bias"]
            y, vjp = jax.vjp(lambda z, k=kernel: conv(z, k.astype(z.dtype), None, implementation="xla"), h)
            h = leaky_relu(y + bias.astype(y.dtype), slope)
        elif op[0] == "pool":
            h, vjp = jax.vjp(lambda z: max_pool(z, implementation="slices"), h)
        elif op[0] == "roll":
            h, vjp = jax.vjp(lambda z: gops.group_conv_roll(z, g), h)
        else:
            h, vjp = jax.vjp(lambda z: gops.group_slice(z, g), h)
        stack.append((op[0], vjp, op[-1]))
    z = h
    first = next(i for i, (kind, _, _) in enumerate(stack) if kind == "conv")
    for i in range(len(stack) - 1, -1, -1):
        kind, vjp, name = stack[i]
        (z,) = vjp(z)
        if kind == "conv":
            z = z + params["decoder"][name].astype(z.dtype)
            if i != first:  # the last transposed convolution outputs the image: linear
                z = leaky_relu(z, slope)
    return z.astype(jnp.float32)


def _init_params(net: Any, ops: list[tuple[str, ...]], pp: Any, seed: int) -> dict:
    """The classifier's initial convolutions (its initialisers) and zero decoder biases."""
    from deepsea.models import network_layers

    x = jnp.zeros((1, pp.size, pp.size, pp.channels), jnp.float32)
    variables = jax.jit(net.init)(jax.random.key(seed), x, raw_size=jnp.ones((1, 2), jnp.float32))
    layers = network_layers(variables["params"])
    convs = [op[1] for op in ops if op[0] == "conv"]
    params = {name: dict(layers[name]) for name in convs}
    params["decoder"] = {name: jnp.zeros((layers[name]["kernel"].shape[2],), jnp.float32) for name in convs}
    return params


@dataclasses.dataclass(frozen=True)
class PretrainResult:
    workdir: str
    steps: int
    final_mse: float


def _mask(params: dict, names: set[str] | None) -> dict:
    """True where a parameter trains: every one (``names`` None), or those of the convolutions in ``names`` and
    their decoder biases."""
    if names is None:
        return jax.tree.map(lambda _: True, params)
    return {
        k: (jax.tree.map(lambda _, k=k: k in names, v) if k != "decoder" else {n: n in names for n in v})
        for k, v in params.items()
    }


@functools.lru_cache(maxsize=8)
def _step_fn(net: Any, ops: tuple[tuple[str, ...], ...], lr: float) -> Callable:
    """The jitted pre-training step ``(params, opt_state, images, depth, layer) -> (params, opt_state, mse)``:
    only ``layer``'s parameters move (all of them for None).  One per network, so resuming reuses its programs."""
    import optax

    tx = optax.adam(lr)

    @functools.partial(jax.jit, static_argnums=(3, 4), donate_argnums=(0, 1))
    def step(params: dict, opt_state: Any, x: jax.Array, depth: int, layer: str | None):
        def loss(p: dict) -> jax.Array:
            return jnp.mean((reconstruct(net, list(ops), p, x, depth) - x) ** 2)

        value, grads = jax.value_and_grad(loss)(params)
        trains = _mask(params, None if layer is None else {layer})
        grads = jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), grads, trains)
        updates, opt_state = tx.update(grads, opt_state, params)
        updates = jax.tree.map(lambda u, t: u if t else jnp.zeros_like(u), updates, trains)
        return optax.apply_updates(params, updates), opt_state, value

    return step


def pretrain(
    config: Any, workdir: str, images: str | None = None, progress: bool = True, stop_after: int | None = None
) -> PretrainResult:
    """Pre-trains ``config.model``'s convolutional stack as a tied autoencoder in ``workdir`` (see the module's
    docstring) on ``images`` (any folder tree, labels unused) or, if None, the experiment's training data.
    ``stop_after``: stop after that step as if killed (for tests of resume)."""
    import optax
    from tqdm.auto import tqdm

    from deepsea import rundir
    from deepsea.data import AugmentedSource, AugmentRanges, Preprocess, compute_stats, train_batches
    from deepsea.data.folders import ImageFolder
    from deepsea.data.sources import list_images, resolve_data

    cfg = config.pretrain
    root = images or resolve_data(config)
    rel = list_images(root)
    paths = [os.path.join(root, r) for r in rel]
    net, ops = autoencoder_layers(config.model)
    convs = [op[1] for op in ops if op[0] == "conv"]
    os.makedirs(workdir, exist_ok=True)
    pp_path = os.path.join(workdir, "preprocess.json")
    if os.path.exists(pp_path):
        pp = rundir.load_preprocess(workdir)
    else:
        pp = Preprocess.from_config(config.data)
        folder = ImageFolder(root, tuple(paths), None, ())
        pp = pp.with_stats(*compute_stats(folder, pp, config.data.stats_images, config.seed))
        rundir.save_json(pp_path, rundir.preprocess_to_dict(pp))
    phases = [(name, cfg.greedy_steps) for name in convs] + [("joint", cfg.joint_steps)]
    edges = np.cumsum([n for _, n in phases])  # the step at which each phase ends
    total = int(edges[-1])
    params = _init_params(net, ops, pp, config.seed)
    tx = optax.adam(cfg.lr)
    step = _step_fn(net, tuple(ops), cfg.lr)
    opt_state, start = tx.init(params), 0
    ckpt = os.path.join(workdir, "checkpoint.npz")
    if os.path.exists(ckpt):
        with np.load(ckpt) as f:
            start = int(f["step"])
            leaves = [f[f"arr_{i}"] for i in range(len(f.files) - 1)]
        params, opt_state = jax.tree.unflatten(jax.tree.structure((params, opt_state)), leaves)
        rundir.truncate_metrics(workdir, start)
    source = AugmentedSource(paths, None, pp, AugmentRanges.from_config(config.aug), seed=config.seed)
    mse = float("nan")
    with (
        train_batches(source, config.train.batch_size, workers=config.data.workers, start_step=start) as batches,
        tqdm(total=total, initial=start, desc="pretrain", unit="step", disable=not progress) as bar,
    ):
        t0 = time.perf_counter()
        for s in range(start, total):
            phase = int(np.searchsorted(edges, s, side="right"))
            name = phases[phase][0]
            if s == 0 or s in edges:  # a phase starts: its layers get a fresh Adam (moments and bias correction)
                opt_state = tx.init(params)
            depth = len(convs) if name == "joint" else convs.index(name) + 1
            params, opt_state, value = step(
                params, opt_state, jnp.asarray(next(batches)["image"]), depth, None if name == "joint" else name
            )
            bar.update(1)
            done = s + 1
            if done % cfg.log_every == 0 or done == total or done in edges:
                mse = float(value)
                rundir.append_metrics(
                    workdir,
                    {"step": done, "split": "train", "phase": name, "depth": depth, "mse": mse,
                     "seconds": time.perf_counter() - t0},
                )  # fmt: skip
                bar.set_postfix(phase=name, mse=f"{mse:.4f}")
            if done % cfg.checkpoint_every == 0 or done == total:
                leaves = jax.tree.leaves((params, opt_state))
                tmp = f"{ckpt}.tmp.npz"
                np.savez(tmp, *[np.asarray(v) for v in leaves], step=np.int64(done))
                os.replace(tmp, ckpt)
            if stop_after is not None and done >= stop_after:
                return PretrainResult(workdir, done, mse)
    out = {name: {k: np.asarray(v) for k, v in params[name].items()} for name in convs}
    tmp = os.path.join(workdir, ".params.tmp.npz")
    np.savez(tmp, **{f"{n}/{k}": v for n, d in out.items() for k, v in d.items()})
    os.replace(tmp, os.path.join(workdir, "params.npz"))
    rundir.save_json(
        os.path.join(workdir, "pretrain.json"),
        {"model": json.loads(config.model.to_json_best_effort()), "images": os.path.abspath(root), "steps": total},
    )
    from deepsea.plots import plot_reconstruction

    plot_reconstruction(workdir)
    return PretrainResult(workdir, total, mse)


def load_pretrained(path: str, params: Any) -> Any:
    """``params`` (a classifier's, possibly under an orbit average's ``inner``) with its convolutions replaced by
    those pre-trained in the folder ``path``; a missing layer or another shape is an error naming it."""
    from deepsea.models import network_layers

    file = os.path.join(path, "params.npz")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no pre-trained parameters at {file!r} (deepsea pretrain writes them)")
    with np.load(file) as f:
        saved = {k: f[k] for k in f.files}
    layers = dict(network_layers(params))
    names = sorted({k.split("/")[0] for k in saved})
    for name in names:
        if name not in layers:
            raise UserError(f"{file}: layer {name!r} is not in this model (its layers: {sorted(layers)[:8]}...)")
        new = dict(layers[name])
        shapes = {k: None if saved.get(f"{name}/{k}") is None else saved[f"{name}/{k}"].shape for k in sorted(new)}
        wrong = [f"{name}/{k} has shape {got}, the model's is {np.shape(new[k])}"
                 for k, got in shapes.items() if got != np.shape(new[k])]  # fmt: skip
        if wrong:
            raise UserError(f"{file}: " + "; ".join(wrong))
        layers[name] = {k: jnp.asarray(saved[f"{name}/{k}"]) for k in new}
    out = layers
    inner = params
    while set(inner) == {"inner"}:  # rebuild the orbit average's nesting
        out, inner = {"inner": out}, inner["inner"]
    return out
