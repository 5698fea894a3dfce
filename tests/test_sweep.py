"""Sweeps: the grid, equal budgets, resuming a killed sweep, and the summary's aggregation."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from deepsea.sweep import _epoch_steps, expand_grid, plan_sweep, run_sweep, summarize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_grid_expands_every_combination_and_keeps_tuples_whole():
    grid = expand_grid(["model.view_pool_mode=rms,mean", "model.stages=((16,), (32,)),((8,),)"])
    assert grid == [
        {"model.view_pool_mode": "rms", "model.stages": "((16,), (32,))"},
        {"model.view_pool_mode": "rms", "model.stages": "((8,),)"},
        {"model.view_pool_mode": "mean", "model.stages": "((16,), (32,))"},
        {"model.view_pool_mode": "mean", "model.stages": "((8,),)"},
    ]
    assert expand_grid([]) == [{}]
    runs = plan_sweep(["optim.name=sgd,adam"], seeds=2)
    assert [r.name for r in runs] == ["name=sgd_s0", "name=sgd_s1", "name=adam_s0", "name=adam_s1"]
    later = plan_sweep(["optim.name=sgd,adam"], seeds=1, first_seed=1)  # more seeds, in a folder of their own
    assert [(r.name, r.seed) for r in later] == [("name=sgd_s1", 1), ("name=adam_s1", 1)]
    with pytest.raises(ValueError, match="first-seed"):
        plan_sweep([], first_seed=-1)
    for bad, match in (("a", "key=v1"), ("a=1,,2", "empty value"), ("a=(1,2", "unbalanced")):
        with pytest.raises(ValueError, match=match):
            expand_grid([bad])
    with pytest.raises(ValueError, match="twice"):
        expand_grid(["a=1", "a=2"])


def test_the_summary_gives_mean_and_spread_over_seeds(tmp_path):
    records = []
    for variant, losses in (("a", [0.5, 0.7]), ("b", [1.0, 1.0])):
        for seed, ll in enumerate(losses):
            score = {"log_loss": ll, "accuracy": 1 - ll / 2, "top5": 0.9, "step": 3}
            records.append({"name": f"{variant}_s{seed}", "variant": variant, "overrides": {"x": variant},
                            "seed": seed, "steps": 10, "images_seen": 80, "wall_s": 60.0, "best_step": 3,
                            "plain": score, "tta_8": {**score, "log_loss": ll - 0.1}})  # fmt: skip
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    text = summarize(str(tmp_path))
    row_a = next(line for line in text.splitlines() if line.startswith("| a |"))
    assert f"0.6000 ± {np.std([0.5, 0.7], ddof=1):.4f}" in row_a and "0.5000 ± 0.1414" in row_a  # plain, TTA 8
    row_b = next(line for line in text.splitlines() if line.startswith("| b |"))
    assert "1.0000 ± 0.0000" in row_b and "| 2 | 10 | 80 | 1.0 |" in row_b
    assert (tmp_path / "bars.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "summary.md").exists()


def test_a_killed_sweep_resumes_and_budgets_are_equal_in_images(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSEA_DATA", str(tmp_path / "cache"))
    experiment = os.path.join(ROOT, "experiments", "synthetic.py")
    base = ["model.symmetry=none", "data.size=23", "model.dropout_rate=0.0"]
    args = dict(seeds=1, epochs=0.3, base=base, small=True, progress=False)
    grid = ["train.batch_size=8,16"]
    first = run_sweep(experiment, grid, str(tmp_path / "sw"), stop_after_runs=1, **args)
    assert [r["name"] for r in first] == ["batch_size=8_s0"]
    trained = os.path.getmtime(tmp_path / "sw" / "runs" / "batch_size=8_s0" / "config.json")
    spec = json.loads((tmp_path / "sw" / "sweep.json").read_text())  # continued from another checkout
    (tmp_path / "sw" / "sweep.json").write_text(json.dumps({**spec, "experiment": "/elsewhere/synthetic.py"}))
    records = run_sweep(experiment, grid, str(tmp_path / "sw"), **args)
    assert [r["name"] for r in records] == ["batch_size=8_s0", "batch_size=16_s0"]
    assert os.path.getmtime(tmp_path / "sw" / "runs" / "batch_size=8_s0" / "config.json") == trained  # not redone
    n_train = len(json.loads((tmp_path / "sw" / "runs" / "batch_size=8_s0" / "split.json").read_text())["train"])
    for r in records:  # the same images seen, within one batch
        assert 0 <= r["images_seen"] - 0.3 * n_train < r["batch_size"]
        assert r["plain"]["log_loss"] > 0 and r["steps"] == r["images_seen"] // r["batch_size"]
    assert "| batch_size=16 | 1 |" in (tmp_path / "sw" / "summary.md").read_text()
    with pytest.raises(ValueError, match="holds another sweep"):
        run_sweep(experiment, ["train.batch_size=4"], str(tmp_path / "sw"), **args)
    # more seeds later: the same sweep grows, the finished runs stay
    grown = run_sweep(experiment, grid, str(tmp_path / "sw"), stop_after_runs=1, **{**args, "seeds": 2})
    assert [r["name"] for r in grown] == ["batch_size=8_s0", "batch_size=16_s0", "batch_size=8_s1"]
    assert os.path.getmtime(tmp_path / "sw" / "runs" / "batch_size=8_s0" / "config.json") == trained
    assert json.loads((tmp_path / "sw" / "sweep.json").read_text())["seeds"] == 2
    assert "| batch_size=8 | 2 |" in (tmp_path / "sw" / "summary.md").read_text()
    # seed 1 alone, in a folder of its own (--first-seed 1): the same run as the grown sweep's seed 1
    alone = run_sweep(experiment, grid, str(tmp_path / "s1"), stop_after_runs=1, first_seed=1, **args)
    assert [(r["name"], r["seed"]) for r in alone] == [("batch_size=8_s1", 1)]
    assert alone[0]["plain"] == grown[-1]["plain"]
    with pytest.raises(ValueError, match="holds another sweep"):  # seed 0 belongs to another folder
        run_sweep(experiment, grid, str(tmp_path / "s1"), **args)
    # a TTA setting added later: the finished runs are scored with it (not retrained), the new run with both
    added = run_sweep(experiment, grid, str(tmp_path / "sw"), **{**args, "tta": [2]})
    assert [r["name"] for r in added][-1] == "batch_size=16_s1" and all("tta_2" in r for r in added)
    assert os.path.getmtime(tmp_path / "sw" / "runs" / "batch_size=8_s0" / "config.json") == trained
    from deepsea.evaluation import evaluate_run
    from deepsea.runs import restore_run

    direct = evaluate_run(restore_run(str(tmp_path / "sw" / "runs" / "batch_size=8_s0")), 2, progress=False)
    assert added[0]["tta_2"] == json.loads(json.dumps(direct.rows[-1].to_dict()))
    assert json.loads((tmp_path / "sw" / "sweep.json").read_text())["tta"] == ["2"]
    assert "TTA 2 log loss" in (tmp_path / "sw" / "summary.md").read_text()


def test_equal_epochs_count_the_images_training_keeps(tmp_path):
    """A dropped class (class map), a class under data.min_class_size and a skipped corrupt file are not training
    images: an epoch's steps count only what training keeps (the old count split the folder before them)."""
    from deepsea.configs import load_experiment_with
    from deepsea.data import scan_labelled_folder, stratified_split
    from deepsea.data.synthetic import make_synthetic

    data = make_synthetic(tmp_path / "data", per_class=12, seed=0, progress=False)
    folder = scan_labelled_folder(data)
    dropped, small = folder.classes[0], folder.classes[1]
    for name in os.listdir(os.path.join(data, small))[:5]:  # 7 images left: under the minimum of 10
        os.remove(os.path.join(data, small, name))
    keep = folder.classes[2]
    (tmp_path / "data" / keep / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (tmp_path / "map.json").write_text(json.dumps({dropped: None}))
    overrides = [f"data.class_map={tmp_path / 'map.json'}", "data.min_class_size=10", "data.skip_bad_images=true",
                 "train.batch_size=1", "data.validation_fraction=0.25"]  # fmt: skip
    config = load_experiment_with(os.path.join(ROOT, "experiments", "synthetic.py"), overrides, data=str(data))
    kept = [c for c in folder.classes if c not in (dropped, small)]
    labels = np.repeat(np.arange(len(kept)), 12)  # every kept class has its 12 readable images
    expected, _ = stratified_split(labels, 0.25, config.data.split_seed)
    assert _epoch_steps(config, 1.0) == len(expected)
    everything, _ = stratified_split(scan_labelled_folder(data).labels, 0.25, config.data.split_seed)
    assert len(everything) > len(expected)  # what the old count gave
