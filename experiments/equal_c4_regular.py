"""The equal-compute study's regular cyclic network (issue 27), ``ndsb_cpu``'s network (without its mirror average
at evaluation): ``equal_c4`` with a
conv roll before every convolution (``model.roll_every_conv``: each layer a group convolution over all four
views, escnn's regular networks) at a quarter of the plain recipe's per-view widths, so a training step does the
FLOPs the plain step does, with every stage folded (``model.fold_views``: its convolutions then have the plain
network's shapes, so the step runs at about the plain one's speed) and inputs rescaled by image moments.

Launch: deepsea train experiments/equal_c4_regular.py --data ../shared/data/ndsb/train --workdir runs/c4_regular
Small run: deepsea train experiments/equal_c4_regular.py --data ../shared/data/ndsb/train --small
"""

from experiments import ndsb_cpu


def get_config(small: bool = False, symmetry: str = "c4"):
    c = ndsb_cpu.get_config(small, symmetry)
    c.name = f"equal_{symmetry}_regular"
    c.model.orbit_average = ""  # the study's arm: one copy, invariant to the network's own group only
    return c
