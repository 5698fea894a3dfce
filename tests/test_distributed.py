"""Two processes of this machine as one (jax.distributed over Gloo): the same training and the same predictions
as one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from deepsea.configs import apply_overrides, load_experiment
from deepsea.data.synthetic import make_synthetic
from deepsea.runs import restore_run
from deepsea.stream import predict_tree
from deepsea.submission import read_submission
from deepsea.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# two steps (the second applies the first's momentum): beyond them rounding differences can flip a leaky ReLU or
# pooling choice (see test_train.test_four_devices_give_the_same_parameters_as_one)
OVERRIDES = ["model.symmetry=none", "model.dropout_rate=0.5", "train.steps=2", "train.eval_every=2"]

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from deepsea.distributed import initialize

    pid, port, data, work, images, out = sys.argv[1:]
    initialize(f"localhost:{port}", 2, int(pid))
    import jax
    from deepsea.configs import apply_overrides, load_experiment
    from deepsea.mesh import local_variables
    from deepsea.runs import restore_run
    from deepsea.stream import predict_tree
    from deepsea.train import train

    assert jax.process_count() == 2 and jax.device_count() == 2, (jax.process_count(), jax.devices())
    config = load_experiment(EXPERIMENT, small=True)
    apply_overrides(config, [*OVERRIDES, f"data.path={data}"])
    res = train(config, work, progress=False)
    np.savez(f"{work}/params_{pid}.npz", *jax.tree.leaves(local_variables(res.state.params)))
    mine = predict_tree(restore_run(work, "latest"), images, out, tta=2, chunk=3, progress=False)
    print("predicted", mine.images)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_and_predict_like_one(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSEA_DATA", str(tmp_path / "cache"))
    experiment = os.path.join(ROOT, "experiments", "synthetic.py")
    data = make_synthetic(tmp_path / "data", per_class=10, progress=False)
    images = os.path.join(data, sorted(os.listdir(data))[0])  # one class's folder: 10 images
    two, out = tmp_path / "two", tmp_path / "two.csv"
    code = f"EXPERIMENT = {experiment!r}\nOVERRIDES = {OVERRIDES!r}\n" + SCRIPT
    port = str(_free_port())
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(p), port, str(data), str(two), str(images), str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for p in range(2)
    ]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]

    # one process, the same experiment, in this process
    config = load_experiment(experiment, small=True)
    apply_overrides(config, [*OVERRIDES, f"data.path={data}"])
    one = train(config, str(tmp_path / "one"), progress=False)
    ref = [np.asarray(x) for x in jax.tree.leaves(one.state.params)]
    for pid in range(2):  # every process holds the parameters one process trains, to rounding
        with np.load(two / f"params_{pid}.npz") as f:
            got = [f[f"arr_{i}"] for i in range(len(f.files))]
        assert len(got) == len(ref)
        for a, b in zip(got, ref, strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # one CSV, in order, with no part files left; the same as one process predicting with the same run
    assert not [f for f in os.listdir(tmp_path) if f.startswith("two.csv.")]
    alone = predict_tree(restore_run(str(two), "latest"), str(images), str(tmp_path / "alone.csv"), tta=2, chunk=3,
                         progress=False)  # fmt: skip
    names, classes, probs = read_submission(str(out))
    names1, classes1, probs1 = read_submission(str(tmp_path / "alone.csv"))
    assert (names, classes) == (names1, classes1) and len(names) == alone.images == 10
    np.testing.assert_allclose(probs, probs1, rtol=0, atol=1e-6)


def test_distributed_settings_are_checked_before_joining(cli):
    from deepsea.distributed import initialize

    with pytest.raises(ValueError, match="together"):
        initialize(None, 2, 0)
    with pytest.raises(ValueError, match=r"not in 0\.\.1"):
        initialize("localhost:1", 2, 2)
    out = cli("predict", "--model", "m", "--images", "i", "--out", "o.csv", "--num-processes", "2", rc=2)
    assert "need --distributed" in out


def test_parts_join_in_order_and_a_process_without_images_adds_nothing(tmp_path):
    import json

    from deepsea.stream import _join_parts

    out = str(tmp_path / "p.csv")
    parts = [f"{out}.part{p}-of-3" for p in range(3)]
    rows = {0: ["a.jpg,0.5,0.5\n", "b.jpg,0.1,0.9\n"], 1: ["c.jpg,1.0,0.0\n"], 2: []}
    for p, part in enumerate(parts):
        with open(part, "w") as f:
            f.write("image,x,y\n" + "".join(rows[p]))
        if rows[p]:  # the last process had no images: no chunk, no state
            skipped = [["bad.jpg", "corrupt"]] if p == 1 else []
            state = {"images": len(rows[p]), "labelled": len(rows[p]), "skipped": skipped}
            with open(f"{part}.state.json", "w") as f:
                json.dump(state, f)
    res = _join_parts(parts, out, 4)
    assert (tmp_path / "p.csv").read_text() == "image,x,y\na.jpg,0.5,0.5\nb.jpg,0.1,0.9\nc.jpg,1.0,0.0\n"
    assert (res.images, res.skipped) == (3, (("bad.jpg", "corrupt"),))
    assert sorted(os.listdir(tmp_path)) == ["p.csv"]
    with pytest.raises(RuntimeError, match="hold 0 images"):
        (tmp_path / os.path.basename(parts[0])).write_text("image,x,y\n")
        _join_parts(parts[:1], out, 5)


def test_process_shares_tile_the_items_in_order():
    from deepsea.distributed import process_share

    for n, count in ((10, 2), (10, 3), (2, 3), (0, 2), (7, 7)):
        shares = [process_share(n, i, count) for i in range(count)]
        assert [x for s in shares for x in range(n)[s]] == list(range(n))
        assert max(len(range(n)[s]) for s in shares) == -(-n // count)
