"""Test-time transform optimisation (the seed tried it and found no gain): per image, gradient steps on the affine
parameters of the input's warp to make the prediction more (or less) confident, within the TTA ranges.

The warp is :mod:`deepsea.data.device_warp` (the training warp in JAX, differentiable in its parameters), so a
run's network predicts each image through it exactly as it predicts through the SciPy warp (to float rounding)
before the first step.  Every image starts from the identity transform (or from each of the first ``starts`` TTA
transforms, keeping the best by the objective); Adam moves the rotation, shifts, log zoom, shear and log stretch
for ``steps`` steps, clipped to the run's TTA ranges; the mirror stays as it started.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from deepsea.data import device_warp as dw
from deepsea.data.pipeline import read_input
from deepsea.data.transforms import AugmentParams
from deepsea.errors import UserError

__all__ = ["TTOSettings", "optimised_probs"]

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


def _forward_fn(run: Any, settings: TTOSettings):
    """``(variables, canvas, sizes, params) -> (probs, objective)``, jitted: warp each image with its parameters
    as the run's preprocessing does, normalise, predict."""
    pp = run.preprocess
    if pp.channels != 1 or pp.extra_rotations or pp.second_size or pp.rescale.kind not in ("max_side", "factor"):
        raise UserError(
            f"{run.workdir}: transform optimisation handles grayscale runs with a max_side or factor rescale"
        )
    from deepsea.step import forward

    sign = 1.0 if settings.objective == "max" else -1.0

    def predict(variables, canvas, sizes, params):
        x = 1.0 - canvas if pp.inverted else canvas

        def one(image, size, p):
            h, w = size[0].astype(jnp.float32), size[1].astype(jnp.float32)
            scale = pp.rescale.value / jnp.maximum(h, w) if pp.rescale.kind == "max_side" else pp.rescale.value
            forward = dw.affine_matrix((h, w), pp.size, scale, p)
            return dw.warp(image, forward, pp.size, pp.fill, (size[0], size[1]))

        warped = jax.vmap(one)(x, sizes, params)[..., None]
        batch = {
            "image": (warped - pp.mean) / pp.std,
            "raw_size": sizes.astype(jnp.float32) * (pp.pixel_size or 1.0),
        }
        logits, _ = forward(run.model, variables, batch, False)
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
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
