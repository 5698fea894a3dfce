"""Measures the augmenting loader: images/s per worker, and how long a training loop waits for it.

``deepsea bench-data [--data DIR]`` prints, for 95x95 (largest side to 85)
and 47x47 (fixed factor 1/5) patches, augmented images/s in this process and
with 1 and 2 grain workers (``--loader-workers``), then runs convroll4 training steps (forward,
backward and an SGD update, batch 32 x 4 views) fed by the loader and reports
the share of the loop's time spent waiting in ``next()``.  Without ``--data``
it uses the generated synthetic dataset.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import numpy as np

from deepsea.data import (
    TRAIN_RANGES,
    AugmentedSource,
    Preprocess,
    Rescale,
    scan_labelled_folder,
    train_batches,
)

__all__ = ["loader_rates", "waiting_share"]


def _rate(it, batches: int, batch_size: int) -> float:
    next(it)  # start-up and first batch excluded
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - t0)


def loader_rates(
    paths: Sequence[str],
    labels: np.ndarray,
    size: int,
    rescale: Rescale,
    batches: int,
    batch_size: int = 32,
    worker_counts: Sequence[int] = (1, 2),
) -> dict[str, float]:
    pp = Preprocess(size=size, rescale=rescale)
    src = AugmentedSource(paths, labels, pp, TRAIN_RANGES, seed=0)
    n = batches * batch_size
    t0 = time.perf_counter()
    for i in range(n):
        src[i]
    out = {"in_process": n / (time.perf_counter() - t0)}
    for workers in worker_counts:
        out[f"workers_{workers}"] = _rate(train_batches(src, batch_size, workers=workers), batches, batch_size)
    return out


def waiting_share(
    paths: Sequence[str], labels: np.ndarray, num_classes: int, steps: int, workers: int, batch_size: int = 32
) -> dict[str, float]:
    """Runs convroll4 SGD steps fed by the loader; returns step time and the share spent waiting."""
    import jax
    import jax.numpy as jnp
    import optax

    from deepsea.models import RollNet

    net = RollNet(num_classes=num_classes, symmetry="c4", dropout_rate=0.0)
    params = jax.jit(net.init)(jax.random.key(0), jnp.zeros((1, 95, 95, 1)))
    opt = optax.sgd(0.003, momentum=0.9, nesterov=True)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, images, labels):
        def loss_fn(p):
            logits = net.apply(p, images)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    src = AugmentedSource(paths, labels, Preprocess(size=95), TRAIN_RANGES, seed=0)
    it = train_batches(src, batch_size, workers=workers)
    batch = next(it)
    params, opt_state, loss = step(params, opt_state, batch["image"], batch["label"])  # compile
    jax.block_until_ready(loss)
    wait = 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
        tw = time.perf_counter()
        batch = next(it)
        wait += time.perf_counter() - tw
        params, opt_state, loss = step(params, opt_state, batch["image"], batch["label"])
        jax.block_until_ready(loss)
    total = time.perf_counter() - t0
    it.close()
    return {
        "step_s": total / steps,
        "train_images_per_s": steps * batch_size / total,
        "waiting_share": wait / total,
        "workers": workers,
    }


def _worker_counts(value: str) -> list[int]:
    counts = [int(w) if w.strip().isdigit() else 0 for w in value.split(",")]
    if min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected positive worker counts, e.g. 1,2; got {value!r}")
    return counts


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, help="labelled image folder (default: the synthetic dataset)")
    p.add_argument("--batches", type=int, default=20, help="batches of 32 timed per loader setting")
    p.add_argument("--steps", type=int, default=5, help="convroll4 training steps for the waiting share (0: skip)")
    p.add_argument("--workers", type=int, default=1, help="loader workers while training")
    p.add_argument(
        "--loader-workers",
        type=_worker_counts,
        default=[1, 2],
        help="comma-separated worker counts whose loader rates are timed (default 1,2)",
    )


def main_with_args(args: argparse.Namespace) -> None:
    if args.data is None:
        from deepsea.data.sources import default_synthetic_dir

        args.data = default_synthetic_dir()
    folder = scan_labelled_folder(args.data)
    paths, labels = list(folder.paths), folder.labels
    assert labels is not None
    print(f"# deepsea bench-data: {args.data} ({len(folder)} images, {len(folder.classes)} classes)")
    counts = args.loader_workers
    columns = "".join(f" {f'{w} worker' + ('s' if w > 1 else ''):>10}" for w in counts)
    print(f"{'patch':<26} {'in-process':>11}{columns}   (augmented images/s)")
    results = {}
    for size, rescale, label in (
        (95, Rescale("max_side", 85.0), "95x95 (largest side 85)"),
        (47, Rescale("factor", 0.2), "47x47 (factor 1/5)"),
    ):
        r = loader_rates(paths, labels, size, rescale, args.batches, worker_counts=counts)
        results[f"size_{size}"] = r
        print(f"{label:<26} {r['in_process']:11.0f}" + "".join(f" {r[f'workers_{w}']:10.0f}" for w in counts))
    if args.steps:
        w = waiting_share(paths, labels, len(folder.classes), args.steps, args.workers)
        results["training"] = w
        print(
            f"convroll4 training step (batch 32 x 4 views, 95x95, CPU): {w['step_s']:.2f} s/step = "
            f"{w['train_images_per_s']:.1f} images/s; waiting for data {100 * w['waiting_share']:.2f}% "
            f"of the loop ({args.workers} worker(s))"
        )
    print(json.dumps(results))
