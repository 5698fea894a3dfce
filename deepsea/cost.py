"""What a network costs per image, and sizing one network to another's cost.

FLOPs are counted analytically from the traced forward pass: 2 per multiply-add of every convolution and matrix
product (elementwise work, pooling and the symmetry ops' data movement are not FLOPs).  A training step costs
about 3 forward passes (forward, input gradient, weight gradient).  Training and prediction differ for a plain
network with an orbit average, which trains on one copy of each image and predicts on its ``V`` copies.

Equal cost is what makes a comparison between a plain and a rolled network fair: a C4 roll network whose per-view
width is a quarter of a plain one's does about the same multiply-adds per image in its rolled layers (4 views x
``4C x C`` against ``K x K`` with ``K = 4C``) and fewer in the others, so its width is searched, not guessed.
:func:`match_width` searches ``model.width`` for any monotone cost: FLOPs (:func:`flops_per_image`) or a measured
step time (``deepsea bench EXP --match-time OTHER``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.extend
import numpy as np

__all__ = ["Cost", "count_flops", "flops_per_image", "match_width"]


def count_flops(fn: Callable[..., Any], *args: Any) -> int:
    """FLOPs (2 per multiply-add) of the convolutions and matrix products ``fn(*args)`` traces to."""
    return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def _jaxpr_flops(jaxpr: Any) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            out = eqn.outvars[0].aval
            rhs = eqn.invars[1].aval
            out_features = rhs.shape[eqn.params["dimension_numbers"].rhs_spec[0]]
            # a grouped convolution's kernel holds in_features / groups inputs per output: counted as it is
            total += 2 * int(np.prod(out.shape)) * int(np.prod(rhs.shape)) // out_features
        elif name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval
            k = int(np.prod([lhs.shape[d] for d in lhs_contract]))
            total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * k
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            total += _jaxpr_flops(sub)
    return total


@dataclasses.dataclass(frozen=True)
class Cost:
    """A model's size and FLOPs per image: one training forward pass, a training step (3 forward passes) and a
    prediction (the evaluation forward pass: ``V`` copies under an orbit average)."""

    params: int
    train_forward_flops: int
    predict_flops: int

    @property
    def train_step_flops(self) -> int:
        return 3 * self.train_forward_flops

    def to_dict(self) -> dict[str, float | int]:
        return {
            "params": self.params,
            "train_mflop_per_image": round(self.train_forward_flops / 1e6, 2),
            "train_step_mflop_per_image": round(self.train_step_flops / 1e6, 2),
            "predict_mflop_per_image": round(self.predict_flops / 1e6, 2),
        }


def flops_per_image(config: Any, num_classes: int = 121) -> Cost:
    """:class:`Cost` of ``config``'s model (its ``config.model`` and input size), counted with XLA's
    convolutions and products (XLA counts no FLOPs in a custom call) on one image; nothing is computed (shapes
    only)."""
    from deepsea.models import build_model
    from deepsea.step import example_inputs, forward

    model = build_model({**dict(config.model.items()), "conv_impl": "xla", "dense_impl": "xla"}, num_classes)
    batch = example_inputs(config, 1)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    variables = jax.eval_shape(lambda: model.init(rngs, batch["image"], False, batch["raw_size"], batch.get("image2")))
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables.get("params", {})))

    def run(train: bool) -> Callable[[Any, Any], Any]:
        return lambda v, b: forward(model, v, b, train, jax.random.key(0) if train else None)[0]

    return Cost(params, count_flops(run(True), variables, batch), count_flops(run(False), variables, batch))


def match_width(
    cost: Callable[[float], float],
    target: float,
    lo: float = 0.05,
    hi: float = 4.0,
    rel_tol: float = 0.02,
    max_evals: int = 12,
    log: Callable[[float, float], None] | None = None,
) -> tuple[float, float]:
    """The ``model.width`` whose ``cost(width)`` is closest to ``target``; returns ``(width, cost)``.

    ``cost`` must grow with the width (FLOPs grow about as its square, a step time somewhat slower).  The search
    is a secant method on ``log cost`` against ``log width`` (a power law is a straight line there), kept inside a
    bracket that shrinks like a bisection's, so a noisy measured cost still converges; it stops within ``rel_tol``
    of the target or after ``max_evals`` evaluations.  Widths are rounded to 3 decimals (channel counts are
    rounded anyway).  ``log(width, cost)`` is called after each evaluation.
    """
    if target <= 0:
        raise ValueError(f"the target cost must be positive, got {target}")
    seen: dict[float, float] = {}

    def evaluate(w: float) -> float:
        w = round(w, 3)
        if w not in seen:
            seen[w] = float(cost(w))
            if log:
                log(w, seen[w])
        return seen[w]

    def best() -> tuple[float, float]:
        w = min(seen, key=lambda k: abs(math.log(seen[k] / target)))
        return w, seen[w]

    lo, hi = round(lo, 3), round(hi, 3)
    if evaluate(lo) >= target or evaluate(hi) <= target:
        return best()
    a, b = lo, hi  # cost(a) < target < cost(b)
    x0, x1 = lo, hi
    while len(seen) < max_evals and b - a > 2e-3:
        f0, f1 = math.log(seen[x0] / target), math.log(seen[x1] / target)
        guess = math.sqrt(a * b)
        if f1 != f0:
            secant = math.exp(math.log(x1) - f1 * (math.log(x1) - math.log(x0)) / (f1 - f0))
            # the secant step, unless it leaves the bracket or would land in its outer eighths
            if a + (b - a) / 8 < secant < b - (b - a) / 8:
                guess = secant
        guess = round(guess, 3)
        if guess in seen or not (a < guess < b):
            break
        c = evaluate(guess)
        if abs(math.log(c / target)) <= math.log1p(rel_tol):
            break
        if c < target:
            a = guess
        else:
            b = guess
        x0, x1 = x1, guess
    return best()
