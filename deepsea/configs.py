"""The base experiment configuration: every hyperparameter, with the seed's values.

Experiment modules (``experiments/<name>.py``) start from :func:`base_config`
and override what differs; ``deepsea train EXPERIMENT --set key=value``
overrides further from the command line.  The config is locked: assigning a key
that does not exist (a typo in an experiment module or in ``--set``) is an
error, and ``--set`` parses its value as the type of the value it replaces.
A model key that only one model takes is added with ``config.unlocked()``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

import ml_collections

from deepsea.errors import UserError
from deepsea.models import CONVROLL4_STAGES

__all__ = ["ConfigError", "apply_overrides", "base_config", "load_experiment", "load_experiment_with", "small_run"]


class ConfigError(UserError):
    """An experiment module or an override that does not fit the configuration."""


def base_config() -> ml_collections.ConfigDict:
    """The seed's recipe: convroll4 on 95x95 patches, its augmentation, Nesterov SGD with two 10x drops."""
    c = ml_collections.ConfigDict()
    c.name = "base"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.path = ""  # labelled folder; empty: the generated synthetic dataset
    c.data.synthetic_per_class = 150
    c.data.synthetic_colour = False  # the generated dataset's colour mode (RGB; some classes differ only in colour)
    c.data.validation_fraction = 0.1
    c.data.split_seed = 0
    c.data.label_noise = 0.0  # this share of the training labels replaced by another class at random (experiments)
    c.data.split_from = ""  # a run whose validation images are this run's (the rest train): specialists, fair pairs
    c.data.size = 95
    c.data.rescale = "max_side:85"  # max_side:N | factor:F | none | moments:R (centroid centred, gyration radius R)
    c.data.workers = 1
    c.data.cache_images = False  # keep decoded training images in memory (each loader worker its own copy)
    c.data.augment_on = "host"  # host: the loader warps | device: the training step warps uint8 images (accelerator)
    c.data.device_canvas = 256  # augment_on=device: images travel in squares of this side (larger ones shrunk first)
    c.data.skip_bad_images = False
    c.data.stats_images = 2000
    c.data.extra_rotations = ()  # cp8: (45.0,)
    c.data.second_size = 0  # multiscale: 47
    c.data.second_rescale = "factor:0.2"
    c.data.channels = 1  # 1: grayscale (colour images read as luma) | 3: RGB
    c.data.background = "white"  # white (transmitted light, photographs) | black (dark field): the warp's fill
    c.data.class_map = ""  # a file mapping classes to new names (merge) or to nothing (drop): JSON or old,new CSV
    c.data.min_class_size = 0  # drop classes with fewer images (after the mapping)
    c.data.balanced_sampling = False  # draw every class equally often (with replacement) instead of epochs
    c.data.pixel_size = 0.0  # micrometres per pixel (0: unknown): the raw-size feature in micrometres
    c.data.gray_to_rgb = False  # channels 3: read grayscale files as three equal channels instead of refusing them
    c.data.pseudo_labels = ""  # teacher predictions for unlabelled images (deepsea pseudolabel): soft targets
    c.data.pseudo_hard = False  # the teacher's top class as a one-hot target instead of its probabilities
    c.data.pseudo_fraction = 0.33  # the share of every batch drawn from the pseudo-labelled images (seed: 0.33, 0.67)
    c.data.distill = ""  # teacher predictions for the training images (deepsea pseudolabel): distillation

    c.aug = ml_collections.ConfigDict()
    c.aug.rotation = 360.0
    c.aug.shift = 10.0
    c.aug.zoom = 1.6
    c.aug.shear = 20.0
    c.aug.stretch = 1.3
    c.aug.flip = True
    c.aug.brightness = 0.0  # colour jitter (torchvision's ColorJitter ranges; 0: off): factor in [1 - b, 1 + b]
    c.aug.contrast = 0.0
    c.aug.saturation = 0.0
    c.aug.hue = 0.0  # shift in turns, in [-hue, hue], at most 0.5
    c.aug.elastic = 0.0  # elastic distortion: the largest displacement in pixels (0: off; the seed tried it)
    c.aug.elastic_sigma = 4.0  # its smoothness: the Gaussian's standard deviation in pixels
    c.aug.draws = "uniform"  # uniform | gaussian: shift, zoom, shear, stretch from truncated normals (sd: half range)

    c.model = ml_collections.ConfigDict()
    c.model.name = "convroll4"
    c.model.symmetry = "c4"
    c.model.stages = CONVROLL4_STAGES
    c.model.width = 1.0
    c.model.dense_features = 512
    c.model.maxout_pieces = 2
    c.model.dropout_rate = 0.5
    c.model.dense_roll = False
    c.model.conv_roll = True  # False: slice and view pool without conv rolls (an ablation)
    c.model.roll_every_conv = False  # a conv roll before every convolution, not only each stage's first
    c.model.fold_views = 0  # the first N stages run in the input's frame with every view's kernel (same function)
    c.model.untied_biases = False  # the seed's untied convolution biases (one per output position and channel)
    c.model.view_pool_mode = "rms"
    c.model.negative_slope = 1.0 / 3.0  # the leaky ReLU after every convolution (0: ReLU)
    c.model.activation = "leaky_relu"  # leaky_relu | prelu (learnt slopes) | smooth_leaky (the seed's trials)
    c.model.dropout_kind = "bernoulli"  # bernoulli | gaussian (multiplicative noise of the same variance)
    c.model.conv_dropout_rate = 0.0  # dropout after every convolutional stage (the seed tried it)
    c.model.dense_units = "maxout"  # maxout | channel_out (winner-take-all units)
    c.model.precision = "float32"  # or bfloat16: activations and products (float32 accumulation); params float32
    c.model.max_pool_impl = "auto"  # auto | onednn | slices | reduce_window: deepsea.backends.max_pool
    c.model.conv_impl = "auto"  # auto | onednn | xla: deepsea.backends.conv; the same function
    c.model.dense_impl = "auto"  # auto | onednn | xla: deepsea.backends.dense_dot_general; the same function
    c.model.roll_impl = "xla"  # xla | pallas (kernels/, interpret mode off-GPU): bitwise the same function
    c.model.orbit_average = ""  # "c4" | "d4": average the predictions over the input's orbit (exact invariance)
    c.model.size_features = False
    c.model.batch_norm = False  # not in the seed; per-channel statistics over all views keep the invariance

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
    c.optim.pretrained_lr_multiplier = 1.0  # the pre-trained (or init_from) layers' rate as a share of the others'

    c.pretrain = ml_collections.ConfigDict()  # deepsea pretrain: the tied convolutional autoencoder
    c.pretrain.greedy_steps = 200  # per convolution, one at a time
    c.pretrain.joint_steps = 1000  # then the whole stack
    c.pretrain.lr = 1e-3  # Adam
    c.pretrain.log_every = 20
    c.pretrain.checkpoint_every = 200

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 32
    c.train.steps = 215_000
    c.train.budget_minutes = 0.0  # > 0: choose train.steps to fill this many minutes, measured on this machine
    c.train.budget_probe_steps = 20  # timed steps of each probe pass (first reads, then the same images again)
    c.train.eval_every = 5000
    c.train.checkpoint_every = 5000
    c.train.log_every = 100
    c.train.eval_batch_size = 64
    c.train.bootstrap = ""  # soft | hard: Reed et al.'s bootstrapping against noisy labels ("": none)
    c.train.bootstrap_beta = 0.95  # the labels' share of the bootstrapped target (Reed et al.: 0.95 soft, 0.8 hard)
    c.train.accumulate = 1  # K: each step averages the gradients of K batches of train.batch_size (same memory)
    c.train.class_weight_power = 0.0  # loss weight of a class: (its share of the training images)^-power, mean 1
    c.train.pretrained = ""  # a deepsea pretrain folder: its convolutions initialise this network's
    c.train.init_from = ""  # a trained run: all its layers but the classifier initialise this one (fine-tuning)
    c.train.pretrained_frozen_steps = 0  # the pre-trained (or init_from) layers stay frozen for this many steps
    c.train.pretrained_warmup_steps = 0  # then their learning rate ramps up linearly over this many steps
    c.train.distill_weight = 0.5  # with data.distill: the teacher's share of the loss (the labels' is 1 - it)
    c.train.distill_temperature = 2.0  # with data.distill: both predictions softened by it (Hinton's T)
    c.train.eval_tta = ""  # validation during training: "" plain | "tencrop" | "N" Halton transforms
    c.train.keep_checkpoints = 2
    c.train.divergence_loss = 50.0  # stop when the training loss exceeds this (or is not finite)
    c.lock()
    return c


def small_run(c: ml_collections.ConfigDict, steps: int = 20) -> ml_collections.ConfigDict:
    """The common part of every experiment's small-run switch: few steps, frequent evaluation and checkpoints."""
    c.train.steps = steps
    c.train.budget_minutes = 0.0
    c.optim.warmup_steps = min(c.optim.warmup_steps, steps // 4)
    c.train.eval_every = max(1, steps // 2)
    c.train.checkpoint_every = max(1, steps // 2)
    c.train.log_every = max(1, steps // 4)
    c.data.stats_images = 100
    return c


def merge_stored(stored: dict[str, Any]) -> ml_collections.ConfigDict:
    """:func:`base_config` updated with a stored configuration (a run's ``config.json``), then locked.  Lists
    become the tuples the recipe holds; the only keys the recipe may lack are ``experiment_file`` and parameters
    of the run's model builder (``model.small_stages``, say); any other is a :class:`ConfigError` naming it."""
    from deepsea.models import MODELS, builder_parameters

    config = base_config()
    name = stored.get("model", {}).get("name", config.model.name)
    extra_model = builder_parameters(MODELS[name]) if name in MODELS else frozenset()

    def merge(node: ml_collections.ConfigDict, values: dict[str, Any], where: str) -> None:
        for key, value in values.items():
            full = f"{where}{key}"
            if key in node and isinstance(node[key], ml_collections.ConfigDict):
                if not isinstance(value, dict):
                    raise ConfigError(f"{full} is a section of the recipe, not {value!r}")
                merge(node[key], value, f"{full}.")
            elif key in node or full == "experiment_file" or (where == "model." and key in extra_model):
                node[key] = _as_tuple(value) if isinstance(node.get(key), tuple) else value
            else:
                raise ConfigError(f"unknown config key {full!r} (not in the recipe, nor a parameter of the model)")

    with config.unlocked():
        merge(config, stored, "")
    config.lock()
    return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[str]) -> ml_collections.ConfigDict:
    """Applies ``key.sub=value`` strings, each parsed as the type of the value it replaces.

    Booleans take ``true``/``false``/``1``/``0``; tuples and ``None``-valued keys take Python literals; a string
    key takes ``none`` as None (e.g. ``model.symmetry=none``).  Unknown keys and unparsable values raise
    :class:`ConfigError` naming them.
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        node = config
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node, ml_collections.ConfigDict) or p not in node:
                raise ConfigError(f"unknown config key {key!r} (no {p!r})")
            node = node[p]
        if not isinstance(node, ml_collections.ConfigDict) or parts[-1] not in node:
            known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            raise ConfigError(f"unknown config key {key!r}; known here: {known}")
        try:
            node[parts[-1]] = _parse_as(node[parts[-1]], raw)
        except (ValueError, SyntaxError, TypeError) as e:
            raise ConfigError(f"--set {key}={raw!r}: {e}") from None
    return config


def _parse_as(old: Any, raw: str) -> Any:
    import ast

    if isinstance(old, bool):
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise UserError(f"expected true or false (the current value is {old!r})")
    if isinstance(old, int):
        return int(raw)
    if isinstance(old, float):
        return float(raw)
    if isinstance(old, str):
        return None if raw.lower() == "none" else raw
    if old is None and raw.lower() == "none":
        return None
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        if old is None:  # a key unset in the recipe (model.symmetry on a plain net) takes a bare word as text
            return raw
        raise
    if isinstance(old, tuple):
        if not isinstance(value, list | tuple):
            raise UserError(f"expected a tuple like {old!r}")
        return _as_tuple(value)
    return value


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value


def load_experiment_module(experiment: str) -> Any:
    """Imports ``experiments/<name>.py`` (a path, or a name looked up in ./experiments) as
    ``experiments.<name>``."""
    path = experiment
    if not path.endswith(".py"):
        path = os.path.join("experiments", f"{experiment}.py")
    if not os.path.isfile(path):
        raise ConfigError(f"no experiment module {path!r} (run from the repository root, or pass a path)")
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
    return module


def load_experiment(experiment: str, small: bool = False) -> ml_collections.ConfigDict:
    """Loads ``experiments/<name>.py`` (a path, or a name looked up in ./experiments) and calls ``get_config``."""
    module = load_experiment_module(experiment)
    path = module.__file__
    try:
        config = module.get_config(small=small)
    except (AttributeError, TypeError) as e:  # a locked config refuses a misspelt key here
        raise ConfigError(f"{path}: {e}") from None
    with config.unlocked():
        config.experiment_file = path
    return config


def load_experiment_with(
    experiment: str, overrides: list[str] | tuple[str, ...] = (), small: bool = False, data: str | None = None
) -> ml_collections.ConfigDict:
    """:func:`load_experiment`, then ``--set`` ``overrides`` and (if given) the data folder."""
    config = apply_overrides(load_experiment(experiment, small), list(overrides))
    if data:
        config.data.path = data
    return config
