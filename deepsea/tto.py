"""Test-time transform optimisation (the seed tried it and found no gain): per image, gradient steps on the affine
parameters of the input's warp to make the prediction more (or less) confident, within the TTA ranges.

The warp is :mod:`deepsea.data.device_warp` (the training warp in JAX, differentiable in its parameters), so a
run's network predicts each image through it exactly as it predicts through the SciPy warp (to float rounding)
before the first step.  Every image starts from the identity transform (or from each of the first ``starts`` TTA
transforms, keeping the best by the objective); Adam moves the rotation, shifts, log zoom, shear and log stretch
for ``steps`` steps, clipped to the run's TTA ranges; the mirror stays as it started.

The seed's other try: a network that predicts the transform for another.  :class:`TransformNet` looks at an
image's plain patch and gives the parameters of its warp within the TTA ranges (starting at the identity: its last
layer starts at zero); :func:`train_transform_net` trains it on a run's training images to lower the frozen run's
loss on the warped images (the gradient flows through the run's network and the warp into it), and
:func:`transform_net_probs` predicts through it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from deepsea.data import device_warp as dw
from deepsea.data.pipeline import read_input
from deepsea.data.transforms import AugmentParams
from deepsea.errors import UserError

__all__ = ["TTOSettings", "TransformNet", "optimised_probs", "train_transform_net", "transform_net_probs"]

Objective = Literal["max", "min"]


@dataclasses.dataclass(frozen=True)
class TTOSettings:
    """How far and how the transform moves: ``steps`` Adam steps of rate ``lr`` on the parameters (degrees,
    pixels and log factors), to maximise (``max``) or minimise (``min``) the top probability."""

    steps: int = 10
    lr: float = 0.5
    objective: Objective = "max"
    batch_size: int = 32


_CANVAS_STEP = 64  # canvas sides are rounded up to a multiple of this: few shapes, few compilations


def _canvas(images: Sequence[np.ndarray], batch: int) -> tuple[np.ndarray, np.ndarray]:
    """The images padded into one canvas of ``batch`` slots (the rest 1x1 blanks), its sides rounded up so that
    batches of similar images share one compiled program."""
    side = -(-max(max(im.shape[:2]) for im in images) // _CANVAS_STEP) * _CANVAS_STEP
    canvas = np.zeros((batch, side, side), np.float32)
    sizes = np.ones((batch, 2), np.int32)
    for k, im in enumerate(images):
        canvas[k, : im.shape[0], : im.shape[1]] = im
        sizes[k] = im.shape[:2]
    return canvas, sizes


def _warp_and_classify(run: Any):
    """``(patches, classify)``: ``patches(canvas, sizes, params)`` warps each image with its parameters as the
    run's preprocessing does and normalises (``(B, S, S, 1)``); ``classify(variables, patches, sizes)`` is the
    run's network's logits for them."""
    pp = run.preprocess
    if pp.channels != 1 or pp.extra_rotations or pp.second_size or pp.rescale.kind not in ("max_side", "factor"):
        raise UserError(
            f"{run.workdir}: transform optimisation handles grayscale runs with a max_side or factor rescale"
        )
    from deepsea.step import forward

    def patches(canvas, sizes, params):
        x = 1.0 - canvas if pp.inverted else canvas

        def one(image, size, p):
            h, w = size[0].astype(jnp.float32), size[1].astype(jnp.float32)
            scale = pp.rescale.value / jnp.maximum(h, w) if pp.rescale.kind == "max_side" else pp.rescale.value
            forward = dw.affine_matrix((h, w), pp.size, scale, p)
            return dw.warp(image, forward, pp.size, pp.fill, (size[0], size[1]))

        warped = jax.vmap(one)(x, sizes, params)[..., None]
        return (warped - pp.mean) / pp.std

    def classify(variables, images, sizes):
        batch = {"image": images, "raw_size": sizes.astype(jnp.float32) * (pp.pixel_size or 1.0)}
        logits, _ = forward(run.model, variables, batch, False)
        return logits.astype(jnp.float32)

    return patches, classify


def _forward_fn(run: Any, settings: TTOSettings):
    """``(variables, canvas, sizes, params) -> (probs, objective)``, jitted: warp each image with its parameters
    as the run's preprocessing does, normalise, predict."""
    patches, classify = _warp_and_classify(run)
    sign = 1.0 if settings.objective == "max" else -1.0

    def predict(variables, canvas, sizes, params):
        probs = jax.nn.softmax(classify(variables, patches(canvas, sizes, params), sizes), axis=-1)
        return probs, sign * jnp.max(probs, axis=-1)

    return jax.jit(predict)


def _clip(p: dw.WarpParams, ranges: Any) -> dw.WarpParams:
    lz, ls = np.log(ranges.zoom), np.log(ranges.stretch)
    return p._replace(
        shift_row=jnp.clip(p.shift_row, -ranges.shift, ranges.shift),
        shift_col=jnp.clip(p.shift_col, -ranges.shift, ranges.shift),
        zoom=jnp.exp(jnp.clip(jnp.log(p.zoom), -lz, lz)),
        shear=jnp.clip(p.shear, -ranges.shear, ranges.shear),
        stretch=jnp.exp(jnp.clip(jnp.log(p.stretch), -ls, ls)),
    )


def optimised_probs(
    run: Any,
    paths: Sequence[str],
    settings: TTOSettings = TTOSettings(),
    starts: Sequence[AugmentParams] = (AugmentParams(),),
    progress: bool = True,
) -> np.ndarray:
    """``(N, K)`` probabilities of ``run`` (a restored run) for ``paths`` after optimising each image's transform
    from each of ``starts`` (the best start by the objective is kept)."""
    from tqdm.auto import tqdm

    predict = _forward_fn(run, settings)
    ranges = run.tta_ranges
    tx = optax.adam(settings.lr)

    variables = run.variables

    def objective(params, canvas, sizes):
        _, value = predict(variables, canvas, sizes, params)
        return jnp.sum(value)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, canvas, sizes):
        grads = jax.grad(objective)(params, canvas, sizes)
        grads = jax.tree.map(lambda g: -g, grads)  # ascend the objective
        grads = grads._replace(flip=jnp.zeros_like(grads.flip))  # the mirror stays
        updates, opt_state = tx.update(grads, opt_state, params)
        return _clip(optax.apply_updates(params, updates), ranges), opt_state

    out = []
    for start in tqdm(range(0, len(paths), settings.batch_size), desc="TTO", disable=not progress):
        part = paths[start : start + settings.batch_size]
        images = [read_input(p, run.preprocess).astype(np.float32) / 255.0 for p in part]
        canvas, sizes = _canvas(images, settings.batch_size)
        canvas, sizes = jnp.asarray(canvas), jnp.asarray(sizes)
        best_probs, best_value = None, None
        for s in starts:
            params = dw.WarpParams.from_params([s] * settings.batch_size)
            opt_state = tx.init(params)
            for _ in range(settings.steps):
                params, opt_state = step(params, opt_state, canvas, sizes)
            probs, value = predict(variables, canvas, sizes, params)
            probs, value = np.array(probs[: len(part)]), np.array(value[: len(part)])  # writable copies
            if best_probs is None:
                best_probs, best_value = probs, value
            else:
                better = value > best_value
                best_probs[better], best_value[better] = probs[better], value[better]
        out.append(best_probs)
    return np.concatenate(out)


class TransformNet(nn.Module):
    """A small convnet from a plain patch ``(B, S, S, 1)`` to six numbers in (-1, 1) per image: rotation, the two
    shifts, log zoom, shear and log stretch as fractions of their ranges (:func:`_unit_to_params`); its last layer
    starts at zero, so an untrained net predicts the identity."""

    features: Sequence[int] = (16, 32, 64)
    hidden: int = 64

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for f in self.features:
            x = nn.leaky_relu(nn.Conv(f, (3, 3))(x), 1.0 / 3.0)
            x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.leaky_relu(nn.Dense(self.hidden)(jnp.mean(x, axis=(1, 2))), 1.0 / 3.0)
        return jnp.tanh(nn.Dense(6, kernel_init=nn.initializers.zeros)(x))


def _unit_to_params(u: jax.Array, ranges: Any) -> dw.WarpParams:
    """``(B, 6)`` fractions of the ranges -> warp parameters: rotation up to half of ``ranges.rotation`` either
    way, shifts and shear up to theirs, zoom and stretch log-symmetric within theirs; no mirror."""
    return dw.WarpParams(
        rotation=u[:, 0] * min(float(ranges.rotation), 360.0) / 2.0,
        shift_row=u[:, 1] * ranges.shift,
        shift_col=u[:, 2] * ranges.shift,
        zoom=jnp.exp(u[:, 3] * np.log(ranges.zoom)),
        shear=u[:, 4] * ranges.shear,
        stretch=jnp.exp(u[:, 5] * np.log(ranges.stretch)),
        flip=jnp.zeros_like(u[:, 0]),
    )


def _transform_net_fns(run: Any, net: TransformNet):
    """``predict(net_params, canvas, sizes) -> logits`` of the run through the net's warp, and its identity
    parameters for a batch size."""
    patches, classify = _warp_and_classify(run)
    ranges = run.tta_ranges

    def predict(net_params, canvas, sizes):
        identity = dw.WarpParams(*(jnp.broadcast_to(v, (canvas.shape[0],)) for v in dw.WarpParams.identity()))
        plain = patches(canvas, sizes, identity)
        params = _unit_to_params(net.apply(net_params, jax.lax.stop_gradient(plain)), ranges)
        return classify(run.variables, patches(canvas, sizes, params), sizes)

    return predict


def _decoded(run: Any, paths: Sequence[str], cache: dict[str, np.ndarray]) -> list[np.ndarray]:
    for p in paths:
        if p not in cache:
            cache[p] = read_input(p, run.preprocess).astype(np.float32) / 255.0
    return [cache[p] for p in paths]


def train_transform_net(
    run: Any,
    paths: Sequence[str],
    labels: np.ndarray,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    net: TransformNet | None = None,
    progress: bool = True,
) -> tuple[TransformNet, Any, list[float]]:
    """Trains ``net`` (Adam at ``lr``, ``steps`` batches drawn from ``paths``) so that the run, frozen, classifies
    the images warped by the net's parameters with the least cross-entropy against ``labels`` (``net``: default
    :class:`TransformNet`); returns the net, its parameters and the loss of every step."""
    from tqdm.auto import tqdm

    if steps < 1 or not len(paths):
        raise UserError(f"a transform net needs steps >= 1 and images to learn from ({steps} steps, {len(paths)})")
    net = net or TransformNet()
    predict = _transform_net_fns(run, net)
    pp = run.preprocess
    params = jax.jit(net.init)(jax.random.key(seed), jnp.zeros((1, pp.size, pp.size, 1), jnp.float32))
    tx = optax.adam(lr)
    opt_state = tx.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, canvas, sizes, labels):
        def loss_fn(params):
            logits = predict(params, canvas, sizes)
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng, cache, losses = np.random.default_rng(seed), {}, []
    labels = np.asarray(labels, np.int32)
    for _ in tqdm(range(steps), desc="transform net", unit="step", disable=not progress):
        pick = rng.choice(len(paths), size=min(batch_size, len(paths)), replace=False)
        canvas, sizes = _canvas(_decoded(run, [paths[i] for i in pick], cache), len(pick))
        params, opt_state, loss = step(params, opt_state, jnp.asarray(canvas), jnp.asarray(sizes), labels[pick])
        losses.append(loss)  # read back once at the end: no host sync per step
    return net, params, [float(v) for v in jax.device_get(losses)]


def transform_net_probs(
    run: Any, net: TransformNet, net_params: Any, paths: Sequence[str], batch_size: int = 32, progress: bool = True
) -> np.ndarray:
    """``(N, K)`` probabilities of ``run`` for ``paths``, each image warped by the parameters ``net`` predicts."""
    from tqdm.auto import tqdm

    predict = jax.jit(_transform_net_fns(run, net))
    out = []
    for start in tqdm(range(0, len(paths), batch_size), desc="transform net", disable=not progress):
        part = paths[start : start + batch_size]
        canvas, sizes = _canvas(_decoded(run, part, {}), batch_size)
        logits = predict(net_params, jnp.asarray(canvas), jnp.asarray(sizes))
        out.append(np.asarray(jax.nn.softmax(logits, axis=-1))[: len(part)])
    return np.concatenate(out)
