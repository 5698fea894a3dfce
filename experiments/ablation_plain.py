"""Ablation: the same backbone without any symmetry (no slice, rolls or view pool); see ``ablation``.

Launch: deepsea sweep experiments/ablation_plain.py --data ../shared/data/ndsb/train --seeds 2 --epochs 2 \\
    --out runs/ablation/ablation_plain
Small run: deepsea train experiments/ablation_plain.py --small
"""

from experiments import ablation


def get_config(small: bool = False):
    c = ablation.get_config(small)
    c.name = "ablation_plain"
    c.model.symmetry = None
    return c
