"""Random parameters for a Flax module without running its initialisers: the shapes from ``jax.eval_shape``,
the values drawn by NumPy (kernels at the scale of a ``1/sqrt(fan_in)`` initialiser, biases and other vectors
small and non-zero).  Tests of exact properties (invariance, equal implementations) hold for any parameters, and
the initialisers of a full-size network cost far more on the CPU than the network itself."""

import jax
import jax.numpy as jnp
import numpy as np


def random_params(module, *inputs, seed: int = 0) -> dict:
    """Variables for ``module.apply`` at ``inputs``' shapes; only a ``params`` collection is supported."""
    shapes = jax.eval_shape(module.init, jax.random.key(seed), *inputs)
    if set(shapes) != {"params"}:
        raise ValueError(f"random_params draws only a params collection, not {sorted(set(shapes) - {'params'})}")
    rng = np.random.default_rng(seed)

    def draw(s: jax.ShapeDtypeStruct) -> jax.Array:
        fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 100
        return jnp.asarray(rng.standard_normal(s.shape, np.float32) / np.sqrt(fan_in), s.dtype)

    return {"params": jax.tree.map(draw, shapes["params"])}
