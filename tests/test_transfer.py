"""Fine-tuning (``train.init_from``): a run's layers but the classifier initialise a network for another class
list; shared classes keep their classifier columns; frozen steps keep the copied layers exactly; a network built
otherwise is refused by name."""

import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest

from deepsea.configs import apply_overrides, load_experiment
from deepsea.data.synthetic import SYNTHETIC_CLASSES, make_synthetic
from deepsea.errors import UserError
from deepsea.models import network_layers
from deepsea.runs import restore_run
from deepsea.step import create_train_state
from deepsea.train import train
from deepsea.transfer import HEAD, init_from_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = list(SYNTHETIC_CLASSES)


def _config(data: str, *overrides: str):
    c = load_experiment(os.path.join(ROOT, "experiments", "synthetic.py"), small=True)
    c.data.path = data
    return apply_overrides(c, list(overrides))


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A small run on the first 8 generated classes."""
    base = tmp_path_factory.mktemp("transfer")
    data = make_synthetic(base / "a", per_class=10, classes=NAMES[:8], progress=False)
    run = str(base / "run_a")
    train(_config(data, "train.steps=6"), run, progress=False)
    return run, base


def test_the_copied_layers_and_the_shared_classes_columns_come_from_the_run(source_run):
    run, _ = source_run
    src = restore_run(run)
    classes = [*NAMES[6:8], *NAMES[8:12]]  # two shared with the run, four new
    fresh = create_train_state(_config("", "train.steps=6"), len(classes)).state
    params, _, took = init_from_run(run, fresh.params, fresh.model_state, classes)
    mine, theirs = network_layers(params), network_layers(src.variables["params"])
    before = network_layers(fresh.params)
    assert set(took.layers) == set(mine) - {HEAD} and took.shared_classes == tuple(NAMES[6:8])
    for name in took.layers:
        for a, b in zip(jax.tree.leaves(mine[name]), jax.tree.leaves(theirs[name]), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    kernel, their_kernel = np.asarray(mine[HEAD]["kernel"]), np.asarray(theirs[HEAD]["kernel"])
    at = [src.classes.index(c) for c in NAMES[6:8]]  # the run's columns of the shared classes
    np.testing.assert_array_equal(kernel[:, :2], their_kernel[:, at])
    np.testing.assert_array_equal(kernel[:, 2:], np.asarray(before[HEAD]["kernel"])[:, 2:])  # new: fresh
    np.testing.assert_array_equal(np.asarray(mine[HEAD]["bias"])[:2], np.asarray(theirs[HEAD]["bias"])[at])


def test_fine_tuning_trains_a_new_head_with_the_backbone_frozen_then_refuses_another_network(source_run):
    run, base = source_run
    data = make_synthetic(base / "b", per_class=10, classes=NAMES[8:12], progress=False)
    out = str(base / "run_b")
    cfg = _config(data, f"train.init_from={run}", "train.steps=4", "train.pretrained_frozen_steps=100")
    result = train(cfg, out, progress=False)
    took = json.loads(Path(out, "init_from.json").read_text())
    assert took["workdir"] == run and took["shared_classes"] == []
    mine, theirs = network_layers(result.state.params), network_layers(restore_run(run).variables["params"])
    for name in took["layers"]:  # frozen for all 4 steps: bit for bit the run's
        for a, b in zip(jax.tree.leaves(mine[name]), jax.tree.leaves(theirs[name]), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.asarray(mine[HEAD]["kernel"]).shape[-1] == 4
    src_pp = json.loads(Path(run, "preprocess.json").read_text())
    new_pp = json.loads(Path(out, "preprocess.json").read_text())
    assert (new_pp["mean"], new_pp["std"]) == (src_pp["mean"], src_pp["std"])  # the run's normalisation
    wider = _config(data, f"train.init_from={run}", "train.steps=2", "model.dense_features=32")
    with pytest.raises(UserError, match=r"dense0/.*has shape .* in the run and .* here: build the network as"):
        train(wider, str(base / "run_c"), progress=False)
    with pytest.raises(UserError, match="is not a run folder"):
        train(_config(data, f"train.init_from={base}", "train.steps=2"), str(base / "run_d"), progress=False)
