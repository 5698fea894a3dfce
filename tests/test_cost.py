"""FLOPs per image against hand counts, and the width search that sizes one network to another's cost."""

from __future__ import annotations

import argparse
import math
import os

import numpy as np
import pytest

from deepsea.configs import load_experiment_with
from deepsea.cost import flops_per_image, match_width

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = os.path.join(ROOT, "experiments", "synthetic.py")


def _conv_macs(stages: tuple[tuple[int, ...], ...], size: int, views: int, every: bool = False) -> tuple[int, int, int]:
    """Multiply-adds of a RollNet's convolutions per image, layer by layer: each view convolves its maps, 3x3
    stride-2 pooling shrinks them, a conv roll (after each stage; with ``every`` also between a stage's
    convolutions) multiplies the channels by the views.  Returns the MACs, the last map side and channels."""
    macs, channels, hw = 0, 1, size
    for stage in stages:
        for j, out in enumerate(stage):
            macs += views * hw * hw * channels * out * 9
            channels = out * (views if every and j + 1 < len(stage) else 1)
        hw = (hw - 3) // 2 + 1
        channels *= views  # conv roll (none for a plain network: views = 1)
    return macs, hw, channels


def _hand_count(
    stages: tuple[tuple[int, ...], ...], dense: int, size: int, views: int, classes: int, every: bool = False
) -> int:
    """Multiply-adds of a RollNet forward pass per image: the convolutions, then the first maxout layer per view,
    the view pool (one vector), the second maxout layer and the classifier."""
    macs, hw, channels = _conv_macs(stages, size, views, every)
    pieces = 2
    macs += views * hw * hw * channels * dense * pieces  # dense0 (maxout), per view
    macs += dense * dense * pieces  # dense1 after the view pool
    macs += dense * classes
    return macs


@pytest.mark.parametrize("symmetry,views", [("none", 1), ("c4", 4), ("d4", 8)])
def test_flops_per_image_equal_a_hand_count(symmetry, views):
    stages = ((4, 6), (8,))
    overrides = [f"model.symmetry={symmetry}", "model.stages=((4, 6), (8,))", "model.dense_features=16",
                 "model.size_features=false", "data.size=23"]  # fmt: skip
    config = load_experiment_with(SYNTHETIC, overrides, small=True)
    cost = flops_per_image(config, num_classes=5)
    expected = 2 * _hand_count(stages, 16, 23, views, 5)
    assert cost.train_forward_flops == expected
    assert cost.predict_flops == expected
    assert cost.train_step_flops == 3 * expected


@pytest.mark.parametrize("fold", [0, 2])
@pytest.mark.parametrize("symmetry,views", [("c4", 4), ("d4", 8)])
def test_a_roll_before_every_convolution_costs_the_plain_convolutions_at_a_viewth_of_the_width(symmetry, views, fold):
    """model.roll_every_conv: every convolution but the first reads all views' maps, so per-view widths of the
    plain network's divided by the views do the plain network's convolution FLOPs, folded or not (a folded group
    convolution wastes no products)."""
    stages = ((2, 3), (4, 2))
    plain = tuple(tuple(views * c for c in stage) for stage in stages)
    overrides = [f"model.symmetry={symmetry}", f"model.stages={stages}", "model.roll_every_conv=true",
                 f"model.fold_views={fold}", "model.dense_features=16", "model.size_features=false",
                 "data.size=23"]  # fmt: skip
    cost = flops_per_image(load_experiment_with(SYNTHETIC, overrides, small=True), num_classes=5)
    assert cost.train_forward_flops == 2 * _hand_count(stages, 16, 23, views, 5, every=True)
    assert _conv_macs(stages, 23, views, every=True)[0] == _conv_macs(plain, 23, 1)[0]


def test_an_orbit_average_pays_its_copies_only_when_predicting():
    overrides = ["model.symmetry=none", "model.orbit_average=d4", "model.size_features=false", "data.size=23"]
    config = load_experiment_with(SYNTHETIC, overrides, small=True)
    cost = flops_per_image(config, num_classes=5)
    assert cost.predict_flops == 8 * cost.train_forward_flops
    bare = flops_per_image(load_experiment_with(SYNTHETIC, overrides[:1] + overrides[2:], small=True), 5)
    assert bare.train_forward_flops == cost.train_forward_flops == bare.predict_flops


def test_the_width_search_finds_a_power_law_target_and_stops_within_tolerance():
    calls = []

    def cost(w: float) -> float:
        calls.append(w)
        return 3.0 * w**2.1

    target = cost(0.37)
    calls.clear()
    width, found = match_width(cost, target, 0.05, 4.0, rel_tol=0.005)
    assert abs(found / target - 1) <= 0.005 and abs(width - 0.37) < 0.004
    assert len(calls) <= 6  # the secant steps on log-log converge fast on a power law


def test_the_width_search_survives_noise_and_plateaus():
    rng = np.random.default_rng(0)

    def noisy(w: float) -> float:  # a step time: channel counts are integers, timings vary by 3%
        return (round(16 * w) + 1) ** 2 * (1 + 0.03 * rng.standard_normal())

    width, found = match_width(noisy, 100.0, 0.1, 2.0, rel_tol=0.05, max_evals=12)
    assert 8 <= round(16 * width) + 1 <= 12  # true answer 9 (cost 81) to 11 (cost 121): 10 gives 100
    assert abs(math.log(found / 100.0)) < math.log(1.3)


def test_the_width_search_returns_the_nearest_end_when_the_target_is_out_of_reach():
    assert match_width(lambda w: w, 10.0, 0.1, 2.0) == (2.0, 2.0)
    assert match_width(lambda w: w, 0.01, 0.1, 2.0) == (0.1, 0.1)
    with pytest.raises(ValueError, match="positive"):
        match_width(lambda w: w, 0.0)


def test_bench_matches_a_rolled_network_to_a_plain_ones_flops(capsys):
    from deepsea.tools.bench import match_flops

    args = argparse.Namespace(
        experiment=SYNTHETIC, set=["model.symmetry=c4", "model.size_features=false"], small=True, batch=0
    )
    other = load_experiment_with(SYNTHETIC, ["model.symmetry=none", "model.size_features=false"], small=True)
    width, flops = match_flops(args, other)
    target = flops_per_image(other).train_forward_flops
    assert abs(flops / target - 1) < 0.1  # channel counts are integers at this tiny size
    assert 0.2 < width < 0.6  # about a quarter to a half of the plain width, as the counting argument says
    assert '"match": "flops"' in capsys.readouterr().out


def test_the_time_match_takes_the_median_ratio_so_one_noisy_round_does_not_move_it(monkeypatch, capsys):
    """A stand-in step whose time per image is the width (the reference's: 0.3) and whose every third timing is
    three times too slow: the median of three pairs still finds 0.3; one pair per width would not."""
    from deepsea.tools import bench

    calls = {"n": 0}

    class FakeStep:
        def __init__(self, cfg, batch):
            self.width = cfg.model.width if cfg.model.symmetry else None

        def time_steps(self, steps):
            if self.width is None:
                return 0.3 * 8  # the reference: 8 images at 0.3 each
            calls["n"] += 1
            return self.width * 8 * (3.0 if calls["n"] % 3 == 1 else 1.0)

    monkeypatch.setattr(bench, "_OurStep", FakeStep)
    args = argparse.Namespace(experiment=SYNTHETIC, set=["model.symmetry=c4", "model.size_features=false"],
                              small=True, batch=8, steps=1, match_rounds=3)  # fmt: skip
    other = load_experiment_with(SYNTHETIC, ["model.symmetry=none", "model.size_features=false"], small=True)
    assert abs(bench.match_step_time(args, other) - 0.3) < 0.3 * 0.04
    assert '"round": 2' in capsys.readouterr().out
