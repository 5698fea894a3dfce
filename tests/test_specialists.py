"""Specialists: the confusable group, the collapsed and merged probabilities against numpy in float64, and the
whole path on generated data (prepare, train on the general run's split with its collapsed predictions, merge)."""

import json
import os

import numpy as np
import pytest

from deepsea.configs import apply_overrides, load_experiment
from deepsea.errors import UserError
from deepsea.specialists import OTHER, collapse, confusable_group, group_class_map, merge

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("a", "b", "c", "d", "e")


def _confused_probs(rng):
    """Class b's images give c 0.4 and c's give b 0.3 (the pair); d's give b 0.2 and c 0.1; the rest is mild."""
    labels = np.repeat(np.arange(5), 20)
    probs = np.full((100, 5), 0.02)
    probs[np.arange(100), labels] = 0.92
    probs[labels == 1] = [0.02, 0.52, 0.40, 0.04, 0.02]
    probs[labels == 2] = [0.02, 0.30, 0.64, 0.02, 0.02]
    probs[labels == 3] = [0.02, 0.20, 0.10, 0.66, 0.02]
    return probs + rng.uniform(0, 1e-3, probs.shape), labels


def test_the_confusable_group_starts_from_the_most_confused_pair_and_grows_by_confusion(rng):
    probs, labels = _confused_probs(rng)
    assert confusable_group(probs, labels, 2) == [1, 2]
    assert confusable_group(probs, labels, 3) == [1, 2, 3]
    with pytest.raises(UserError, match="2 to 5 classes, not 6"):
        confusable_group(probs, labels, 6)
    assert group_class_map(CLASSES, [1, 2]) == {"a": OTHER, "b": "b", "c": "c", "d": OTHER, "e": OTHER}


def test_collapse_and_merge_against_numpy_in_float64(rng):
    general = rng.dirichlet(np.ones(5), 7)
    group = [3, 1]
    collapsed, spec_classes = collapse(general, CLASSES, group)
    assert spec_classes == (OTHER, "b", "d")  # sorted, as the specialist's run holds its classes
    np.testing.assert_allclose(collapsed[:, 0], general[:, [0, 2, 4]].sum(1), rtol=1e-6)
    np.testing.assert_allclose(collapsed[:, 1:], general[:, [1, 3]], rtol=1e-6)
    specialist = rng.dirichlet(np.ones(3), 7)
    merged = merge(general, specialist, CLASSES, spec_classes, group)
    np.testing.assert_allclose(merged[:, [0, 2, 4]], general[:, [0, 2, 4]], rtol=1e-6)  # outside: the general's
    mass = general[:, [1, 3]].sum(1)
    share = specialist[:, [1, 2]] / specialist[:, [1, 2]].sum(1, keepdims=True)  # b, d within the group
    np.testing.assert_allclose(merged[:, [1, 3]], mass[:, None] * share, rtol=1e-5)
    np.testing.assert_allclose(merged.sum(1), 1.0, rtol=1e-6)
    with pytest.raises(UserError, match="not the group's"):
        merge(general, specialist, CLASSES, ("b", "d", OTHER), group)


@pytest.fixture(scope="module")
def general(train_small):
    return train_small("specialists", ["train.steps=15", "model.dropout_rate=0.0"])


def test_a_specialist_is_prepared_trained_on_the_general_split_and_merged(general, cli, tmp_path):
    from deepsea.runs import training_set, validation_set
    from deepsea.train import train

    out = tmp_path / "spec"
    printed = cli("specialist", "--workdir", general, "--size", "3", "--out", str(out))
    assert "confusable group of 3:" in printed and "deepsea train" in printed
    group = json.loads((out / "group.json").read_text())["classes"]
    class_map = json.loads((out / "class_map.json").read_text())
    assert len(group) == 3 and sorted(v for v in set(class_map.values())) == sorted([*group, OTHER])
    config = load_experiment(os.path.join(ROOT, "experiments", "synthetic.py"), small=True)
    apply_overrides(config, ["train.steps=4", f"data.class_map={out / 'class_map.json'}",
                             f"data.distill={out / 'teacher.npz'}", f"data.split_from={general}"])  # fmt: skip
    train(config, str(out / "run"), progress=False)
    # the specialist validates on the general run's validation images and trains on none of them
    held = set(validation_set(general).paths)
    assert set(validation_set(str(out / "run")).paths) == held
    assert not held & set(training_set(str(out / "run"))[0])
    scores = tmp_path / "scores.jsonl"
    printed = cli("specialist", "--workdir", general, "--merge", str(out / "run"), "--scores", str(scores))
    assert "general: " in printed and "merged with" in printed and "on the group's images" in printed
    record = json.loads(scores.read_text())
    assert record["group"] == 3 and record["merged"]["log_loss"] > 0
    assert "give --out" in cli("specialist", "--workdir", general, rc=2)
