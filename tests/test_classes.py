"""Class mappings (merge, rename, drop), minimum class sizes and class weights in the loss."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepsea.configs import apply_overrides, load_experiment
from deepsea.data import FolderError, ImageFolder, map_classes, read_class_map
from deepsea.errors import UserError
from deepsea.step import create_train_state, make_train_step
from deepsea.train import class_weights, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _folder():
    classes = ("a", "b", "c", "d")
    labels = np.array([0, 0, 1, 2, 2, 2, 3], np.int32)
    return ImageFolder("/data", tuple(f"/data/{classes[y]}/{i}.jpg" for i, y in enumerate(labels)), labels, classes)


def test_a_mapping_merges_renames_and_drops_classes():
    f = _folder()
    m = map_classes(f, {"a": "ab", "b": "ab", "c": None, "d": "delta"})
    assert m.classes == ("ab", "delta") and list(m.labels) == [0, 0, 0, 1]
    assert m.paths == (f.paths[0], f.paths[1], f.paths[2], f.paths[6])
    assert map_classes(f, {}).classes == f.classes
    with pytest.raises(FolderError, match=r"does not have: \['zz'\]"):
        map_classes(f, {"zz": "a"})
    with pytest.raises(FolderError, match="drops every class"):
        map_classes(f, dict.fromkeys(f.classes))


def test_mapping_files(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"a": "ab", "c": None, "d": ""}))
    assert read_class_map(str(tmp_path / "m.json")) == {"a": "ab", "c": None, "d": None}
    (tmp_path / "m.csv").write_text("a,ab\nb,ab\nc,\n")
    assert read_class_map(str(tmp_path / "m.csv")) == {"a": "ab", "b": "ab", "c": None}
    (tmp_path / "bad.csv").write_text("a,b,c\n")
    with pytest.raises(FolderError, match="line"):
        read_class_map(str(tmp_path / "bad.csv"))
    with pytest.raises(FolderError, match="no class mapping file"):
        read_class_map(str(tmp_path / "none.json"))


def test_class_weights_give_every_class_the_same_total_and_average_one():
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    w = class_weights(labels, 4, 1.0)
    totals = np.bincount(labels, weights=w[labels])[:3]
    np.testing.assert_allclose(totals, totals[0], rtol=1e-5)
    assert np.mean(w[labels]) == pytest.approx(1.0, rel=1e-6)
    half = class_weights(labels, 4, 0.5)
    assert half[2] / half[0] == pytest.approx(np.sqrt(90), rel=1e-5)
    assert class_weights(labels, 4, 0.0) is None


def test_the_loss_weighs_each_example(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DEEPSEA_DATA", str(tmp_path_factory.getbasetemp() / "deepsea-data"))
    config = load_experiment(os.path.join(ROOT, "experiments", "synthetic.py"), small=True)
    apply_overrides(config, ["model.dropout_rate=0.0", "model.symmetry=none", "data.size=23"])
    setup = create_train_state(config, 12)
    step = make_train_step(setup.model, setup.optimizer, setup.schedule)
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.standard_normal((4, 23, 23, 1)), jnp.float32),
        "raw_size": jnp.full((4, 2), 50.0),
        "label": jnp.asarray([0, 1, 2, 3], jnp.int32),
    }
    losses = {}
    for name, weight in (("none", None), ("ones", [1.0] * 4), ("one-hot", [4.0, 0, 0, 0]), ("twos", [2.0] * 4)):
        state = create_train_state(config, 12).state
        b = dict(batch) if weight is None else {**batch, "weight": jnp.asarray(weight, jnp.float32)}
        losses[name] = float(step(state, b, jax.random.key(0))[1]["loss"])
    # the first example four times, unweighted: its own loss (the same shapes: no new compilation)
    first_only = {k: jnp.repeat(v[:1], 4, axis=0) for k, v in batch.items()}
    state = create_train_state(config, 12).state
    first = float(step(state, first_only, jax.random.key(0))[1]["loss"])
    assert losses["ones"] == pytest.approx(losses["none"], rel=1e-6)
    assert losses["twos"] == pytest.approx(2 * losses["none"], rel=1e-6)
    assert losses["one-hot"] == pytest.approx(first, rel=1e-5)  # only the first example counts


@pytest.mark.slow
def test_a_run_keeps_its_class_mapping_for_evaluation(tmp_path, monkeypatch):
    from deepsea.evaluation import evaluate_run
    from deepsea.runs import restore_run

    monkeypatch.setenv("DEEPSEA_DATA", str(tmp_path / "cache"))
    config = load_experiment(os.path.join(ROOT, "experiments", "synthetic.py"), small=True)
    (tmp_path / "map.csv").write_text("disc_small,disc\ndisc_large,disc\nrod,\n")
    overrides = [f"data.class_map={tmp_path / 'map.csv'}", "train.steps=2", "train.class_weight_power=0.5"]
    apply_overrides(config, [*overrides, "model.symmetry=none"])  # a plain net compiles faster; the mapping is tested
    workdir = str(tmp_path / "run")
    # a typo in the map is refused by name before anything trains (it would have kept the class it meant)
    (tmp_path / "typo.csv").write_text("disc_small,disc\nrdo,\n")
    typo = load_experiment(os.path.join(ROOT, "experiments", "synthetic.py"), small=True)
    apply_overrides(typo, [f"data.class_map={tmp_path / 'typo.csv'}", "model.symmetry=none"])
    with pytest.raises(UserError, match=r"'rdo' \(did you mean 'rod'\?\); nothing was trained"):
        train(typo, str(tmp_path / "typo_run"), progress=False)
    assert not os.path.exists(tmp_path / "typo_run" / "config.json")  # no run was started
    train(config, workdir, progress=False)
    run = restore_run(workdir, "latest")
    assert len(run.classes) == 10 and "disc" in run.classes and "rod" not in run.classes
    saved = json.loads((tmp_path / "run" / "class_map.json").read_text())
    assert saved["disc_small"] == "disc" and saved["rod"] is None and saved["star"] == "star"
    ev = evaluate_run(run, progress=False)
    # a validation image for every class of 10 images, two for the merged one of 20
    assert ev.probs.shape == (11, 10) and np.bincount(ev.labels).tolist() == [
        2 if c == "disc" else 1 for c in run.classes
    ]


def test_balanced_sampling_draws_every_class_equally_and_reproducibly(tmp_path):
    from deepsea.data import AugmentedSource, Preprocess

    labels = np.array([0] * 80 + [1] * 15 + [2] * 5, np.int32)
    paths = [str(tmp_path / f"{i}.png") for i in range(len(labels))]
    src = AugmentedSource(paths, labels, Preprocess(size=9), balanced=True, seed=3)
    order = np.concatenate([src._permutation(e) for e in range(30)])
    share = np.bincount(labels[order], minlength=3) / len(order)
    np.testing.assert_allclose(share, 1 / 3, atol=0.02)
    again = AugmentedSource(paths, labels, Preprocess(size=9), balanced=True, seed=3)
    np.testing.assert_array_equal(again._permutation(7), src._permutation(7))  # exact resume
    plain = AugmentedSource(paths, labels, Preprocess(size=9), seed=3)
    assert sorted(plain._permutation(0)) == list(range(len(labels)))
