"""Ablation: C4 with conv rolls and a dense roll before the view pool; see ``ablation``.

Launch: deepsea sweep experiments/ablation_c4_denseroll.py --data ../shared/data/ndsb/train --seeds 2 --epochs 2 \\
    --out runs/ablation/ablation_c4_denseroll
Small run: deepsea train experiments/ablation_c4_denseroll.py --small
"""

from experiments import ablation


def get_config(small: bool = False):
    c = ablation.get_config(small)
    c.name = "ablation_c4_denseroll"
    c.model.dense_roll = True
    return c
