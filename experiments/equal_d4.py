"""The equal-compute study's dihedral network: ``ndsb_cpu``'s recipe with D4 slice, conv rolls and RMS view pool,
its width sized so that a training step costs what ``ndsb_cpu``'s does (issue 27; see ``equal_compute``).

Launch: deepsea train experiments/equal_d4.py --data ../shared/data/ndsb/train --workdir runs/equal_d4
Small run: deepsea train experiments/equal_d4.py --data ../shared/data/ndsb/train --small
"""

from deepsea.configs import small_run
from experiments import ndsb_cpu

WIDTH = 0.225  # the FLOPs of ndsb_cpu (its step-time match is below 0.075): --match-flops experiments/ndsb_cpu.py


def get_config(small: bool = False):
    c = ndsb_cpu.get_config()
    c.name = "equal_d4"
    c.model.symmetry = "d4"
    c.model.orbit_average = ""  # invariant by construction: predicts on one copy
    c.model.width = WIDTH
    if small:
        small_run(c)
    return c
