"""The prepared device call (``tools/gpu_check.sh``), run on the CPU with tiny networks: every stage works and
writes what the device call brings back, so the call on a lent GPU cannot fail on a typo."""

import json
import os
import subprocess
import sys
import tarfile

import pytest

from deepsea.data.synthetic import make_synthetic
from deepsea.tools.gpu_check import FILES

ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.mark.slow
def test_the_device_call_runs_every_stage_on_the_cpu_and_brings_back_its_files(tmp_path):
    out, staged = tmp_path / "out", tmp_path / "staged"
    make_synthetic(
        str(tmp_path / "train"), per_class=8, progress=False
    )  # stands in for the NDSB images the call carries
    staged.mkdir()
    with tarfile.open(staged / "ndsb.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "train", arcname="train")
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "DEVICE_DIR": str(staged)}
    proc = subprocess.run(
        ["bash", "tools/gpu_check.sh", "4", "--small", "--bench-steps", "1"],  # small: trains 0.05 minutes
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == sorted(FILES) and len(FILES) <= 8  # what the device tool brings back
    summary = json.loads((out / "summary.json").read_text())
    assert {k: v["status"] for k, v in summary["stages"].items()} == dict.fromkeys(
        ["environment", "kernels", "bench", "train", "pack"], "ok"
    )
    assert "passed" in (out / "kernels.txt").read_text()
    bench = [json.loads(line) for line in (out / "bench.jsonl").read_text().splitlines()]
    assert [(r["symmetry"], r["precision"], r["roll_impl"]) for r in bench] == [("c4", "float32", "xla")]
    assert all(r["images_per_s"] > 0 for r in bench)
    t = summary["train"]
    assert t["data"].endswith("/train") and t["data"] != str(tmp_path / "train")  # the carried archive, unpacked
    steps = t["steps"]
    assert steps >= 1 and t["lr_drops_at"] == [round(180 / 215 * steps), round(205 / 215 * steps)]  # the seed's, scaled
    assert 0 <= t["data_wait_share"] <= 1 and t["images_per_s"] > 0
    assert t["full_schedule_steps"] == 215_000
    assert t["full_schedule_device_minutes"] == round(215_000 * t["step_s"] / 60, 1)
    assert 0 < t["best"]["log_loss"] < 10 and 0 <= t["best"]["accuracy"] <= 1
    assert json.loads((out / "env.json").read_text())["default_backend"] == "cpu"
    with tarfile.open(out / "run.tar.gz") as tar:
        names = tar.getnames()
    assert "run/budget.json" in names and "run/metrics.jsonl" in names
    assert not [n for n in names if "checkpoints" in n]  # too large to come back
    assert "the full schedule (215000 steps)" in (out / "summary.md").read_text().lower()


def test_a_failing_stage_is_reported_and_the_call_goes_on(tmp_path, monkeypatch, capsys):
    from deepsea.tools import gpu_check

    monkeypatch.setattr(gpu_check, "_kernel_suite", lambda call: 1 / 0)
    monkeypatch.setattr(gpu_check, "_bench", lambda call: [])
    monkeypatch.setattr(gpu_check, "_train", lambda call, workdir: None)
    args = type("Args", (), {"out": str(tmp_path), "minutes": 1.0, "started": 0.0, "small": True, "data": ""})
    with pytest.raises(SystemExit, match="stages that failed: kernels"):
        gpu_check.main_with_args(args)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stages"]["kernels"]["status"].startswith("failed: ZeroDivisionError")
    assert summary["stages"]["train"]["status"] == "ok"  # the stages after the failure ran
    assert "ZeroDivisionError" in capsys.readouterr().err
