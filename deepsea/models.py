"""Networks built from the symmetry layers, with their layer factories as fields.

:class:`RollNet` is the seed's backbone: slice, VGG-like stages of 3x3 'same'
convolutions each followed by 3x3 stride-2 max pooling and a conv roll, maxout
dense layers, a view pool and a softmax layer.  ``symmetry`` picks the plain
(``None``), cyclic (``"c4"``) or dihedral (``"d4"``) variant of one definition;
every layer comes from a factory field, so variants swap a layer without
copying the network.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from deepsea import layers, ops
from deepsea.errors import UserError
from deepsea.groups import Group, get_group

__all__ = [
    "CONVROLL4_STAGES",
    "MODELS",
    "PRECISIONS",
    "MultiscaleNet",
    "OrbitAverage",
    "ResNet",
    "RollNet",
    "build_model",
    "builder_parameters",
    "count_params",
    "network_layers",
    "register",
    "size_features",
    "tiny_rollnet",
]

ModuleDef = Any

PRECISIONS = ("float32", "bfloat16")
"""The computation dtypes a model may run in (``model.precision``); parameters and logits are float32 in both."""

CONVROLL4_STAGES: tuple[tuple[int, ...], ...] = ((32, 16), (64, 32), (128, 128, 64), (256, 256, 128))
"""Output channels of the convolutions in each stage of the published convroll4."""


class RollNet(nn.Module):
    """The seed's rolled convnet (convroll4 with the defaults), or its plain counterpart.

    Input ``(B, H, W, C)``; output logits ``(B, num_classes)``.  With a
    symmetry group the network is exactly invariant to the group acting on its
    input (up to float rounding), provided every pooling grid is symmetric
    (odd map sizes for 3x3 stride-2 pooling; :class:`deepsea.layers.MaxPool`
    raises otherwise).

    ``roll_every_conv`` puts a conv roll before every convolution (the seed rolls once a stage): every layer then
    reads all views' maps, a group convolution as in escnn's regular networks, so at a quarter of the plain
    network's per-view width (C4; an eighth for D4) the network does the plain network's FLOPs, and with the views
    folded (``fold_views``) its convolutions have the plain network's shapes.

    Every convolution is followed by a leaky ReLU of slope ``negative_slope`` (0: a ReLU), passed to the
    ``conv`` factory (which may fuse it) unless ``batch_norm`` puts a batch norm in between.  The factories are
    called as ``conv(features, negative_slope=, implementation=conv_impl, kernel_init=, name=)``,
    ``downsample(check_symmetry=, implementation=max_pool_impl, name=)``,
    ``dense(features, pieces, dtype=, implementation=dense_impl, name=)``,
    ``classifier(num_classes, name=)``, the symmetry layers with ``group=`` (the rolls also with
    ``implementation=roll_impl``) and ``norm(use_running_average=, name=)``.
    """

    num_classes: int = 121
    stages: Sequence[Sequence[int]] = CONVROLL4_STAGES
    dense_features: int = 512
    maxout_pieces: int = 2
    dropout_rate: float = 0.5
    symmetry: str | Group | None = "c4"
    dense_roll: bool = False
    view_pool_mode: str = "rms"
    negative_slope: float = layers.DEFAULT_NEGATIVE_SLOPE
    precision: str = "float32"  # or "bfloat16": the computation's dtype; parameters and logits stay float32
    batch_norm: bool = False  # not in the seed; per-channel statistics over all views keep the invariance
    size_features: bool = False
    conv_roll: bool = True  # False: slice and view pool only, no conv rolls (an ablation)
    roll_every_conv: bool = False  # a conv roll before every convolution but the first, not only each stage's first
    fold_views: int = 0  # the first N stages in the input frame, views folded in channels (folded_conv): same function
    untied_biases: bool = False  # the seed's untied convolution biases (one per position); passed to conv when set
    activation: str = "leaky_relu"  # after every convolution: a key of layers.ACTIVATIONS (the seed tried them all)
    dropout_kind: str = "bernoulli"  # a key of layers.DROPOUTS: bernoulli, or gaussian (multiplicative noise)
    conv_dropout_rate: float = 0.0  # dropout after every convolutional stage (the seed tried it), of dropout_kind
    dense_units: str = "maxout"  # maxout, or channel_out (winner-take-all units that keep the winner's position)
    rotated_inputs: int = 1
    features_only: bool = False
    conv_impl: str = "auto"  # see deepsea.backends.conv
    max_pool_impl: str = "auto"  # see deepsea.backends.max_pool
    dense_impl: str = "auto"  # the dense layers' products: see deepsea.backends.dense_dot_general
    roll_impl: str = "xla"  # xla | pallas: see deepsea.layers.ConvRoll
    conv: ModuleDef = functools.partial(layers.Conv, kernel_size=(3, 3), padding="SAME")
    folded_conv: ModuleDef = functools.partial(layers.FoldedConv, kernel_size=(3, 3))
    downsample: ModuleDef = layers.MaxPool
    dense: ModuleDef = functools.partial(layers.Maxout, kernel_init=layers.orthogonal("linear"))
    classifier: ModuleDef = functools.partial(nn.Dense, kernel_init=layers.orthogonal("linear"))
    slice_layer: ModuleDef = layers.Slice
    conv_roll_layer: ModuleDef = layers.ConvRoll
    roll_layer: ModuleDef = layers.Roll
    view_pool_layer: ModuleDef = layers.Pool
    norm: ModuleDef = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool = False, raw_size: jax.Array | None = None, x2: jax.Array | None = None
    ) -> jax.Array:
        """Logits (or, with ``features_only``, the last hidden features).

        ``raw_size``: the images' original ``(height, width)``, late-fused (as
        logs) when ``size_features``.  With ``rotated_inputs = k`` the channels
        of ``x`` hold k differently rotated copies of each image (cp8: 0 and 45
        degrees); every copy is sliced and rolled, and the view pool runs over
        all ``k * V`` views.  ``x2`` is unused (the multiscale model's second input).
        """
        del x2
        sym = self.symmetry is not None
        k = self.rotated_inputs
        if k > 1:
            if x.shape[-1] % k:
                raise UserError(f"{k} rotated inputs need a channel count divisible by {k}, got {x.shape}")
            x = ops.stack_views(jnp.split(x, k, axis=-1))  # (k * B, H, W, C)
        compute = jnp.dtype(self.precision)
        x = x.astype(compute)
        fused = self.activation == "leaky_relu" and not self.batch_norm
        folded = int(self.fold_views) if sym else 0  # stages 0 .. folded - 1 run with the views folded
        if folded and (self.untied_biases or not fused):
            raise UserError(
                "model.fold_views computes the first stages with every view's kernel: it needs tied biases and the "
                "leaky ReLU after each convolution (no batch norm, no other activation)"
            )
        if self.roll_every_conv and not (sym and self.conv_roll):
            raise UserError("model.roll_every_conv needs a symmetry and conv rolls (model.conv_roll)")
        if not 0 <= folded <= len(self.stages):
            raise UserError(f"model.fold_views={self.fold_views}: expected 0 to {len(self.stages)} (the stages)")
        if sym and not folded:
            x = self.slice_layer(group=self.symmetry, name="slice")(x)
        for key, choices in (("activation", layers.ACTIVATIONS), ("dropout_kind", layers.DROPOUTS),
                             ("dense_units", ("maxout", "channel_out"))):  # fmt: skip
            if getattr(self, key) not in choices:
                raise UserError(f"model.{key}={getattr(self, key)!r}: expected one of {sorted(choices)}")
        dropout = layers.DROPOUTS[self.dropout_kind]
        dense = self.dense if self.dense_units == "maxout" else layers.ChannelOut
        init = layers.orthogonal("leaky_relu", self.negative_slope)
        slope = self.negative_slope if fused else None  # the convolution applies (and may fuse) a leaky ReLU
        for i, stage in enumerate(self.stages):
            for j, features in enumerate(stage):
                extra = {"untied_bias": True} if self.untied_biases else {}
                rolled = j > 0 and self.roll_every_conv  # the conv roll within a stage (a group convolution)
                if i < folded:  # the views folded into channels until the last folded stage's pool
                    conv = self.folded_conv(
                        features,
                        group=self.symmetry,
                        first=i == 0 and j == 0,
                        rolled=rolled or (i > 0 and j == 0 and self.conv_roll),  # a conv roll before it, folded in
                        negative_slope=slope,
                        implementation=self.conv_impl,
                        kernel_init=init,
                        name=f"conv{i}_{j}",
                    )
                else:
                    if rolled:
                        x = self.conv_roll_layer(
                            group=self.symmetry, implementation=self.roll_impl, name=f"conv_roll{i}_{j}"
                        )(x)
                    conv = self.conv(
                        features,
                        negative_slope=slope,
                        implementation=self.conv_impl,
                        kernel_init=init,
                        name=f"conv{i}_{j}",
                        **extra,
                    )
                x = conv(x)
                if self.batch_norm:
                    x = self.norm(use_running_average=not train, dtype=compute, name=f"norm{i}_{j}")(x)
                if not fused:
                    x = layers.ACTIVATIONS[self.activation](self.negative_slope, name=f"act{i}_{j}")(x)
            x = self.downsample(check_symmetry=sym, implementation=self.max_pool_impl, name=f"pool{i}")(x)
            if i + 1 == folded:  # a symmetric pooling grid commutes with the views' transforms: unfold after it
                x = ops.unfold_views(x, self.symmetry)
            if self.conv_dropout_rate:
                x = dropout(self.conv_dropout_rate, deterministic=not train)(x)
            if sym and self.conv_roll and i + 1 >= folded:  # a folded next stage's first convolution rolls itself
                x = self.conv_roll_layer(group=self.symmetry, implementation=self.roll_impl, name=f"conv_roll{i}")(x)
        x = x.reshape((x.shape[0], -1))
        x = dropout(self.dropout_rate, deterministic=not train)(x)
        x = dense(
            self.dense_features, self.maxout_pieces, dtype=compute, implementation=self.dense_impl, name="dense0"
        )(x)
        rolled = sym and self.dense_roll  # the roll feeds dense1, which runs per view; the view pool comes after it
        if rolled:
            x = self.roll_layer(group=self.symmetry, implementation=self.roll_impl, name="roll")(x)
        else:
            x = self._pool_views(x, k)
        if self.size_features:
            if raw_size is None:
                raise ValueError("this model late-fuses the raw image size: pass raw_size=(B, 2) heights and widths")
            sizes = size_features(raw_size).astype(x.dtype)
            if rolled:  # every view of an image gets its size (sorted sides: the same for every view)
                sizes = ops.stack_views([sizes] * (x.shape[0] // sizes.shape[0]))
            x = jnp.concatenate([x, sizes], axis=-1)
        x = dropout(self.dropout_rate, deterministic=not train)(x)
        x = dense(
            self.dense_features, self.maxout_pieces, dtype=compute, implementation=self.dense_impl, name="dense1"
        )(x)
        if rolled:
            x = self._pool_views(x, k)
        x = dropout(self.dropout_rate, deterministic=not train)(x)
        if self.features_only:
            return x
        return self.classifier(self.num_classes, name="logits")(x.astype(jnp.float32))

    def _pool_views(self, x: jax.Array, k: int) -> jax.Array:
        """The view pool over the group's views (with a symmetry), then over the ``k`` rotated input copies (RMS
        of RMS over equal groups is the RMS over all views)."""
        if self.symmetry is not None:
            x = self.view_pool_layer(group=self.symmetry, mode=self.view_pool_mode, name="view_pool")(x)
        if k > 1:
            x = ops.pool_stack(x.reshape((k, x.shape[0] // k, *x.shape[1:])), self.view_pool_mode)
        return x


def size_features(raw_size: jax.Array) -> jax.Array:
    """``(B, 2)`` raw ``(height, width)`` -> the logs of the larger and the smaller side, centred near 0.

    Sorted, so that a 90-degree rotation of the image (which swaps height and width) changes nothing.
    """
    logs = jnp.log(raw_size.astype(jnp.float32))
    return jnp.stack([jnp.max(logs, axis=-1), jnp.min(logs, axis=-1)], axis=-1) - 4.0


class MultiscaleNet(nn.Module):
    """The seed's multiscale net: a size-rescaled branch (``x``) and a fixed-scale branch (``x2``), merged
    before the softmax layer.  Both branches are :class:`RollNet` s with ``features_only=True``."""

    large: nn.Module
    small: nn.Module
    num_classes: int = 121
    classifier: ModuleDef = functools.partial(nn.Dense, kernel_init=layers.orthogonal("linear"))

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool = False, raw_size: jax.Array | None = None, x2: jax.Array | None = None
    ) -> jax.Array:
        if x2 is None:
            raise ValueError("the multiscale model needs its fixed-scale input x2 (Preprocess.second_size)")
        a = self.large(x, train, raw_size)
        b = self.small(x2, train, raw_size)
        return self.classifier(self.num_classes, name="logits")(jnp.concatenate([a, b], axis=-1))


class OrbitAverage(nn.Module):
    """Makes any network exactly invariant to a group at evaluation: the mean of its log-probabilities over
    the input's orbit (the ``V`` rotated and mirrored copies, stacked on the batch axis).

    In training (``train=True``) it is the network itself, on the one (augmented) input, so a plain network
    trains at its own cost and pays for the ``V`` copies only when it predicts.  The output is log-probabilities
    (a normalised geometric mean of the ``V`` predictions), which a softmax leaves unchanged.

    ``inner_symmetry``: a group the network is already invariant to (a rolled network's symmetry).  Copies that
    differ by one of its elements give the same prediction, so only one copy per coset is computed: a C4-invariant
    network averaged over D4 runs on the image and its mirror image (2 passes, not 8), and a network invariant to
    the whole group runs once.  The same function, up to rounding.
    """

    inner: nn.Module
    group: str | Group = "d4"
    inner_symmetry: str | Group | None = None

    def copies(self) -> tuple[int, ...]:
        """The group elements whose copies are computed (indices into ``get_group(group).elements``)."""
        g = get_group(self.group)
        if self.inner_symmetry is None:
            return tuple(range(g.order))
        if get_group(self.inner_symmetry).order >= g.order:  # C4 < D4: it contains the whole group
            return (g.identity,)
        return tuple(i for i, (k, _) in enumerate(g.elements) if k == 0)  # one per coset of the rotations

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool = False, raw_size: jax.Array | None = None, x2: jax.Array | None = None
    ) -> jax.Array:
        if train:
            return self.inner(x, train, raw_size, x2)
        g, copies = get_group(self.group), self.copies()
        v, b = len(copies), x.shape[0]
        tile = lambda a: None if a is None else ops.stack_views([a] * v)  # noqa: E731
        orbit = lambda a: None if a is None else ops.stack_views([g.act(i, a, axes=(1, 2)) for i in copies])  # noqa: E731
        logits = self.inner(orbit(x), False, tile(raw_size), orbit(x2))
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        return jnp.mean(logp.reshape(v, b, *logp.shape[1:]), axis=0)


def tiny_rollnet(num_classes: int = 5, symmetry: str | Group | None = "c4", **kwargs: Any) -> RollNet:
    """A few-thousand-parameter RollNet for tests and demonstrations (inputs of 11, 23, 47, 95 ...)."""
    defaults: dict[str, Any] = dict(stages=((4,), (8,)), dense_features=16, dropout_rate=0.0)
    defaults.update(kwargs)
    return RollNet(num_classes=num_classes, symmetry=symmetry, **defaults)


class _Bottleneck(nn.Module):
    """ResNet bottleneck block (1x1, 3x3 grouped, 1x1; BatchNorm; ReLU), as in flax's ImageNet example."""

    filters: int
    strides: int = 1
    groups: int = 1
    width_per_group: int = 64

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5)
        width = self.filters * self.groups * self.width_per_group // 64
        y = nn.Conv(width, (1, 1), use_bias=False)(x)
        y = nn.relu(norm()(y))
        y = nn.Conv(
            width, (3, 3), (self.strides, self.strides), padding=1, use_bias=False, feature_group_count=self.groups
        )(y)
        y = nn.relu(norm()(y))
        y = nn.Conv(self.filters * 4, (1, 1), use_bias=False)(y)
        y = norm(scale_init=nn.initializers.zeros)(y)
        if x.shape[-1] != self.filters * 4 or self.strides != 1:
            x = nn.Conv(self.filters * 4, (1, 1), (self.strides, self.strides), use_bias=False)(x)
            x = norm()(x)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """ResNet-50 (``groups=1``) or ResNeXt-50 32x4d (``groups=32, width_per_group=4``), any input channels.

    The second reference solution's backbone; trained with batch statistics (see ``TrainState.model_state``).
    """

    num_classes: int = 121
    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    num_filters: int = 64
    groups: int = 1
    width_per_group: int = 64

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool = False, raw_size: jax.Array | None = None, x2: jax.Array | None = None
    ) -> jax.Array:
        del raw_size, x2
        x = nn.Conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False, name="stem")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="stem_bn")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for i, blocks in enumerate(self.stage_sizes):
            for j in range(blocks):
                x = _Bottleneck(
                    self.num_filters * 2**i, 2 if i > 0 and j == 0 else 1, self.groups, self.width_per_group
                )(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="logits")(x)


ModelBuilder = Callable[..., nn.Module]
MODELS: dict[str, ModelBuilder] = {}
"""Model name -> builder, called as ``builder(num_classes, **config.model)`` with the keys it takes."""

_ROLLNET_FIELDS = frozenset(f.name for f in dataclasses.fields(RollNet)) - {"num_classes", "parent", "name"}


def register(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Registers a model builder under ``name``; its keyword parameters are the ``config.model`` keys it takes
    (a ``**fields`` parameter takes :class:`RollNet`'s fields)."""

    def add(builder: ModelBuilder) -> ModelBuilder:
        MODELS[name] = builder
        return builder

    return add


def _scaled(stages: Sequence[Sequence[int]], width: float) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(max(1, round(c * width)) for c in stage) for stage in stages)


@register("rollnet")
def rollnet(num_classes: int, width: float = 1.0, **fields: Any) -> RollNet:
    """:class:`RollNet` with any of its fields; ``width`` scales every layer's channels and units."""
    if not width > 0:
        raise UserError(f"model.width must be > 0, got {width}")
    fields["stages"] = _scaled(fields.get("stages", CONVROLL4_STAGES), width)
    fields["dense_features"] = max(1, round(fields.get("dense_features", RollNet.dense_features) * width))
    return RollNet(num_classes=num_classes, **fields)


@register("convroll4")
def convroll4(num_classes: int, width: float = 1.0, **fields: Any) -> RollNet:
    """The published network: cyclic (C4), conv rolls, no dense roll, RMS view pool."""
    return rollnet(num_classes, width, **{**fields, "symmetry": "c4", "dense_roll": False, "view_pool_mode": "rms"})


@register("plain")
def plain(num_classes: int, width: float = 1.0, **fields: Any) -> RollNet:
    """The same backbone without symmetry (no slice, rolls or view pool)."""
    return rollnet(num_classes, width, **{**fields, "symmetry": None})


@register("cp8")
def cp8(num_classes: int, width: float = 1.0, **fields: Any) -> RollNet:
    """Inputs at 0 and 45 degrees stacked in channels, each sliced into its views, pooled over all of them."""
    return rollnet(num_classes, width, **{**fields, "rotated_inputs": 2})


@register("multiscale")
def multiscale(
    num_classes: int,
    width: float = 1.0,
    small_stages: Sequence[Sequence[int]] = CONVROLL4_STAGES[:3],
    **fields: Any,
) -> MultiscaleNet:
    """A size-rescaled branch (input ``x``, ``stages``) and a fixed-scale branch (``x2``, ``small_stages``),
    merged before the softmax layer."""
    large = rollnet(num_classes, width, **{**fields, "features_only": True})
    small = rollnet(
        num_classes, width, **{**fields, "stages": small_stages, "features_only": True, "size_features": False}
    )
    return MultiscaleNet(large=large, small=small, num_classes=num_classes)


@register("resnet50")
def resnet50(num_classes: int, width: float = 1.0) -> ResNet:
    """ResNet-50 (the second reference), ``width`` scaling the filters."""
    return ResNet(num_classes, num_filters=max(1, round(64 * width)))


@register("resnext50")
def resnext50(num_classes: int, width: float = 1.0) -> ResNet:
    """ResNeXt-50 32x4d (the second reference), ``width`` scaling the filters (a multiple of 1/4, so that every
    grouped convolution keeps its 32 groups of at least 4 channels)."""
    filters = round(64 * width)
    if filters < 16 or filters % 16:
        raise UserError(f"resnext50 needs model.width a multiple of 0.25 (32 groups of 4 channels), got {width}")
    return ResNet(num_classes, num_filters=filters, groups=32, width_per_group=4)


def builder_parameters(builder: ModelBuilder) -> frozenset[str]:
    """The ``config.model`` keys a registered builder takes (its keyword parameters; :class:`RollNet`'s fields for
    a ``**fields`` parameter)."""
    params = inspect.signature(builder).parameters.values()
    named = {p.name for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD} - {"num_classes"}
    takes_fields = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    return frozenset(named | (_ROLLNET_FIELDS if takes_fields else set()))


def build_model(cfg: Any, num_classes: int) -> nn.Module:
    """A model from an experiment's ``config.model`` (a ConfigDict or dict): ``MODELS[name]`` called with the keys
    it takes, wrapped in :class:`OrbitAverage` when ``orbit_average`` is ``"c4"`` or ``"d4"`` (exactly invariant
    predictions, paid for at evaluation only)."""
    items = dict(cfg.items())
    name = items.pop("name", "rollnet")
    orbit = items.pop("orbit_average", "")
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    if items.get("precision", "float32") not in PRECISIONS:
        raise UserError(f"model.precision must be one of {PRECISIONS}, got {items['precision']!r}")
    builder = MODELS[name]
    accepted = builder_parameters(builder)
    ignored = _set_but_not_taken(items, accepted)
    if ignored:
        raise UserError(
            f"model {name!r} does not take model.{', model.'.join(ignored)} (set away from the recipe's default): "
            "it would be silently ignored"
        )
    model = builder(num_classes, **{k: v for k, v in items.items() if k in accepted})
    if not orbit:
        return model
    return OrbitAverage(model, orbit, model.symmetry if isinstance(model, RollNet) else None)


# where layers run: moot for a model without those layers
_BACKEND_CHOICES = frozenset({"conv_impl", "max_pool_impl", "dense_impl", "roll_impl"})


def _defaults() -> dict[str, Any]:
    """Every ``config.model`` key's default: :class:`RollNet`'s fields and the builders' keyword parameters (the
    recipe, :func:`deepsea.configs.base_config`, holds the same values)."""
    out = {f.name: f.default for f in dataclasses.fields(RollNet) if f.default is not dataclasses.MISSING}
    for builder in MODELS.values():
        for p in inspect.signature(builder).parameters.values():
            if p.default is not inspect.Parameter.empty:
                out.setdefault(p.name, p.default)
    return out


def _set_but_not_taken(items: dict[str, Any], accepted: frozenset[str]) -> list[str]:
    """The keys of ``items`` the builder does not take whose values differ from their defaults."""
    defaults = _defaults()
    return sorted(
        k for k, v in items.items()
        if k not in accepted and k not in _BACKEND_CHOICES and (k not in defaults or defaults[k] != v)
    )  # fmt: skip


def network_layers(params: Any) -> Any:
    """The network's per-layer parameters, through any :class:`OrbitAverage` wrapper (which has none)."""
    while set(params) == {"inner"}:
        params = params["inner"]
    return params


def count_params(params: Any) -> dict[str, int]:
    """Parameter count per top-level layer (module name), in the order flax created them."""
    counts = {}
    for name, sub in network_layers(params).items():
        counts[name] = sum(int(x.size) for x in jax.tree.leaves(sub))
    return counts
