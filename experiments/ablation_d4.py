"""Ablation: dihedral (D4: rotations and mirror images, eight views) instead of cyclic, with conv rolls; see
``ablation``.

Launch: deepsea sweep experiments/ablation_d4.py --data ../shared/data/ndsb/train --seeds 2 --epochs 2 \\
    --out runs/ablation/ablation_d4
Small run: deepsea train experiments/ablation_d4.py --small
"""

from experiments import ablation


def get_config(small: bool = False):
    c = ablation.get_config(small)
    c.name = "ablation_d4"
    c.model.symmetry = "d4"
    return c
