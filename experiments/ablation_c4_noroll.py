"""Ablation: C4 slice and view pool without conv rolls (each view's maps stay its own); see ``ablation``.

Launch: deepsea sweep experiments/ablation_c4_noroll.py --data ../shared/data/ndsb/train --seeds 2 --epochs 2 \\
    --out runs/ablation/ablation_c4_noroll
Small run: deepsea train experiments/ablation_c4_noroll.py --small
"""

from experiments import ablation


def get_config(small: bool = False):
    c = ablation.get_config(small)
    c.name = "ablation_c4_noroll"
    c.model.conv_roll = False
    return c
