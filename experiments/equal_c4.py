"""The equal-compute study's cyclic network: ``ndsb_cpu``'s recipe with C4 slice, conv rolls and RMS view pool,
its width sized so that a training step costs what ``ndsb_cpu``'s does (issue 27; see ``equal_compute``).

Launch: deepsea train experiments/equal_c4.py --data ../shared/data/ndsb/train --workdir runs/equal_c4
Small run: deepsea train experiments/equal_c4.py --data ../shared/data/ndsb/train --small
"""

from deepsea.configs import small_run
from experiments import ndsb_cpu

WIDTH = 0.22  # deepsea bench experiments/equal_c4.py --match-time experiments/ndsb_cpu.py


def get_config(small: bool = False):
    c = ndsb_cpu.get_config()
    c.name = "equal_c4"
    c.model.symmetry = "c4"
    c.model.orbit_average = ""  # invariant by construction: predicts on one copy
    c.model.width = WIDTH
    c.data.rescale = ndsb_cpu.LARGEST_SIDE  # the study's inputs: ndsb_cpu's before it rescaled by image moments
    if small:
        small_run(c)
    return c
