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
