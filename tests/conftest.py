import os

import jax
import numpy as np
import pytest

# Exact comparisons below rely on float32 matmuls and convolutions being computed in float32.
jax.config.update("jax_default_matmul_precision", "highest")

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
