import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from random_params import random_params

from deepsea.configs import ConfigError, apply_overrides, base_config, load_experiment
from deepsea.errors import UserError
from deepsea.models import build_model, count_params
from deepsea.runs import restore_run
from deepsea.step import create_train_state, example_inputs, make_optimizer, make_train_step
from deepsea.train import Budget, TrainingDiverged, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def small_config(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DEEPSEA_DATA", str(tmp_path_factory.getbasetemp() / "deepsea-data"))
    return load_experiment(os.path.join(ROOT, "experiments", "synthetic.py"), small=True)


def _tiny_setup(config):
    setup = create_train_state(config, 12)
    return setup.model, setup.optimizer, setup.schedule, setup.state


def _batch(n=8, size=47, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": jnp.asarray(rng.standard_normal((n, size, size, 1)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 12, n), jnp.int32),
        "raw_size": jnp.asarray(rng.uniform(20, 200, (n, 2)), jnp.float32),
    }


def test_loss_falls_and_the_step_compiles_once_and_donates(small_config):
    apply_overrides(small_config, ["model.dropout_rate=0.0", "optim.lr=0.003"])
    model, tx, sched, state = _tiny_setup(small_config)
    step = make_train_step(model, tx, sched)
    batch, rng = _batch(), jax.random.key(0)
    losses = []
    for _ in range(15):
        old = state
        state, m = step(state, batch, rng)
        losses.append(float(m["loss"]))
        assert all(leaf.is_deleted() for leaf in jax.tree.leaves(old.params))  # donated
    assert losses[-1] < 0.5 * losses[0]
    assert step._cache_size() == 1  # no recompilation after the first step
    assert int(state.step) == 15


def test_weight_decay_touches_kernels_not_biases(small_config):
    apply_overrides(small_config, ["optim.weight_decay=0.5", "optim.name=sgd", "optim.momentum=0.0"])
    _model, tx, _sched, state = _tiny_setup(small_config)
    ones = jax.tree.map(lambda p: np.ones(p.shape, p.dtype), state.params)
    updates = jax.jit(lambda p: tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)[0])(ones)
    flat = jax.tree_util.tree_leaves_with_path(updates)
    for path, u in flat:
        name = path[-1].key
        expected = -small_config.optim.lr * 0.5 if name == "kernel" else 0.0
        np.testing.assert_allclose(np.asarray(u), expected, rtol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_schedule_has_two_tenfold_drops(small_config):
    apply_overrides(small_config, ["optim.decay_steps=(0.5, 0.75)", "train.steps=100", "optim.lr=0.1"])
    _, sched = make_optimizer(small_config.optim, 100)
    assert [float(sched(s)) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_checkpoints_format_no_arrays_and_leave_ctrl_c_as_it_was(tmp_path, monkeypatch):
    """Orbax's asyncio.run, under Python's default SIGINT handler, formatted every array of a checkpoint as text."""
    import signal

    from deepsea import rundir
    from deepsea.step import TrainState

    params = {"dense": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.ones(3)}}
    state = TrainState(jnp.asarray(4, jnp.int32), params, {"mu": params}, {})
    latest, _ = rundir.checkpoint_managers(str(tmp_path), 2)

    def formatted(self):
        raise AssertionError("an array was formatted as text")

    monkeypatch.setattr(type(params["dense"]["bias"]), "__repr__", formatted)
    # Python's default, as in a terminal (a shell starts background jobs with SIGINT ignored)
    original = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        rundir.save_state(latest, 4, state)
        back = rundir.restore_state(latest, 4, state)
        np.testing.assert_array_equal(back.params["dense"]["kernel"], params["dense"]["kernel"])
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C as before
        with rundir._plain_sigint(), pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        mine = lambda signum, frame: None  # noqa: E731
        signal.signal(signal.SIGINT, mine)
        rundir.save_state(latest, 5, state)
        assert signal.getsignal(signal.SIGINT) is mine  # a program's own handler is left alone
    finally:
        signal.signal(signal.SIGINT, original)


@pytest.mark.slow
def test_resume_equals_uninterrupted_and_checkpoints_round_trip(small_config, tmp_path):
    full = train(small_config, str(tmp_path / "full"), progress=False)
    stopped = train(small_config, str(tmp_path / "resumed"), stop_after=3, progress=False)  # "killed" after 3
    assert int(stopped.state.step) == 3
    resumed = train(small_config, str(tmp_path / "resumed"), progress=False)
    assert int(resumed.state.step) == small_config.train.steps
    for a, b in zip(jax.tree.leaves(full.state.params), jax.tree.leaves(resumed.state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the latest checkpoint holds exactly the final parameters
    run = restore_run(str(tmp_path / "full"), "latest")
    for a, b in zip(jax.tree.leaves(full.state.params), jax.tree.leaves(run.variables["params"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(run.classes) == 12 and run.preprocess.size == small_config.data.size and run.step == 6
    rows = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert sorted(r["step"] for r in rows if r["split"] == "validation") == [3, 6]  # no duplicates after resume
    assert (tmp_path / "full" / "metrics.png").exists() and (tmp_path / "full" / "best.json").exists()


def test_augmenting_on_the_device_trains_as_the_host_does_and_resumes_exactly(small_config, tmp_path, monkeypatch):
    """data.augment_on='device': the step warps uint8 images; its first losses are the host's (the same images to
    float rounding), and a killed run resumes to the same parameters as an uninterrupted one."""
    apply_overrides(small_config, ["train.steps=4", "train.log_every=1", "train.eval_every=4"])
    train(small_config, str(tmp_path / "host"), progress=False, stop_after=2)
    apply_overrides(small_config, ["data.augment_on=device", "data.device_canvas=256"])
    full = train(small_config, str(tmp_path / "device"), progress=False)
    losses = {}
    for name in ("host", "device"):
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [r["loss"] for r in rows if r["split"] == "train"][:2]
    np.testing.assert_allclose(losses["device"], losses["host"], rtol=1e-4)
    train(small_config, str(tmp_path / "resumed"), stop_after=2, progress=False)
    resumed = train(small_config, str(tmp_path / "resumed"), progress=False)
    for a, b in zip(jax.tree.leaves(full.state.params), jax.tree.leaves(resumed.state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the run predicts (TTA included) on the device too: the host's probabilities to float rounding
    import copy
    import dataclasses

    from deepsea.data import tta_params
    from deepsea.runs import validation_set

    run = restore_run(str(tmp_path / "device"), "latest")
    host_config = copy.deepcopy(run.config)
    with host_config.unlocked():
        host_config.data.augment_on = "host"
    host_run = dataclasses.replace(run, config=host_config)
    assert (run.device_canvas, host_run.device_canvas) == (256, 0)
    paths = list(validation_set(str(tmp_path / "device")).paths[:6])
    transforms = tta_params(4, run.tta_ranges)
    from deepsea.data import pipeline

    shipped, real = [], pipeline.device_inputs
    monkeypatch.setattr(pipeline, "device_inputs", lambda *a: shipped.append(1) or real(*a))
    on_device = run.probs(paths, transforms, progress=False)
    assert len(shipped) == len(paths) * len(transforms)  # every image under every transform went as uint8
    np.testing.assert_allclose(on_device, host_run.probs(paths, transforms, progress=False), atol=1e-5)


def test_orbit_averaged_run_restores_with_and_without_the_average(small_config, tmp_path, rng):
    """A plain network trained under OrbitAverage: restored as trained its predictions are exactly D4-invariant;
    restored without the average (the ablation of ``deepsea evaluate --orbit-average none``) they are not, and
    the parameters are the same ones."""
    from deepsea.equivariance import check_invariance
    from deepsea.models import OrbitAverage

    apply_overrides(small_config, ["model.symmetry=none", "model.orbit_average=d4", "train.steps=4"])
    result = train(small_config, str(tmp_path / "run"), progress=False)
    averaged = restore_run(str(tmp_path / "run"), "latest")
    model, variables = averaged.model, averaged.variables
    plain_run = restore_run(str(tmp_path / "run"), "latest", orbit_average="")
    plain, plain_vars = plain_run.model, plain_run.variables
    assert isinstance(model, OrbitAverage) and not isinstance(plain, OrbitAverage)
    assert plain_run.config.model.orbit_average == "" and plain_run.key == "latest:4:orbit=none"
    for a, b in zip(jax.tree.leaves(result.state.params), jax.tree.leaves(plain_vars["params"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    size = small_config.data.size
    x = jnp.asarray(rng.standard_normal((2, size, size, 1)), jnp.float32)
    raw = jnp.asarray([[40.0, 90.0], [120.0, 60.0]])
    averaged_fn = jax.jit(lambda z: model.apply(variables, z, raw_size=raw))
    check_invariance(averaged_fn, "d4", x, atol=1e-5)
    with pytest.raises(AssertionError, match="not equivariant"):
        check_invariance(jax.jit(lambda z: plain.apply(plain_vars, z, raw_size=raw)), "c4", x, atol=1e-5)
    # predicted in bfloat16 (deepsea evaluate --precision): the same parameters, another cache entry, close logits
    bf16 = restore_run(str(tmp_path / "run"), "latest", precision="bfloat16")
    assert bf16.key == "latest:4:precision=bfloat16" and bf16.model.inner.precision == "bfloat16"
    assert restore_run(str(tmp_path / "run"), "latest", precision="float32").key == "latest:4"  # as trained
    want = np.asarray(averaged_fn(x))
    bf16_fn = jax.jit(lambda z: bf16.model.apply(bf16.variables, z, raw_size=raw))
    got = bf16_fn(x)
    assert got.dtype == jnp.float32 and not np.array_equal(np.asarray(got), want)
    np.testing.assert_allclose(np.asarray(got), want, atol=0.05 * np.abs(want).max())
    check_invariance(bf16_fn, "d4", x, atol=1e-5)
    with pytest.raises(ValueError, match="precision must be one of"):
        restore_run(str(tmp_path / "run"), "latest", precision="float16")


def test_divergence_stops_with_a_message_and_keeps_the_last_good_checkpoint(small_config, tmp_path, monkeypatch):
    from deepsea import rundir

    apply_overrides(
        small_config,
        ["optim.lr=1e4", "optim.name=sgd", "train.checkpoint_every=1", "train.steps=30", "train.eval_every=100"],
    )
    closed = []
    real = rundir.checkpoint_managers

    def recorded(*args):
        managers = real(*args)
        for m in managers:
            close = m.close
            m.close = lambda close=close, m=m: closed.append(m) or close()
        return managers

    monkeypatch.setattr(rundir, "checkpoint_managers", recorded)
    with pytest.raises(TrainingDiverged, match=r"in step (\d+) .*last good checkpoint is step") as err:
        train(small_config, str(tmp_path / "run"), progress=False)
    assert len(closed) == 2  # both managers closed (their threads end, pending saves finish) despite the error
    bad_step = int(err.value.args[0].split("in step ")[1].split()[0])
    ckpts = sorted(int(d) for d in os.listdir(tmp_path / "run" / "checkpoints") if d.isdigit())
    assert ckpts and max(ckpts) == bad_step - 1


def test_the_loop_reads_the_loss_only_at_its_checks_and_a_divergence_between_them_is_caught(
    small_config, tmp_path, monkeypatch
):
    """No host sync per step (a GPU's dispatch runs ahead): the loss is read at log, evaluation and checkpoint steps
    only, and the largest loss since the last check catches one bad step between them, before any checkpoint."""
    from deepsea import train as train_module

    apply_overrides(
        small_config, ["train.checkpoint_every=5", "train.log_every=5", "train.eval_every=100", "train.steps=30"]
    )
    real_step = train_module._train_step

    def one_nan_at_step_12(config, setup, pp):
        step = real_step(config, setup, pp)

        def stepped(state, batch, rng):
            state, m = step(state, batch, rng)
            return state, m | {"loss": jnp.where(state.step == 12, jnp.nan, m["loss"])}

        return stepped

    checks = []
    real_check = train_module._check_divergence
    monkeypatch.setattr(train_module, "_train_step", one_nan_at_step_12)
    monkeypatch.setattr(train_module, "_check_divergence", lambda *a: checks.append(a[1:3]) or real_check(*a))
    with pytest.raises(TrainingDiverged, match=r"reached nan in steps 11-15 .*last good checkpoint is step 10"):
        train(small_config, str(tmp_path / "run"), progress=False)
    assert checks == [(1, 5), (6, 10), (11, 15)]  # one read per 5 steps, none between
    ckpts = sorted(int(d) for d in os.listdir(tmp_path / "run" / "checkpoints") if d.isdigit())
    assert max(ckpts) == 10  # the window's steps were never checkpointed


def test_convroll4_parameter_count_matches_the_published_table():
    def conv(cin, cout):
        return 9 * cin * cout + cout

    stages = [[32, 16], [64, 32], [128, 128, 64], [256, 256, 128]]
    total, cin = 0, 1
    for stage in stages:
        for cout in stage:
            total += conv(cin, cout)
            cin = cout
        cin *= 4  # the conv roll stacks the 4 views' maps
    total += (5 * 5 * 4 * 128) * 1024 + 1024  # maxout 512 x 2 on the rolled 5x5 maps
    total += 512 * 1024 + 1024  # maxout 512 x 2 after the cyclic pool
    total += 512 * 121 + 121  # softmax
    model = build_model({"name": "convroll4"}, 121)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 95, 95, 1))))["params"]
    assert sum(count_params(params).values()) == total == 15_600_105


@pytest.mark.parametrize("name", ["convroll4", "plain"])
def test_models_invariance_where_they_should_be(name, rng):
    from deepsea.equivariance import check_invariance

    model = build_model({"name": name, "width": 0.25}, 10)
    params = random_params(model, jnp.zeros((1, 47, 47, 1)))
    fn = jax.jit(lambda x: model.apply(params, x))
    x = jnp.asarray(rng.standard_normal((2, 47, 47, 1)), jnp.float32)
    if name == "convroll4":
        check_invariance(fn, "c4", x, atol=1e-5)
    else:
        with pytest.raises(AssertionError, match="not equivariant"):
            check_invariance(fn, "c4", x, atol=1e-5)


@pytest.mark.slow
def test_four_devices_give_the_same_parameters_as_one(tmp_path):
    # Two steps (the second applies the first's momentum), to 1e-6 (measured: 6e-8).  A third step is chaotic
    # here: a leaky ReLU input or pooling window near a tie turns rounding into a different gradient, so even two
    # correct implementations on one device (oneDNN vs XLA convolutions) then differ by 3e-5.
    script = textwrap.dedent(
        """
        import os, sys
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec as P
        from deepsea.configs import load_experiment
        from deepsea.step import create_train_state, make_train_step
        assert jax.local_device_count() == 4, jax.devices()
        c = load_experiment(sys.argv[1], small=True)
        setup = create_train_state(c, 12)
        rng = np.random.default_rng(0)
        batches = [{"image": rng.standard_normal((8, 47, 47, 1)).astype(np.float32),
                    "label": rng.integers(0, 12, 8).astype(np.int32),
                    "raw_size": rng.uniform(20, 200, (8, 2)).astype(np.float32)} for _ in range(2)]
        finals = []
        for n in (1, 4):
            mesh = jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:n])
            state = jax.device_put(create_train_state(c, 12).state, NamedSharding(mesh, P()))
            step = make_train_step(setup.model, setup.optimizer, setup.schedule)
            for b in batches:
                b = {k: jax.device_put(v, NamedSharding(mesh, P("data"))) for k, v in b.items()}
                state, m = step(state, b, jax.random.key(0))
            assert len(b["image"].sharding.device_set) == n
            finals.append(jax.tree.map(np.asarray, state.params))
        diffs = [float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(finals[0]), jax.tree.leaves(finals[1]))]
        print("max difference", max(diffs))
        assert max(diffs) < 1e-6
        """
    )
    # Four host devices, with the suite's other compiler flags (conftest.py).
    env = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"}
    out = subprocess.run(
        [sys.executable, "-c", script, os.path.join(ROOT, "experiments", "synthetic.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "max difference" in out.stdout


@pytest.mark.parametrize("name", ["cp8", "multiscale"])
def test_cp8_and_multiscale_are_exactly_invariant_to_quarter_turns(name, rng):
    """cp8: rotating the image by 90 degrees rotates both its 0- and 45-degree inputs by 90 degrees;
    the multiscale net sees both patches rotated.  Either way the 4-way part makes the output exact."""
    from deepsea.groups import C4

    stages = ((4,), (8,))
    extra = {"small_stages": stages} if name == "multiscale" else {}
    model = build_model({"name": name, "stages": stages, "dense_features": 8, **extra}, 5)
    channels = 2 if name == "cp8" else 1
    x = jnp.asarray(rng.standard_normal((2, 23, 23, channels)), jnp.float32)
    x2 = jnp.asarray(rng.standard_normal((2, 11, 11, 1)), jnp.float32) if name == "multiscale" else None
    params = jax.jit(model.init)(jax.random.key(0), x, x2=x2)
    fn = jax.jit(lambda a, b: model.apply(params, a, x2=b))
    y = fn(x, x2)
    for k in range(1, 4):
        rx = C4.act(k, x, (1, 2))
        rx2 = None if x2 is None else C4.act(k, x2, (1, 2))
        np.testing.assert_allclose(fn(rx, rx2), y, atol=1e-5)
    if name == "cp8":
        with pytest.raises(ValueError, match="divisible by 2"):
            model.init(jax.random.key(0), x[..., :1])
    else:
        with pytest.raises(ValueError, match="needs its fixed-scale input"):
            model.apply(params, x)


def test_cp8_and_multiscale_inputs_from_the_pipeline(rng):
    from deepsea.data import Preprocess, Rescale, preprocess_image
    from deepsea.data.pipeline import preprocess_inputs
    from deepsea.data.transforms import AugmentParams

    img = rng.integers(0, 255, (60, 40), dtype=np.uint8)
    pp = Preprocess(size=31, rescale=Rescale("max_side", 28), extra_rotations=(45.0,), second_size=15)
    out = preprocess_inputs(img, pp, AugmentParams(rotation=10.0))
    assert out["image"].shape == (31, 31, 2) and out["image2"].shape == (15, 15, 1)
    plain = Preprocess(size=31, rescale=Rescale("max_side", 28))
    np.testing.assert_array_equal(out["image"][..., :1], preprocess_image(img, plain, AugmentParams(rotation=10.0)))
    np.testing.assert_array_equal(out["image"][..., 1:], preprocess_image(img, plain, AugmentParams(rotation=55.0)))


@pytest.mark.parametrize(("name", "count"), [("resnet50", 25_557_032), ("resnext50", 25_028_904)])
def test_resnet_parameter_counts_match_the_reference_architectures(name, count):
    model = build_model({"name": name}, 1000)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
    assert sum(x.size for x in jax.tree.leaves(variables["params"])) == count
    assert "batch_stats" in variables
    # a training step updates its batch statistics (traced, not run: the same code path as any model's)
    c = base_config()
    apply_overrides(c, [f"model.name={name}", "model.width=0.5", "data.size=63"])
    setup = create_train_state(c, 5, abstract=True)
    step = make_train_step(setup.model, setup.optimizer, setup.schedule)
    batch = {k: jnp.asarray(v) for k, v in example_inputs(c, 2).items()}
    new_state, metrics = jax.eval_shape(step, setup.state, batch, jax.random.key(0))
    assert set(metrics) >= {"loss", "lr"} and "batch_stats" in new_state.model_state


def test_batch_norm_models_train_with_their_statistics(small_config):
    apply_overrides(small_config, ["model.batch_norm=true", "model.dropout_rate=0.0", "optim.lr=0.003"])
    model, tx, sched, state = _tiny_setup(small_config)
    assert "batch_stats" in state.model_state
    step = make_train_step(model, tx, sched)
    batch = _batch(size=47)
    before = jax.tree.map(np.asarray, state.model_state)
    losses = []
    for _ in range(8):
        state, m = step(state, batch, jax.random.key(0))
        losses.append(float(m["loss"]))
    assert losses[-1] < losses[0]
    assert np.isfinite(losses).all()
    after = jax.tree.leaves(state.model_state)
    changed = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(before), after, strict=True)]
    assert any(changed)


def test_batch_norm_rollnet_stays_exactly_invariant(rng):
    """Batch norm normalises each channel over all views, so in inference mode the net stays exact."""
    from deepsea.equivariance import check_invariance

    cfg = {"name": "rollnet", "stages": ((4, 4), (8,)), "dense_features": 8, "batch_norm": True, "dropout_rate": 0.0}
    model = build_model(cfg, 10)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 23, 23, 1)))
    x = jnp.asarray(rng.standard_normal((2, 23, 23, 1)), jnp.float32)
    # give the running statistics non-trivial values first
    _, upd = model.apply(variables, x, train=True, mutable=["batch_stats"])
    variables = {"params": variables["params"], **upd}
    check_invariance(jax.jit(lambda a: model.apply(variables, a)), "c4", x, atol=1e-5)
    # and in training mode the batch statistics themselves are symmetric across views
    fn = jax.jit(lambda a: model.apply(variables, a, train=True, mutable=["batch_stats"])[0])
    check_invariance(fn, "c4", x, atol=1e-5)


def test_cosine_schedule_warms_up_and_decays(small_config):
    apply_overrides(small_config, ["optim.schedule=cosine", "optim.warmup_steps=10", "optim.lr=0.1"])
    _, sched = make_optimizer(small_config.optim, 110)
    assert [float(sched(s)) for s in (0, 5, 10, 60, 110)] == pytest.approx([0.0, 0.05, 0.1, 0.05, 0.0], abs=1e-7)
    with pytest.raises(ValueError, match="warmup_steps=10 must be smaller than the 10 training steps"):
        make_optimizer(small_config.optim, 10)
    apply_overrides(small_config, ["optim.schedule=linear"])
    with pytest.raises(ValueError, match="schedule"):
        make_optimizer(small_config.optim, 110)


@pytest.mark.parametrize(
    "name", sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "experiments")) if f.endswith(".py") and f[0] != "_")
)
def test_every_experiment_builds_small(name):
    """Each experiment module's small run loads, its model builds at its input size, and its schedule fits its
    steps (at full size: ``deepsea params``, tests/test_cli.py::test_params_for_every_experiment)."""
    config = load_experiment(os.path.join(ROOT, "experiments", f"{name}.py"), small=True)
    state = create_train_state(config, 121, abstract=True).state
    assert sum(count_params(state.params).values()) > 0


def test_the_seeds_recipe_is_the_default():
    """convroll4's published recipe: Nesterov momentum 0.9, lr 0.003, 10x drops at steps 180k and 205k of 215k,
    batch 32, 95x95 patches (largest side 85), dropout 0.5, leaky ReLU 1/3, RMS view pool."""
    c = base_config()
    assert (c.optim.name, c.optim.momentum, c.optim.lr) == ("sgd", 0.9, 0.003)
    assert tuple(c.optim.decay_steps) == (180_000, 205_000) and c.optim.decay_factor == 0.1
    assert (c.train.steps, c.train.batch_size, c.data.size, c.data.rescale) == (215_000, 32, 95, "max_side:85")
    assert (c.model.dropout_rate, c.model.negative_slope, c.model.view_pool_mode) == (0.5, 1 / 3, "rms")
    tx, sched = make_optimizer(c.optim, c.train.steps)
    assert [float(sched(s)) for s in (0, 179_999, 180_000, 205_000)] == pytest.approx([3e-3, 3e-3, 3e-4, 3e-5])
    # Nesterov: the update is -lr * (g + momentum * v) with v = momentum * v + g (optax's form)
    c.optim.weight_decay = 0.0  # the update alone (decay on a zero kernel adds nothing anyway)
    tx, _ = make_optimizer(c.optim, c.train.steps)
    params = {"w": jnp.zeros(2)}
    g = {"w": jnp.asarray([1.0, -2.0])}
    state = tx.init(params)
    u1, state = tx.update(g, state, params)
    u2, state = tx.update(g, state, params)
    np.testing.assert_allclose(u1["w"], -3e-3 * (1 + 0.9) * g["w"], rtol=1e-6)
    np.testing.assert_allclose(u2["w"], -3e-3 * (1 + 0.9 * 1.9) * g["w"], rtol=1e-6)


def test_the_view_pool_comes_after_the_first_dense_layer():
    """The seed pools the views after the first maxout layer (the rolled 5x5 maps flattened), before the second."""
    import flax.linen as nn

    model = build_model({"name": "convroll4", "width": 0.125}, 5)
    order = []

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and context.module.name:
            order.append(context.module.name)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 95, 95, 1))))
    top = [n for n in order if n in ("slice", "conv_roll3", "dense0", "view_pool", "dense1", "logits")]
    assert top[:6] == ["slice", "conv_roll3", "dense0", "view_pool", "dense1", "logits"]


def test_cp8_depends_on_its_45_degree_input(rng):
    model = build_model({"name": "cp8", "stages": ((4,), (8,)), "dense_features": 8, "dropout_rate": 0.0}, 5)
    x = jnp.asarray(rng.standard_normal((2, 23, 23, 2)), jnp.float32)
    params = jax.jit(model.init)(jax.random.key(0), x)
    apply = jax.jit(model.apply)
    y = np.asarray(apply(params, x))
    zeroed = np.asarray(x).copy()
    zeroed[..., 1] = 0.0
    swapped = np.asarray(x)[..., ::-1].copy()
    assert float(np.abs(np.asarray(apply(params, zeroed)) - y).max()) > 1e-3
    # the two copies go through the same layers and are pooled symmetrically: swapping them changes nothing,
    # so the 45-degree copy matters as an input of its own, not by its channel position
    np.testing.assert_allclose(apply(params, swapped), y, atol=1e-5)


def test_multiscale_merges_its_branches_before_the_softmax_layer(rng):
    stages, small = ((4,), (8,)), ((3,),)
    model = build_model(
        {"name": "multiscale", "stages": stages, "small_stages": small, "dense_features": 8, "dropout_rate": 0.0}, 5
    )
    x = jnp.asarray(rng.standard_normal((2, 23, 23, 1)), jnp.float32)
    x2 = jnp.asarray(rng.standard_normal((2, 11, 11, 1)), jnp.float32)
    params = jax.jit(model.init)(jax.random.key(0), x, x2=x2)["params"]
    assert set(params) == {"large", "small", "logits"}
    assert "logits" not in params["large"] and "logits" not in params["small"]  # no softmax layer per branch
    assert params["logits"]["kernel"].shape == (8 + 8, 5)  # the two branches' last hidden layers, concatenated
    assert params["small"]["conv0_0"]["kernel"].shape[-1] == 3 and "conv1_0" not in params["small"]
    y = model.apply({"params": params}, x, x2=x2)
    assert float(jnp.abs(model.apply({"params": params}, x, x2=2 * x2) - y).max()) > 1e-4


def test_the_config_is_locked_and_overrides_are_typed(tmp_path):
    c = base_config()
    with pytest.raises(AttributeError, match="dropuot"):
        c.model.dropuot = 0.1
    apply_overrides(c, ["model.width=0.5", "train.steps=10", "model.symmetry=none", "aug.flip=false"])
    assert (c.model.width, c.train.steps, c.model.symmetry, c.aug.flip) == (0.5, 10, None, False)
    apply_overrides(c, ["model.stages=((4, 3), (6,))", "optim.name=adam"])
    assert c.model.stages == ((4, 3), (6,)) and c.optim.name == "adam"
    for bad, match in [
        ("train.steps=1.5", "train.steps"),
        ("aug.flip=maybe", "true or false"),
        ("model.stages=4", "tuple"),
        ("model.dropuot=0.1", "unknown config key"),
        ("optim", "key=value"),
    ]:
        with pytest.raises(ConfigError, match=match):
            apply_overrides(c, [bad])
    module = tmp_path / "typo.py"
    module.write_text(
        "from deepsea.configs import base_config\n\n\ndef get_config(small=False):\n"
        "    c = base_config()\n    c.model.dropuot = 0.1\n    return c\n"
    )
    with pytest.raises(ConfigError, match=r"typo\.py.*dropuot"):
        load_experiment(str(module))


def test_example_inputs_match_every_experiments_pipeline():
    for name in ("cp8", "multiscale", "synthetic"):
        config = load_experiment(os.path.join(ROOT, "experiments", f"{name}.py"))
        batch = example_inputs(config, 3, seed=0)
        channels = 1 + len(config.data.extra_rotations)
        assert batch["image"].shape == (3, config.data.size, config.data.size, channels)
        assert ("image2" in batch) == bool(config.data.second_size)
        assert batch["raw_size"].shape == (3, 2) and batch["label"].shape == (3,)


def test_budget_fits_the_most_steps_that_fill_the_minutes():
    b = Budget.fit(1.0, setup_s=10.0, step_s=0.5, eval_s=5.0, eval_every=20)
    assert b.steps == 60  # 60 s - 10 s setup - 5 s final validation = 45 s at 0.5 + 5/20 s a step
    assert Budget.fit(0.1, setup_s=30.0, step_s=0.5, eval_s=5.0, eval_every=20).steps == 1  # at least one
    # the first epoch's 10 steps at 1.25 s (its images decoded for the first time), the later ones at 0.5 s
    b = Budget.fit(1.0, setup_s=10.0, step_s=0.5, eval_s=5.0, eval_every=20, first_step_s=1.25, epoch_steps=10)
    assert (b.steps, b.first_step_s, b.epoch_steps) == (50, 1.25, 10)  # 10 x 1.5 s + 40 x 0.75 s = 45 s
    assert Budget.fit(1.0, 10.0, 0.5, 5.0, 20, first_step_s=1.25, epoch_steps=100).steps == 30  # 30 x 1.5 s = 45 s


def test_the_budget_probe_reads_its_images_again_from_the_cache(monkeypatch, tmp_path):
    from deepsea.data import pipeline
    from deepsea.train import _Revisit

    reads = []
    real_read = pipeline.read_input
    monkeypatch.setattr(pipeline, "read_input", lambda path, pp: reads.append(path) or real_read(path, pp))
    from skimage.io import imsave

    from deepsea.data import AugmentedSource, Preprocess

    paths = [str(tmp_path / f"{i}.png") for i in range(6)]
    for i, path in enumerate(paths):
        imsave(path, np.full((5 + i, 7), 40 * i, np.uint8), check_contrast=False)
    source = AugmentedSource(paths, np.arange(6) % 2, Preprocess(size=8), seed=0, cache=True)
    probe = _Revisit(source, 4)  # the probe's first pass reads 4 images, its second the same 4 again
    first = [probe[i]["image"] for i in range(4)]
    assert len(reads) == 4
    again = [probe[i]["image"] for i in range(4, 8)]
    assert len(reads) == 4 and len(probe) == len(source)  # read again from the cache, not from the files
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))


@pytest.mark.slow
def test_a_time_budget_chooses_the_steps_and_resume_keeps_them(small_config, tmp_path):
    apply_overrides(
        small_config,
        [
            "train.budget_minutes=0.05",
            "train.budget_probe_steps=2",
            "train.steps=100000",
            "train.eval_every=1000",
            "train.checkpoint_every=1",
        ],
    )
    run = tmp_path / "run"
    train(small_config, str(run), stop_after=1, progress=False)  # "killed" after its first step
    budget = json.loads((run / "budget.json").read_text())
    assert budget["steps"] == json.loads((run / "config.json").read_text())["train"]["steps"] >= 1
    assert budget["step_s"] > 0 and budget["eval_s"] > 0 and budget["minutes"] == 0.05
    fitted = Budget.fit(
        0.05, budget["setup_s"], budget["step_s"], budget["eval_s"], 1000, budget["first_step_s"], budget["epoch_steps"]
    )
    assert budget["first_step_s"] > 0 and budget["epoch_steps"] >= 1
    assert budget["steps"] == fitted.steps < 100000
    assert budget["lr_drops_at"] == [round(f * budget["steps"]) for f in small_config.optim.decay_steps]
    small_config.train.checkpoint_every = 1000  # (a resumed run may save less often: one save, at its end)
    resumed = train(small_config, str(run), progress=False)  # resumes with the steps chosen at the start
    assert int(resumed.state.step) == budget["steps"]
    assert json.loads((run / "budget.json").read_text()) == budget  # not measured again
    assert small_config.train.steps == 100000  # the caller's config is not changed


def test_a_budget_scales_a_fractional_step_schedule_and_refuses_drops_it_never_reaches():
    from deepsea.configs import base_config
    from deepsea.train import schedule_fits_budget

    optim = base_config().optim  # the seed's drops as steps: (180000, 205000) of 215000
    with pytest.raises(UserError, match=r"optim.decay_steps=\(180000, 205000\).*beyond the 5000 steps.*fractions"):
        schedule_fits_budget(optim, 5000)
    assert schedule_fits_budget(optim, 215_000) == (180_000, 205_000)
    optim.decay_steps = (0.84, 0.95)
    assert schedule_fits_budget(optim, 5000) == (4200, 4750)
    optim.schedule = "cosine"
    assert schedule_fits_budget(optim, 10) == ()


def test_run_folders_written_before_the_key_renames_still_load(tmp_path):
    from deepsea.rundir import load_config

    old = {"model": {"name": "rollnet", "dropout": 0.2, "view_pool": "mean"}, "train": {"steps": 3}}
    (tmp_path / "config.json").write_text(json.dumps(old))
    config = load_config(str(tmp_path))
    assert (config.model.dropout_rate, config.model.view_pool_mode) == (0.2, "mean")
    assert "dropout" not in config.model and "view_pool" not in config.model
    assert build_model(config.model, 5).view_pool_mode == "mean"
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load_config(str(tmp_path / "missing"))


def test_validation_during_training_can_use_the_test_time_transforms(small_config, tmp_path):
    """``train.eval_tta``: the best checkpoint is chosen on the predictions ``evaluate --tta`` will make."""
    from deepsea.evaluation import evaluate_run

    apply_overrides(small_config, ["train.eval_tta=2", "train.steps=2", "train.eval_every=2"])
    result = train(small_config, str(tmp_path / "run"), progress=False)
    rows = evaluate_run(restore_run(str(tmp_path / "run")), tta=2, progress=False).rows
    assert [r.label for r in rows] == ["plain", "TTA 2"]
    assert result.best.log_loss == pytest.approx(rows[1].log_loss, rel=1e-5)
    assert abs(result.best.log_loss - rows[0].log_loss) > 1e-6  # not the plain predictions


def test_a_runs_config_is_restored_strictly(tmp_path):
    """The stored config over the recipe, locked: a key added since reads as its default, a stored key nobody
    knows is an error naming it, lists become the recipe's tuples; a model key its builder would ignore is refused."""
    from deepsea.configs import ConfigError, base_config, load_experiment_with
    from deepsea.models import build_model
    from deepsea.rundir import load_config

    stored = json.loads(load_experiment_with(os.path.join(ROOT, "experiments", "synthetic.py")).to_json_best_effort())
    del stored["train"]["pretrained_warmup_steps"]  # a run from before the key existed
    (tmp_path / "config.json").write_text(json.dumps(stored))
    config = load_config(str(tmp_path))
    assert config.train.pretrained_warmup_steps == base_config().train.pretrained_warmup_steps
    assert config.model.stages == ((16,), (32,), (64,)) and config.is_locked
    with pytest.raises(AttributeError):
        config.train.nonexistent = 1  # locked
    stored["model"]["dropuot"] = 0.1
    (tmp_path / "config.json").write_text(json.dumps(stored))
    with pytest.raises(ConfigError, match=r"config.json: unknown config key 'model.dropuot'"):
        load_config(str(tmp_path))
    from deepsea.models import _defaults

    recipe = base_config().model  # the check compares with the models' own defaults: the recipe holds the same
    assert {k: v for k, v in _defaults().items() if k in recipe and k != "name"} == {
        k: v for k, v in recipe.items() if k in _defaults() and k != "name"
    }
    resnet = load_experiment_with(os.path.join(ROOT, "experiments", "resnet50_cpu.py"), ["model.precision=bfloat16"])
    with pytest.raises(ValueError, match=r"'resnet50' does not take model.precision"):
        build_model(resnet.model, 5)


def test_a_key_unset_in_the_recipe_takes_a_bare_word():
    """``--set model.symmetry=c4`` on a plain experiment (symmetry None) failed with 'malformed node or string'."""
    from deepsea.configs import load_experiment_with

    plain = os.path.join(ROOT, "experiments", "ndsb_cpu_plain.py")
    assert load_experiment_with(plain, ["model.symmetry=c4"]).model.symmetry == "c4"
    assert load_experiment_with(plain, ["model.symmetry='d4'"]).model.symmetry == "d4"
    assert load_experiment_with(plain, ["model.symmetry=none"]).model.symmetry is None
    with pytest.raises(ConfigError, match=r"model\.stages"):
        load_experiment_with(plain, ["model.stages=((16,), (32"])  # a tuple key still wants a literal


def test_accumulated_micro_batches_give_the_large_batchs_step():
    """train.accumulate = K: K micro-batches of 8, averaged, are one step on the batch of 8K (no dropout, no batch
    norm: then the arithmetic differs only in the order of the sums: float rounding), with per-example loss
    weights too; the loss is the large batch's mean."""
    cfg = load_experiment(os.path.join(ROOT, "experiments", "synthetic.py"), small=True)
    apply_overrides(cfg, ["model.dropout_rate=0.0", "optim.name=sgd"])
    setup = create_train_state(cfg, 12)
    big = _batch(n=32, seed=3)
    big["weight"] = np.random.default_rng(1).uniform(0.5, 2.0, 32).astype(np.float32)  # per-example loss weights
    rng = jax.random.key(0)
    results = {}
    for k in (1, 4):
        step = make_train_step(setup.model, setup.optimizer, setup.schedule, accumulate=k)
        state = jax.tree.map(jnp.copy, setup.state)  # the step donates its state
        state, metrics = step(state, {n: jnp.asarray(v) for n, v in big.items()}, rng)
        results[k] = (state, metrics)
    (s1, m1), (s4, m4) = results[1], results[4]
    np.testing.assert_allclose(float(m4["loss"]), float(m1["loss"]), rtol=1e-6)
    assert float(m4["accuracy"]) == float(m1["accuracy"])
    before = [np.asarray(x, np.float64) for x in jax.tree.leaves(setup.state.params)]
    for a, b, p0 in zip(jax.tree.leaves(s4.params), jax.tree.leaves(s1.params), before, strict=True):
        update4, update1 = np.asarray(a, np.float64) - p0, np.asarray(b, np.float64) - p0
        assert np.abs(update1).max() > 1e-5  # every layer moved: the comparison is not vacuous
        np.testing.assert_allclose(update4, update1, rtol=1e-4, atol=1e-8)  # the updates, not the parameters
    with pytest.raises(UserError, match=r"does not split into train\.accumulate=5"):
        make_train_step(setup.model, setup.optimizer, setup.schedule, accumulate=5)(
            jax.tree.map(jnp.copy, setup.state), {n: jnp.asarray(v) for n, v in big.items()}, rng
        )


def test_a_run_with_accumulation_takes_k_batches_a_step(small_config, tmp_path):
    apply_overrides(small_config, ["train.accumulate=3", "train.steps=2", "train.log_every=1"])
    train(small_config, str(tmp_path / "run"), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2]
    from deepsea.train import step_batch

    assert step_batch(small_config) == 3 * small_config.train.batch_size


def test_hard_pseudo_labels_are_the_teachers_top_class_one_hot():
    from deepsea.train import pseudo_targets

    probs = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]], np.float32)
    np.testing.assert_array_equal(pseudo_targets(probs, hard=True), [[0, 1, 0], [1, 0, 0]])
    assert pseudo_targets(probs, hard=False) is probs


def test_label_noise_corrupts_that_share_of_the_training_labels_to_other_classes():
    from ml_collections import ConfigDict

    from deepsea.train import _corrupt_labels

    labels = np.repeat(np.arange(7), 40).astype(np.int32)
    data = ConfigDict({"label_noise": 0.25, "split_seed": 3})
    noisy = _corrupt_labels(labels, 7, data)
    changed = noisy != labels
    assert changed.sum() == 70 and noisy.min() >= 0 and noisy.max() < 7  # a quarter, each to another class
    np.testing.assert_array_equal(_corrupt_labels(labels, 7, data), noisy)  # the same draw every time: resumable
    assert np.bincount(noisy[changed], minlength=7).min() > 0  # spread over the classes
    data.label_noise = 0.0
    assert _corrupt_labels(labels, 7, data) is labels
    data.label_noise = 1.0
    with pytest.raises(UserError, match=r"data.label_noise=1.0: expected a share in \[0, 1\)"):
        _corrupt_labels(labels, 7, data)
