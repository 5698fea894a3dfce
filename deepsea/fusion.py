"""Late fusion of image features with frozen convnets (the seed's last step before ensembling).

A small network (two dense layers of 80 units over the standardised :mod:`deepsea.features`) adds its output to
the convnets' log-probabilities at the logits; the convnets are not retrained.  Its last layer starts at zero, so
training starts from the convnets' own predictions.  Several restarts are trained and their probabilities
averaged.

The protocol cannot leak: the fusion network is trained on the convnets' predictions for their validation split,
which they never trained on.  Its own score is cross-validated on that split (each fold predicted by networks
trained on the other folds; :attr:`FusionResult.cv`); the networks stored with the fused run are then trained
on the whole split, and a held-aside labelled folder (``deepsea evaluate --workdir FUSED --data DIR``) scores
them on images nobody trained on.

``deepsea fuse RUN [RUN ...] --out FUSED`` writes ``fused.json`` (members, blend weights, TTA setting, feature
statistics, settings, cross-validated scores) and ``params.npz``; :func:`load_fused` reads it back as a
:class:`FusedRun` whose :meth:`~FusedRun.probs` predicts any images.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from deepsea.errors import UserError
from deepsea.metrics import log_probabilities

__all__ = ["FusedRun", "FusionResult", "FusionSettings", "fit_fusion", "fusion_probs", "load_fused", "standardise"]


@dataclasses.dataclass(frozen=True)
class FusionSettings:
    hidden: int = 80
    restarts: int = 5
    steps: int = 500  # full-batch Adam steps (at most: early stopping below)
    lr: float = 3e-4
    weight_decay: float = 1e-2
    holdout: float = 0.2  # of each restart's images, to choose its step on
    check_every: int = 10
    dropout: float = 0.5
    folds: int = 5
    seed: int = 0


def _net(hidden: int, classes: int, dropout: float) -> Any:
    import flax.linen as nn

    class FusionNet(nn.Module):
        @nn.compact
        def __call__(self, feats: jax.Array, logp: jax.Array, train: bool = False) -> jax.Array:
            h = nn.relu(nn.Dense(hidden)(feats))
            h = nn.Dropout(dropout, deterministic=not train)(h)
            h = nn.relu(nn.Dense(hidden)(h))
            return logp + nn.Dense(classes, kernel_init=nn.initializers.zeros)(h)

    return FusionNet()


def fit_fusion(
    feats: np.ndarray,
    logp: np.ndarray,
    labels: np.ndarray,
    settings: FusionSettings = FusionSettings(),
    pad_to: int = 0,
) -> list[Any]:
    """``settings.restarts`` fusion networks' parameters trained on standardised ``feats (N, F)``, the convnets'
    ``logp (N, K)`` and integer ``labels``.

    Each restart holds a random ``settings.holdout`` share of the images out and keeps the parameters at the step
    (every ``settings.check_every``, step 0 included) where their log loss was lowest: where the features add
    nothing the convnets know, the fusion stays at the convnets' own predictions instead of fitting noise.
    ``pad_to``: pad the arrays to this many rows (no weight), so that sets of different sizes (cross-validation
    folds) share one compiled program."""
    import optax

    n = len(labels)
    rows = max(n, pad_to)
    pad = lambda a: np.concatenate([a, np.zeros((rows - n, *a.shape[1:]), a.dtype)])  # noqa: E731
    net = _net(settings.hidden, logp.shape[1], settings.dropout)
    tx = optax.adamw(settings.lr, weight_decay=settings.weight_decay)
    f, lp = jnp.asarray(pad(np.asarray(feats, np.float32))), jnp.asarray(pad(np.asarray(logp, np.float32)))
    y = jnp.asarray(pad(np.asarray(labels, np.int32)))
    real = jnp.asarray(np.arange(rows) < n)
    checks = settings.steps // settings.check_every  # 0: the untrained networks (the convnets' predictions)

    @jax.jit
    def train(key: jax.Array) -> Any:
        init_key, split_key, drop_key = jax.random.split(key, 3)
        held = (jax.random.uniform(split_key, (rows,)) < settings.holdout) & real
        fit_w = jnp.where(real & ~held, 1.0, 0.0)
        held_w = jnp.where(held, 1.0, 0.0)
        fit_w, held_w = fit_w / jnp.maximum(fit_w.sum(), 1.0), held_w / jnp.maximum(held_w.sum(), 1.0)
        params = net.init(init_key, f[:1], lp[:1])

        def ce(p: Any, w: jax.Array, train: bool, k: jax.Array) -> jax.Array:
            logits = net.apply(p, f, lp, train, rngs={"dropout": k})
            return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, y) * w)

        def step(carry: Any, k: jax.Array) -> tuple[Any, None]:
            p, s = carry
            g = jax.grad(ce)(p, fit_w, True, k)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        def check(carry: Any, keys: jax.Array) -> tuple[Any, None]:
            p, s, best, best_loss = carry
            p, s = jax.lax.scan(step, (p, s), keys)[0]
            loss = ce(p, held_w, False, keys[0])
            better = loss < best_loss
            best = jax.tree.map(lambda a, b: jnp.where(better, a, b), p, best)
            return (p, s, best, jnp.minimum(loss, best_loss)), None

        if checks == 0:
            return params
        start = ce(params, held_w, False, drop_key)
        keys = jax.random.split(drop_key, checks * settings.check_every).reshape(checks, settings.check_every)
        carry = (params, tx.init(params), params, start)
        return jax.lax.scan(check, carry, keys)[0][2]

    keys = jax.random.split(jax.random.key(settings.seed), settings.restarts)
    return [jax.tree.map(np.asarray, train(k)) for k in keys]


def fusion_probs(params: list[Any], feats: np.ndarray, logp: np.ndarray, hidden: int, dropout: float) -> np.ndarray:
    net = _net(hidden, logp.shape[1], dropout)
    apply = jax.jit(lambda p, f, lp: jax.nn.softmax(net.apply(p, f, lp), axis=-1))
    f, lp = jnp.asarray(feats, jnp.float32), jnp.asarray(logp, jnp.float32)
    return np.mean([np.asarray(apply(p, f, lp), np.float64) for p in params], axis=0)


def standardise(values: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((values - mean) / std).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class FusionResult:
    """The fused run written and the cross-validated scores on the members' validation split."""

    out: str
    convnets: Any  # Evaluation of the members' blend, on the same images
    cv: Any  # Evaluation of the out-of-fold fused predictions


@dataclasses.dataclass(frozen=True)
class FusedRun:
    """A fused run read back: its members, blend weights, feature statistics and fusion networks.  A
    :class:`deepsea.predictor.Predictor` that predicts with the TTA setting its members were fused with
    (``fixed_tta``); its images are read as its first member reads them."""

    workdir: str
    meta: dict
    members: tuple[Any, ...]
    params: list[Any]
    calibration: dict | None = None  # calibration.json / thresholds.json fitted for the fused run itself
    thresholds: dict | None = None

    validation_split = None  # it was fitted on its members' validation split: scored on held-aside folders

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.meta["classes"])

    @property
    def preprocess(self) -> Any:
        return self.members[0].preprocess

    @property
    def tta_ranges(self) -> Any:
        return self.members[0].tta_ranges

    @property
    def batch_size(self) -> int:
        return self.members[0].batch_size

    @property
    def class_map(self) -> dict | None:
        return self.members[0].class_map

    @property
    def fixed_tta(self) -> int | str:
        return self.meta["tta"]

    @property
    def key(self) -> str:
        return "fused:" + ",".join(m.key for m in self.members)

    @property
    def cache_key(self) -> str:
        return self.key

    @property
    def fitted_scores(self) -> tuple[Any, ...]:
        """The members' blend and the fusion (cross-validated) on the validation split it was fitted on."""
        from deepsea.evaluation import Evaluation

        return tuple(dataclasses.replace(Evaluation.from_dict(self.meta[k]), label=k)
                     for k in ("convnets", "cross_validated"))  # fmt: skip

    def member_probs(self, paths: Sequence[str], progress: bool = True) -> np.ndarray:
        """The members' blended probabilities ``(N, K)`` for any images: what the fusion starts from."""
        from deepsea.predictor import blend_probs

        m = self.meta
        return blend_probs(self.members, np.asarray(m["weights"]), paths, m["tta"], m["combine"], progress)

    def reference_probs(self, paths: Sequence[str], progress: bool = True) -> tuple[str, np.ndarray]:
        """``("convnets", member_probs)``: what an evaluation shows beside the fused scores."""
        return "convnets", self.member_probs(paths, progress)

    def fused_probs(self, paths: Sequence[str], progress: bool = True, members: np.ndarray | None = None) -> np.ndarray:
        """Fused probabilities ``(N, K)`` for any images (``members``: their :meth:`member_probs`, if known)."""
        from deepsea.features import folder_features

        m = self.meta
        members = self.member_probs(paths, progress) if members is None else members
        root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
        table = folder_features(root, paths, m["pixel_size"], progress=progress)
        missing = [n for n in m["features"] if n not in table.names]
        if missing:
            raise UserError(f"{self.workdir} was fused on features this deepsea does not compute: {missing[:3]}")
        cols = [table.names.index(n) for n in m["features"]]  # the features it was fused on, in its order
        feats = standardise(table.values[:, cols], np.asarray(m["mean"]), np.asarray(m["std"]))
        s = m["settings"]
        return fusion_probs(self.params, feats, log_probabilities(members), s["hidden"], s["dropout"])

    def probs(
        self,
        paths: Sequence[str],
        transforms: Sequence[Any],
        images: Sequence[np.ndarray] | None = None,
        progress: bool = True,
    ) -> np.ndarray:
        """``(1, N, K)`` fused probabilities (:class:`deepsea.predictor.Predictor`): the members predict under their
        own TTA setting, so ``transforms`` must be the plain rescale alone; ``images`` are not used (the members
        and the features read the files)."""
        from deepsea.tta import identity_transforms

        del images
        if list(transforms) != identity_transforms():
            raise UserError(f"{self.workdir} predicts with the TTA its members were fused with ({self.fixed_tta})")
        return self.fused_probs(paths, progress)[None].astype(np.float32)


def load_fused(workdir: str) -> FusedRun:
    """Reads a fused run written by :func:`deepsea.fitting.fuse_runs`; its members must still be where they were."""
    from deepsea import rundir
    from deepsea.runs import restore_run

    meta = rundir.load_json(os.path.join(workdir, "fused.json"))
    members = tuple(restore_run(w, meta["checkpoint"], precision=meta["precision"]) for w in meta["members"])
    if any(mr.classes != tuple(meta["classes"]) for mr in members):
        raise UserError(f"{workdir}: a member run's classes changed since the fusion was fitted")
    s = meta["settings"]
    template = jax.eval_shape(  # the parameters' structure
        _net(s["hidden"], len(meta["classes"]), s["dropout"]).init,
        jax.random.key(0),
        jnp.zeros((1, len(meta["features"]))),
        jnp.zeros((1, len(meta["classes"]))),
    )
    treedef = jax.tree.structure(template)
    n = len(jax.tree.leaves(template))
    with np.load(os.path.join(workdir, "params.npz")) as f:
        leaves = [f[f"arr_{i}"] for i in range(len(f.files))]
    params = [jax.tree.unflatten(treedef, leaves[i : i + n]) for i in range(0, len(leaves), n)]
    fitted = {}
    for name in ("calibration", "thresholds"):  # fitted for the fused run itself, on a held-aside folder
        path = os.path.join(workdir, f"{name}.json")
        fitted[name] = rundir.load_json(path) if os.path.isfile(path) else None
    return FusedRun(workdir, meta, members, params, **fitted)
