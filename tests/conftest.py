import gc
import os

# The tests' programs are small and run a few times each, so compiling them is most of the suite's time: the suite
# compiles with the flags xla_flags.py explains.  A developer's own XLA_FLAGS win.
from xla_flags import SUITE_XLA_FLAGS  # before jax is imported

if not os.environ.get("DEEPSEA_DEFAULT_XLA_FLAGS"):  # set by the tests that check the compiler's defaults too
    os.environ.setdefault("XLA_FLAGS", SUITE_XLA_FLAGS)

import jax
import numpy as np
import pytest

# Exact comparisons below rely on float32 matmuls and convolutions being computed in float32.
jax.config.update("jax_default_matmul_precision", "highest")

# Many tests compile the same programs (the small experiments' training and prediction steps) in different
# worker processes, and every run of train() traces its step anew: XLA's persistent cache, shared by the
# workers and the subprocesses the tests start, compiles each program once per test session (every program,
# however quick to compile: the many small ones add up on a machine whose cache is cold).
XLA_CACHE = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), f"deepsea-tests-xla-{os.getuid()}")
)
jax.config.update("jax_compilation_cache_dir", XLA_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_collection_finish(session: pytest.Session) -> None:
    """JAX's tracing makes millions of short-lived objects, and Python's full collections walk every object of the
    imported libraries each time: what exists once the tests are collected is frozen out of the collections, and
    the youngest generation is collected after 50,000 net allocations instead of 700."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_NDSB = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "ndsb", "train")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def ndsb_root() -> str:
    """The shared NDSB training images; a failure in CI if absent, a skip elsewhere."""
    root = os.path.normpath(SHARED_NDSB)
    if os.path.isdir(root):
        return root
    if os.environ.get("CI"):
        pytest.fail(f"CI must have the shared NDSB images at {root}")
    pytest.skip(f"the shared NDSB images are not at {root} (they are beside the checkout in CI)")


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path_factory):
    """``cli(*args, rc=0)``: runs ``deepsea ARGS`` in this process from the repository root, checks the exit
    status and returns what it printed (stdout and stderr)."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("DEEPSEA_DATA", str(tmp_path_factory.getbasetemp() / "deepsea-data"))

    from deepsea.cli import main

    def run(*args: str, rc: int = 0) -> str:
        code = 0
        try:
            main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out = capsys.readouterr()
        assert code == rc, out.out + out.err
        return out.out + out.err

    return run


@pytest.fixture(scope="session")
def train_small(tmp_path_factory):
    """``train_small(name, overrides) -> run folder``: a small run of ``experiments/synthetic.py`` with
    ``overrides``, trained under a fresh folder ``name`` once per session and worker, for module-scoped fixtures
    that only read it (the generated data shared with every test)."""
    from deepsea.configs import apply_overrides, load_experiment
    from deepsea.train import train

    made: dict[tuple[str, ...], str] = {}

    def make(name: str, overrides: list[str]) -> str:
        if tuple(overrides) in made:  # the same run serves every module that asks for it
            return made[tuple(overrides)]
        run = str(tmp_path_factory.mktemp(name) / "run")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("DEEPSEA_DATA", str(tmp_path_factory.getbasetemp() / "deepsea-data"))
            config = load_experiment(os.path.join(ROOT, "experiments", "synthetic.py"), small=True)
            apply_overrides(config, overrides)
            train(config, run, progress=False)
        made[tuple(overrides)] = run
        return run

    return make
