"""The equal-compute study's regular cyclic network (issue 27): ``equal_c4`` with a conv roll before every
convolution (``model.roll_every_conv``: each layer a group convolution over all four views, escnn's regular
networks) at a quarter of ``ndsb_cpu``'s per-view widths, so a training step does the FLOPs ``ndsb_cpu``'s does,
with every stage folded (``model.fold_views``: its convolutions then have the plain network's shapes, so the step
runs at about the plain one's speed) and ``ndsb_cpu``'s inputs (rescaled by image moments).

Launch: deepsea train experiments/equal_c4_regular.py --data ../shared/data/ndsb/train --workdir runs/c4_regular
Small run: deepsea train experiments/equal_c4_regular.py --data ../shared/data/ndsb/train --small
"""

from deepsea.groups import get_group
from experiments import equal_c4, ndsb_cpu


def get_config(small: bool = False, symmetry: str = "c4"):
    c = equal_c4.get_config(small)
    c.name = f"equal_{symmetry}_regular"
    c.model.symmetry = symmetry
    c.model.roll_every_conv = True
    c.model.width = 1.0 / get_group(symmetry).order  # a view's channels times the views: the plain network's
    c.model.fold_views = len(c.model.stages)  # every stage: every convolution has the plain network's shape
    c.data.rescale = ndsb_cpu.get_config(small).data.rescale
    return c
