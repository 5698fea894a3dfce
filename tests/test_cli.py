import json
import subprocess
import sys

import jax
import pytest

from deepsea import bench_ops, demo
from deepsea.groups import D4


def test_demo_via_the_command_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "deepsea", "demo", "--size", "47", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert "D4 convroll4" in out.stdout
    png = tmp_path / "views.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_results_are_exactly_invariant():
    results = demo.run(size=47)
    assert max(results["d4"].values()) <= 1e-5
    assert max(results["c4"][k] for k in ("e", "r", "r2", "r3")) <= 1e-5
    # the organism is chiral, so the cyclic net tells a mirror image apart
    assert min(results["c4"][k] for k in ("m", "rm", "r2m", "r3m")) > 1e-3


def test_organism_has_no_symmetry_of_its_own():
    img = demo.draw_organism(47)
    assert img.shape == (47, 47) and img.dtype.name == "float32"
    for a in range(1, 8):
        assert not (D4.act(a, img, (0, 1)) == img).all()


def test_bench_ops_smoke(capsys):
    rows = bench_ops.run(batch=1, repeats=1)
    assert [r["op"] for r in rows][:2] == ["slice 95x95x1", "conv_roll 47x47x16"]
    for r in rows:
        assert r["op_fwd_ms"] > 0 and r["next_fwdbwd_ms"] > 0 and r["ratio_fwdbwd"] > 0
    print(bench_ops.format_table(rows))
    assert "conv_roll 5x5x128" in capsys.readouterr().out


def _run(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "deepsea", *args], capture_output=True, text=True, timeout=600, env=env
    )


def test_make_synthetic_preview_and_bench_data(tmp_path):
    import os

    out = _run("make-synthetic", str(tmp_path / "syn"), "--per-class", "6")
    assert out.returncode == 0, out.stderr
    assert len(os.listdir(tmp_path / "syn")) == 12
    png = tmp_path / "grid.png"
    out = _run("preview", "--data", str(tmp_path / "syn"), "--out", str(png), "--images", "3", "--augmented", "2")
    assert out.returncode == 0, out.stderr
    assert png.read_bytes()[:4] == b"\x89PNG"
    out = _run("bench-data", "--data", str(tmp_path / "syn"), "--batches", "2", "--steps", "0")
    assert out.returncode == 0, out.stderr
    assert "95x95 (largest side 85)" in out.stdout and '"size_47"' in out.stdout
    # a bad folder fails with a message naming it, not a traceback
    out = _run("preview", "--data", str(tmp_path / "nowhere"))
    assert out.returncode == 2 and "nowhere" in out.stderr and "Traceback" not in out.stderr


def test_flop_count_is_analytic():
    import jax.numpy as jnp

    from deepsea.bench import count_flops

    x, w = jnp.zeros((2, 7, 7, 3)), jnp.zeros((3, 3, 3, 5))
    conv = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    assert count_flops(conv, x, w) == 2 * 2 * 7 * 7 * 5 * 3 * 3 * 3
    assert count_flops(lambda a, b: a @ b, jnp.zeros((4, 6)), jnp.zeros((6, 8))) == 2 * 4 * 6 * 8
    assert count_flops(jax.jit(lambda a, b: a @ b), jnp.zeros((4, 6)), jnp.zeros((6, 8))) == 2 * 4 * 6 * 8


def test_bench_training_step_and_kernels_via_the_command_line(tmp_path):
    out = tmp_path / "bench.jsonl"
    r = _run(
        "bench",
        "experiments/synthetic.py",
        "--small",
        "--batch",
        "4",
        "--steps",
        "1",
        "--rounds",
        "2",
        "--compare",
        "model.conv_impl=xla",
        "--out",
        str(out),
        "--plot",
        str(tmp_path / "bench.png"),
    )
    assert r.returncode == 0, r.stderr
    lines = [json.loads(s) for s in r.stdout.strip().splitlines() if s.startswith("{")]
    assert [(rec.get("round"), rec.get("variant")) for rec in lines[:4]] == [
        (0, None),
        (0, "model.conv_impl=xla"),
        (1, None),
        (1, "model.conv_impl=xla"),
    ]
    summary = lines[-1]
    assert summary["summary"] and summary["images_per_s"] > 0 and summary["gflop_per_s"] > 0
    assert summary["variants"]["model.conv_impl=xla"]["images_per_s"] > 0
    assert 0 < summary["symmetry_share"] < 1
    assert {op["layer"] for op in summary["symmetry_ops"]} >= {"Slice", "ConvRoll", "Pool"}
    assert len(out.read_text().strip().splitlines()) == 5
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = _run("bench-kernels", "--batch", "1", "--repeats", "1")
    assert r.returncode == 0, r.stderr
    assert "conv_roll 47x47x16" in r.stdout and "pallas=interpret" in r.stdout
    rows = [line for line in r.stdout.splitlines() if line.startswith(("conv_roll", "roll"))]
    assert len(rows) == 5 and all(line.split()[-1] == "True" for line in rows)  # bitwise equal


def test_bench_plot_draws_every_series(tmp_path):
    from deepsea.bench import plot_rounds

    lines = [
        {"round": r, "images_per_s": 100.0 + r} | extra
        for r in range(3)
        for extra in ({}, {"variant": "model.conv_impl=xla"}, {"impl": "torch"})
    ]
    lines.append({"summary": True, "experiment": "x", "size": 47, "width": 0.5, "batch": 32, "ratio_vs_torch": 1.2})
    path = tmp_path / "rounds.png"
    labels = plot_rounds(lines, str(path))
    assert labels == [
        "deepsea: median 101.0 images/s",
        "model.conv_impl=xla: median 101.0 images/s",
        "PyTorch: median 101.0 images/s",
    ]
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="summary line"):
        plot_rounds(lines[:-1], str(tmp_path / "none.png"))  # no summary line


def test_bench_counts_the_training_steps_flops_not_the_orbit_averaged_evaluation():
    from deepsea.bench import _OurStep
    from deepsea.configs import load_experiment

    cfg = load_experiment("experiments/synthetic.py", small=True)
    cfg.model.symmetry = None
    plain = _OurStep(cfg, batch_size=2)
    cfg.model.orbit_average = "d4"
    averaged = _OurStep(cfg, batch_size=2)
    assert averaged.train_flops == plain.train_flops > 0
    cfg.model.conv_impl = "xla"  # "auto" computes the first layer without a convolution: counted all the same
    assert _OurStep(cfg, batch_size=2).train_flops == plain.train_flops
