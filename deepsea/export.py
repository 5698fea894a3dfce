"""A trained run as a self-contained model folder that predicts without the training code.

:func:`export_run` writes these files:

- ``model.jax``: the network's prediction function, ``(parameters, image, raw_size[, image2]) -> probabilities``,
  serialized with :mod:`jax.export` (StableHLO) with a symbolic batch size, lowered with XLA's own
  convolutions and pooling, so that it runs on every platform it was exported for;
- ``model_onednn.jax`` (where oneDNN was available at export, the platforms include the CPU and the network uses
  oneDNN's operations): the same function as the run computes it on the CPU, with this package's oneDNN
  convolutions and pooling (FFI calls).  :func:`load_model` takes it where this package's oneDNN handlers load
  (JAX on the CPU), and ``model.jax`` elsewhere;
- ``params.npz``: the parameters (and batch statistics), as a flat list in the order the function takes them;
- ``model.json``: everything else prediction needs: the classes, the preprocessing (patch, rescale, global
  statistics, background, pixel size), the test-time augmentation ranges, the calibration and thresholds the run
  had, and where the model came from.

:func:`load_model` reads the folder back as an :class:`ExportedModel`, which :func:`deepsea.stream.predict_tree`
(``deepsea predict --model DIR``) uses like a restored run.  Loading imports neither the experiment module, nor
the model definitions, nor Flax or Optax: only JAX, numpy and this package's image preprocessing.

:func:`export_onnx` writes the same network as ``model.onnx`` (ONNX, converted by jax2onnx, the parameters
inside, a symbolic batch size) beside the same ``model.json``; :func:`load_model` runs it with onnxruntime (CPU or
CUDA), the runtime the IFCB community's tools use, without JAX.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import zipfile
from typing import Any

import jax
import numpy as np

from deepsea.data import AugmentRanges, Preprocess
from deepsea.errors import UserError
from deepsea.predictor import BatchPredictor

__all__ = ["FORMAT", "ExportedModel", "export_onnx", "export_run", "fitted_extras", "load_model"]

FORMAT = 1
_MODULE, _PARAMS, _META, _ONNX = "model.jax", "params.npz", "model.json", "model.onnx"
_ONEDNN_MODULE = "model_onednn.jax"


def _inputs(pp: Preprocess) -> tuple[str, ...]:
    return ("image", "raw_size", "image2") if pp.second_size else ("image", "raw_size")


def _xla_network(run: Any) -> tuple[Any, Any]:
    """The run's network with XLA's operations (no FFI custom calls, which neither a serialized module nor ONNX can
    carry), and its model config."""
    from deepsea.models import build_model

    mc = run.config.model.copy_and_resolve_references()
    mc.conv_impl = "xla"
    mc.max_pool_impl = "slices"
    mc.dense_impl = "xla"
    return build_model(mc, len(run.classes)), mc


def _input_shapes(pp: Preprocess, batch: Any) -> dict[str, tuple]:
    return {
        "image": (batch, pp.size, pp.size, pp.channels * (1 + len(pp.extra_rotations))),
        "raw_size": (batch, 2),
        "image2": (batch, pp.second_size, pp.second_size, pp.channels),
    }


def _write_meta(run: Any, out: str, mc: Any, names: tuple[str, ...], runtime: str, extra: dict) -> None:
    from deepsea import rundir

    rundir.save_json(
        os.path.join(out, _META),
        {
            "format": FORMAT,
            "runtime": runtime,
            "classes": list(run.classes),
            "preprocess": rundir.preprocess_to_dict(run.preprocess),
            "tta_ranges": dataclasses.asdict(run.tta_ranges),
            "calibration": run.calibration,
            "thresholds": run.thresholds,
            "class_map": run.class_map,
            "batch_size": run.batch_size,
            "inputs": list(names),
            "source": {
                "workdir": os.path.abspath(run.workdir),
                "checkpoint": run.key,
                "step": run.step,
                "model": mc.name,
                "precision": mc.precision,
                "jax": jax.__version__,
            },
            **extra,
        },
    )


def export_run(run: Any, out: str, platforms: tuple[str, ...] = ("cpu",)) -> str:
    """Writes ``run`` (a :class:`deepsea.runs.Run`) to the folder ``out`` (created; files replaced) for
    ``platforms`` (``"cpu"``, ``"cuda"``, ``"rocm"``, ``"tpu"``; one module serves them all).  Returns ``out``."""
    import jax.numpy as jnp

    from deepsea.backends import onednn
    from deepsea.step import forward

    xla_model, mc = _xla_network(run)
    leaves, treedef = jax.tree_util.tree_flatten(run.variables)
    names = _inputs(run.preprocess)

    def predict_with(model: Any):
        def predict(params: list[jax.Array], *inputs: jax.Array) -> jax.Array:
            batch = dict(zip(names, inputs, strict=True))
            logits, _ = forward(model, jax.tree_util.tree_unflatten(treedef, params), batch, False)
            return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

        return jax.jit(predict)

    (b,) = jax.export.symbolic_shape("b")
    shapes = _input_shapes(run.preprocess, b)
    params = [jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype) for x in leaves]
    specs = [jax.ShapeDtypeStruct(shapes[n], jnp.float32) for n in names]
    exported = jax.export.export(predict_with(xla_model), platforms=platforms)(params, *specs)
    os.makedirs(out, exist_ok=True)
    _write(os.path.join(out, _MODULE), bytes(exported.serialize()))
    extra: dict[str, Any] = {}
    fast = os.path.join(out, _ONEDNN_MODULE)
    targets: list[str] = []
    if "cpu" in platforms and onednn.available():
        allowed = [jax.export.DisabledSafetyCheck.custom_call(t) for t in onednn.FFI_TARGETS]
        # the run's own network: oneDNN's operations where its layers take them
        cpu = jax.export.export(predict_with(run.model), platforms=("cpu",), disabled_checks=allowed)(params, *specs)
        targets = sorted(set(re.findall(r"custom_call @(deepsea_\w+)", cpu.mlir_module())))
    if targets:
        _write(fast, bytes(cpu.serialize()))
        extra["onednn_module"] = {"file": _ONEDNN_MODULE, "targets": targets}
    elif os.path.exists(fast):
        os.remove(fast)  # a previous export's, of other parameters
    tmp = os.path.join(out, f".{_PARAMS}.tmp.npz")
    np.savez(tmp, **{f"p{i:05d}": np.asarray(x) for i, x in enumerate(leaves)})
    os.replace(tmp, os.path.join(out, _PARAMS))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(run.variables)[0]]
    parameters = [{"path": p, "shape": list(np.shape(x))} for p, x in zip(paths, leaves, strict=True)]
    _write_meta(run, out, mc, names, "jax", {"platforms": list(platforms), "parameters": parameters, **extra})
    return out


def export_onnx(run: Any, out: str) -> str:
    """Writes ``run`` to the folder ``out`` as ``model.onnx`` (float32 ONNX with its parameters, any batch size;
    converted by jax2onnx) and ``model.json``.  Returns ``out``."""
    import jax.numpy as jnp

    from deepsea.step import forward

    try:
        from jax2onnx import to_onnx
    except ImportError:
        raise UserError("ONNX export needs jax2onnx: pip install 'deepsea[onnx]'") from None
    model, mc = _xla_network(run)
    variables = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                             run.variables)  # fmt: skip
    names = _inputs(run.preprocess)

    def predict(*inputs: jax.Array) -> jax.Array:
        logits, _ = forward(model, variables, dict(zip(names, inputs, strict=True)), False)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    shapes = _input_shapes(run.preprocess, "B")
    proto = to_onnx(predict, [shapes[n] for n in names], model_name="deepsea", input_names=list(names),
                    output_names=["probabilities"])  # fmt: skip
    os.makedirs(out, exist_ok=True)
    _write(os.path.join(out, _ONNX), proto.SerializeToString())
    import importlib.metadata

    _write_meta(run, out, mc, names, "onnx", {"jax2onnx": importlib.metadata.version("jax2onnx")})
    return out


def fitted_extras(run: Any) -> tuple[list[str], list[str]]:
    """The calibration and thresholds a run has (which :func:`export_run` carries into the model), and those of
    them fitted on another checkpoint's or precision's predictions (the exported model will not apply them)."""
    extras = [name for name in ("calibration", "thresholds") if getattr(run, name) is not None]
    stale = [n for n in extras if getattr(run, n).get("checkpoint", run.key) != run.key]
    return extras, stale


def _write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


@dataclasses.dataclass(frozen=True)
class ExportedModel(BatchPredictor):
    """An exported model loaded for prediction: a :class:`deepsea.predictor.Predictor`.  A calibration or thresholds
    fitted for it later (``deepsea calibrate --workdir MODEL --data DIR``) are ``calibration.json`` and
    ``thresholds.json`` in its folder, and replace those it was exported with."""

    workdir: str  # the model folder
    classes: tuple[str, ...]
    preprocess: Preprocess
    tta_ranges: AugmentRanges
    batch_size: int
    key: str  # the checkpoint it was exported from (calibration and thresholds are fitted per checkpoint)
    calibration: dict | None
    thresholds: dict | None
    meta: dict
    module: str  # the file that predicts: model.jax, model_onednn.jax or model.onnx
    _fn: Any = dataclasses.field(repr=False)
    _params: list = dataclasses.field(repr=False)

    fixed_tta = None  # any TTA setting
    validation_split = None  # it keeps no validation split: score it on a labelled folder

    @property
    def cache_key(self) -> str:
        """Its predictions differ from the run's in rounding (XLA's operations or ONNX's, its precision): cached
        apart."""
        runtime = self.meta.get("runtime", "jax") + ("+onednn" if self.module == _ONEDNN_MODULE else "")
        return f"exported:{self.key}:{self.meta['source'].get('precision', 'float32')}:{runtime}"

    @property
    def class_map(self) -> dict | None:
        return self.meta.get("class_map")

    def predict_batch(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Softmax probabilities (float32) of a batch of model inputs (any batch size)."""
        missing = [n for n in self.meta["inputs"] if n not in batch]
        if missing:
            raise UserError(f"the batch lacks the model input(s) {missing} (it has {sorted(batch)})")
        return np.asarray(self._fn(self._params, *(np.asarray(batch[n], np.float32) for n in self.meta["inputs"])))


def load_model(path: str, onednn: bool | None = None) -> ExportedModel:
    """Reads a folder written by :func:`export_run` or :func:`export_onnx`; a missing file or another format is an
    error naming it.  ``onednn``: whether to predict with ``model_onednn.jax`` (the run's oneDNN operations on the
    CPU) rather than ``model.jax`` (XLA's, any platform); None takes it where it runs here (JAX on the CPU, this
    package's oneDNN handlers built, the module's targets among them); True insists (an error saying why not)."""
    from deepsea import rundir

    meta_path = os.path.join(path, _META)
    onnx = os.path.isfile(os.path.join(path, _ONNX))
    for name in (_ONNX, _META) if onnx else (_MODULE, _PARAMS, _META):
        if not os.path.isfile(os.path.join(path, name)):
            raise FileNotFoundError(f"{path!r} is not an exported model: {name} is missing (deepsea export writes it)")
    try:
        meta = rundir.load_json(meta_path)
    except json.JSONDecodeError as e:
        raise UserError(f"{meta_path}: not valid JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{meta_path}: format {meta.get('format')!r}; this deepsea reads format {FORMAT}")
    module = _ONNX if onnx else _choose_module(path, meta, onednn)
    fn, params = _load_onnx(path, meta) if onnx else _load_jax(path, meta, module)
    fitted = {}
    for name in ("calibration", "thresholds"):  # fitted for the exported model itself, after export
        extra = os.path.join(path, f"{name}.json")
        fitted[name] = rundir.load_json(extra) if os.path.isfile(extra) else meta.get(name)
    return ExportedModel(
        workdir=path,
        classes=tuple(meta["classes"]),
        preprocess=rundir.preprocess_from_dict(meta["preprocess"]),
        tta_ranges=AugmentRanges(**meta["tta_ranges"]),
        batch_size=int(meta["batch_size"]),
        key=meta["source"]["checkpoint"],
        calibration=fitted["calibration"],
        thresholds=fitted["thresholds"],
        meta=meta,
        module=module,
        _fn=fn,
        _params=params,
    )


def _choose_module(path: str, meta: dict, onednn: bool | None) -> str:
    """``model_onednn.jax`` where it can run here and ``onednn`` is not False, else ``model.jax``."""
    if onednn is False:
        return _MODULE
    info = meta.get("onednn_module")
    reason = None
    if not info or not os.path.isfile(os.path.join(path, info["file"])):
        reason = f"{path} has no {_ONEDNN_MODULE} (exported without oneDNN, or for platforms without the CPU)"
    else:
        from deepsea.backends import onednn as backend

        unknown = sorted(set(info["targets"]) - set(backend.FFI_TARGETS))
        if not backend.available():  # builds and registers the handlers
            reason = f"this package's oneDNN handlers are not available here ({backend.unavailable_reason()})"
        elif unknown:
            reason = f"{info['file']} calls oneDNN handlers this deepsea does not have: {unknown}"
    if reason is None:
        return info["file"]
    if onednn:
        raise UserError(f"cannot predict with oneDNN: {reason}")
    return _MODULE


def _load_jax(path: str, meta: dict, module: str) -> tuple[Any, list]:
    meta_path = os.path.join(path, _META)
    try:
        with open(os.path.join(path, module), "rb") as f:
            exported = jax.export.deserialize(bytearray(f.read()))
    except Exception as e:  # a truncated or foreign file: the flatbuffer's error names nothing
        raise UserError(f"{os.path.join(path, module)}: not a readable exported module ({type(e).__name__})") from e
    try:
        with open(os.path.join(path, _PARAMS), "rb") as fh, np.load(fh) as f:  # closed on a bad file too
            params = [f[f"p{i:05d}"] for i in range(len(f.files))]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise UserError(f"{os.path.join(path, _PARAMS)}: not a readable parameter file ({e})") from e
    want = [tuple(p["shape"]) for p in meta["parameters"]]
    if [x.shape for x in params] != want:
        raise UserError(f"{os.path.join(path, _PARAMS)}: parameter shapes do not match {meta_path}")
    return jax.jit(exported.call), [jax.device_put(x) for x in params]


def _load_onnx(path: str, meta: dict) -> tuple[Any, list]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError(
            f"{path} is an ONNX model: predicting with it needs onnxruntime (pip install onnxruntime)"
        ) from None
    file = os.path.join(path, _ONNX)
    try:
        session = ort.InferenceSession(file, providers=ort.get_available_providers())
    except Exception as e:  # onnxruntime's own error types; a damaged file
        raise UserError(f"{file}: not a readable ONNX model ({type(e).__name__})") from e
    inputs = [i.name for i in session.get_inputs()]
    if inputs != meta["inputs"]:
        raise UserError(f"{file} takes the inputs {inputs}, its model.json says {meta['inputs']}")

    def fn(_params: list, *arrays: np.ndarray) -> np.ndarray:
        return session.run(None, dict(zip(inputs, arrays, strict=True)))[0]

    return fn, []
