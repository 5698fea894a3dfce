"""Ablation: the plain backbone made exactly C4-invariant at evaluation only, by averaging its predictions over the
input's four rotations (no cyclic pooling in training); see ``ablation``.

Launch: deepsea sweep experiments/ablation_plain_orbit.py --data ../shared/data/ndsb/train --seeds 2 --epochs 2 \\
    --out runs/ablation/ablation_plain_orbit
Small run: deepsea train experiments/ablation_plain_orbit.py --small
"""

from experiments import ablation_plain


def get_config(small: bool = False):
    c = ablation_plain.get_config(small)
    c.name = "ablation_plain_orbit"
    c.model.orbit_average = "c4"
    return c
