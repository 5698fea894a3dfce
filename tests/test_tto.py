"""Test-time transform optimisation: before any step it predicts as the run does through the SciPy warp; its steps
move the confidence the way asked, within the TTA ranges."""

import os

import numpy as np
import pytest

from deepsea.predictor import predictor_probs
from deepsea.runs import restore_run, validation_set
from deepsea.tto import TTOSettings, optimised_probs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(train_small):
    return restore_run(train_small("tto", ["train.steps=15", "model.dropout_rate=0.0"]))


def test_without_steps_it_predicts_as_the_run_and_its_steps_move_the_confidence(run):
    paths = list(validation_set(run.workdir).paths)[:24]
    plain = predictor_probs(run, paths, 0, calibrated=False, cache=False, progress=False)
    zero = optimised_probs(run, paths, TTOSettings(steps=0), progress=False)
    np.testing.assert_allclose(zero, plain, atol=1e-4)  # the JAX warp is the SciPy warp
    up = optimised_probs(run, paths, TTOSettings(steps=8, lr=0.5, objective="max"), progress=False)
    down = optimised_probs(run, paths, TTOSettings(steps=8, lr=0.5, objective="min"), progress=False)
    top = lambda p: p.max(1).mean()  # noqa: E731
    assert top(down) < top(plain) < top(up)
    np.testing.assert_allclose(up.sum(1), 1.0, rtol=1e-5)
    from deepsea.data.transforms import AugmentParams

    starts = [AugmentParams(), AugmentParams(rotation=90.0), AugmentParams(flip=True)]
    best = optimised_probs(run, paths, TTOSettings(steps=0), starts=starts, progress=False)
    each = [optimised_probs(run, paths, TTOSettings(steps=0), starts=[s], progress=False) for s in starts]
    np.testing.assert_allclose(best.max(1), np.max([e.max(1) for e in each], axis=0), rtol=1e-6)  # the best start


def test_a_transform_net_starts_at_the_identity_and_learns_to_lower_the_frozen_runs_loss(run):
    from deepsea.tto import TransformNet, train_transform_net, transform_net_probs

    val = validation_set(run.workdir)
    paths, labels = list(val.paths)[:16], val.labels[:16]
    n = len(paths)
    plain = predictor_probs(run, paths, 0, calibrated=False, cache=False, progress=False)
    small = TransformNet((4, 8), 8)  # one net for both parts: one program to compile
    net, params, losses = train_transform_net(run, paths, labels, steps=1, batch_size=n, lr=0.0, net=small,
                                              progress=False)  # fmt: skip
    np.testing.assert_allclose(transform_net_probs(run, net, params, paths, 8, progress=False), plain, atol=1e-4)
    identity_loss = -np.log(plain[np.arange(n), labels]).mean()
    np.testing.assert_allclose(losses[0], identity_loss, rtol=1e-4)
    # every step sees the same images (the whole set): the objective is one function, and it must go down
    net, params, losses = train_transform_net(run, paths, labels, steps=12, batch_size=n, lr=3e-3, net=small,
                                              progress=False)  # fmt: skip
    assert losses[-1] < losses[0] - 1e-3, losses
    moved = transform_net_probs(run, net, params, paths, 8, progress=False)
    assert -np.log(moved[np.arange(n), labels]).mean() < identity_loss - 1e-3  # it predicts through what it learnt


def test_the_tto_command_scores_plain_optimised_and_transform_net(cli, run, tmp_path):
    import json

    out = tmp_path / "tto.jsonl"
    printed = cli("tto", "--workdir", run.workdir, "--steps", "1", "--transform-net", "2", "--out", str(out))
    assert "plain: " in printed and "TTO (max, 1 steps" in printed and "transform net (2 steps at 0.001" in printed
    record = json.loads(out.read_text())
    assert record["transform_net_steps"] == 2 and set(record["transform_net"]) >= {"log_loss", "accuracy"}
    assert record["images"] == len(validation_set(run.workdir).paths)
