"""The equal-compute study's dihedral network: ``equal_c4`` with D4 slice, conv rolls and RMS view pool, its width
sized so that a training step does the FLOPs ``ndsb_cpu``'s does (no D4 width matches its step time; issue 27, see
``equal_compute``).

Launch: deepsea train experiments/equal_d4.py --data ../shared/data/ndsb/train --workdir runs/equal_d4
Small run: deepsea train experiments/equal_d4.py --data ../shared/data/ndsb/train --small
"""

from experiments import equal_c4

WIDTH = 0.225  # deepsea bench experiments/equal_d4.py --match-flops experiments/ndsb_cpu_plain.py


def get_config(small: bool = False):
    c = equal_c4.get_config(small)
    c.name = "equal_d4"
    c.model.symmetry = "d4"
    c.model.width = WIDTH
    return c
