"""The base experiment configuration: every hyperparameter, with the seed's values.

Experiment modules (``experiments/<name>.py``) start from :func:`base_config`
and override what differs; ``deepsea train EXPERIMENT --set key=value``
overrides further from the command line.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

import ml_collections

__all__ = ["apply_overrides", "base_config", "load_experiment", "small_run"]


def base_config() -> ml_collections.ConfigDict:
    """The seed's recipe: convroll4 on 95x95 patches, its augmentation, Nesterov SGD with two 10x drops."""
    c = ml_collections.ConfigDict()
    c.name = "base"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.path = ""  # labelled folder; empty: the generated synthetic dataset
    c.data.synthetic_per_class = 150
    c.data.validation_fraction = 0.1
    c.data.split_seed = 0
    c.data.size = 95
    c.data.rescale = "max_side:85"  # max_side:N | factor:F | none
    c.data.workers = 1
    c.data.cache_images = False  # keep decoded training images in memory (each loader worker its own copy)
    c.data.skip_bad_images = False
    c.data.stats_images = 2000
    c.data.extra_rotations = ()  # cp8: (45.0,)
    c.data.second_size = 0  # multiscale: 47
    c.data.second_rescale = "factor:0.2"

    c.aug = ml_collections.ConfigDict()
    c.aug.rotation = 360.0
    c.aug.shift = 10.0
    c.aug.zoom = 1.6
    c.aug.shear = 20.0
    c.aug.stretch = 1.3
    c.aug.flip = True

    c.model = ml_collections.ConfigDict()
    c.model.name = "convroll4"
    c.model.symmetry = "c4"
    c.model.stages = ((32, 16), (64, 32), (128, 128, 64), (256, 256, 128))
    c.model.width = 1.0
    c.model.dense_features = 512
    c.model.maxout_pieces = 2
    c.model.dropout = 0.5
    c.model.dense_roll = False
    c.model.view_pool = "rms"
    c.model.max_pool_impl = "auto"  # auto (onednn where available, else slices) | onednn | slices | reduce_window
    c.model.conv_impl = "auto"  # auto | onednn | xla (the reference: XLA's convolution); the same function
    c.model.roll_impl = "xla"  # xla | pallas (kernels/, interpret mode off-GPU): bitwise the same function
    c.model.orbit_average = ""  # "c4" | "d4": average the predictions over the input's orbit (exact invariance)
    c.model.size_features = False
    c.model.batch_norm = False  # not in the seed; per-channel statistics over all views keep the invariance
    c.model.small_stages = ((32, 16), (64, 32), (128, 128, 64))  # multiscale: the fixed-scale branch

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "sgd"  # sgd (Nesterov momentum) | adam
    c.optim.lr = 0.003
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-4  # L2 on kernels, not biases
    c.optim.schedule = "step"  # step: piecewise constant (decay_steps, decay_factor) | cosine: to end_factor * lr
    c.optim.decay_steps = (180_000, 205_000)  # two 10x drops
    c.optim.decay_factor = 0.1
    c.optim.warmup_steps = 0
    c.optim.end_factor = 0.0  # cosine: the final learning rate as a fraction of lr
    c.optim.grad_clip = 0.0  # 0: off

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 32
    c.train.steps = 215_000
    c.train.eval_every = 5000
    c.train.checkpoint_every = 5000
    c.train.log_every = 100
    c.train.eval_batch_size = 64
    c.train.keep_checkpoints = 2
    c.train.divergence_loss = 50.0  # stop when the training loss exceeds this (or is not finite)
    return c


def small_run(c: ml_collections.ConfigDict, steps: int = 20) -> ml_collections.ConfigDict:
    """The common part of every experiment's small-run switch: few steps, frequent evaluation and checkpoints."""
    c.train.steps = steps
    c.optim.warmup_steps = min(c.optim.warmup_steps, steps // 4)
    c.train.eval_every = max(1, steps // 2)
    c.train.checkpoint_every = max(1, steps // 2)
    c.train.log_every = max(1, steps // 4)
    c.data.stats_images = 100
    return c


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    """Applies ``key.sub=value`` strings; values are parsed as Python literals where they parse."""
    import ast

    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {item!r}")
        try:
            value: Any = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        node = config
        parts = key.split(".")
        for p in parts[:-1]:
            if p not in node:
                raise ValueError(f"unknown config key {key!r} (no {p!r})")
            node = node[p]
        if parts[-1] not in node:
            raise ValueError(f"unknown config key {key!r}; known: {sorted(node.keys())}")
        old = node[parts[-1]]
        if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(old, tuple) and isinstance(value, list):
            value = tuple(value)
        node[parts[-1]] = value
    return config


def load_experiment(experiment: str, small: bool = False) -> ml_collections.ConfigDict:
    """Loads ``experiments/<name>.py`` (a path, or a name looked up in ./experiments) and calls ``get_config``."""
    path = experiment
    if not path.endswith(".py"):
        path = os.path.join("experiments", f"{experiment}.py")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no experiment module {path!r} (run from the repository root, or pass a path)")
    path = os.path.abspath(path)
    root = os.path.dirname(os.path.dirname(path))
    if root not in sys.path:
        sys.path.insert(0, root)  # so that experiments import their base as experiments.<name>
    name = f"experiments.{os.path.splitext(os.path.basename(path))[0]}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    config = module.get_config(small=small)
    config.experiment_file = path
    return config
