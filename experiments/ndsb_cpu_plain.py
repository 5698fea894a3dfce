"""The ablation of ndsb_cpu: the same backbone without symmetry, at the same CPU time.

No slice, rolls or view pool: rotation and flips come only from the
augmentation.  Twice the widths (so the layers after each would-be roll see as
many channels as ndsb_cpu's do), and as many steps as fit in ndsb_cpu's ~30
minutes (the plain step is ~1.4x faster: ``deepsea bench`` on both).

Launch: deepsea train experiments/ndsb_cpu_plain.py --data ../shared/data/ndsb/train --workdir runs/ndsb_cpu_plain
Small run: deepsea train experiments/ndsb_cpu_plain.py --data ../shared/data/ndsb/train --small
"""

from deepsea.configs import small_run
from experiments import ndsb_cpu


def get_config(small: bool = False):
    c = ndsb_cpu.get_config()
    c.name = "ndsb_cpu_plain"
    c.model.symmetry = None
    c.model.width = 1.0
    c.train.steps = 7600
    c.train.eval_every = 1500
    if small:
        small_run(c)
    return c
