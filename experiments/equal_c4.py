"""The equal-compute study's cyclic network: ``ndsb_cpu_plain``'s recipe with C4 slice, conv rolls and RMS view pool,
its width sized so that a training step costs what the plain recipe's does (issue 27; see ``equal_compute``).

Launch: deepsea train experiments/equal_c4.py --data ../shared/data/ndsb/train --workdir runs/equal_c4
Small run: deepsea train experiments/equal_c4.py --data ../shared/data/ndsb/train --small
"""

from deepsea.configs import small_run
from experiments import ndsb_cpu_plain

WIDTH = 0.22  # deepsea bench experiments/equal_c4.py --match-time experiments/ndsb_cpu_plain.py


def get_config(small: bool = False):
    c = ndsb_cpu_plain.get_config()
    c.name = "equal_c4"
    c.model.symmetry = "c4"
    c.model.orbit_average = ""  # invariant by construction: predicts on one copy
    c.model.width = WIDTH
    c.data.rescale = ndsb_cpu_plain.LARGEST_SIDE  # the study's inputs: before the plain recipe rescaled by moments
    if small:
        small_run(c)
    return c
