"""The NDSB recipe for 2 CPU cores and about 30 minutes: a regular C4 network, invariant to 90-degree rotations
by construction, at the plain network's cost.

``ndsb_cpu_plain``'s recipe (47x47 patches rescaled by image moments, the raw size late-fused, bfloat16, no batch
norm, mild augmentation, Adam with a cosine decay over the steps that fill 30 minutes on the machine that trains
it: ``train.budget_minutes``) with C4 slice, RMS view pool and a conv roll before every convolution
(``model.roll_every_conv``: each layer a group convolution over the four views, escnn's regular networks).  Each
view has a quarter of the plain network's channels, so a training step does the plain step's FLOPs, and every
stage is folded (``model.fold_views``: the views' kernels in one convolution), so its convolutions have the plain
network's shapes and the step runs at the plain one's speed.  At evaluation it averages its predictions for the
image and its mirror image (``model.orbit_average = "d4"``: the network is already invariant to the rotations, so
the D4 average needs only these 2 copies, where the plain recipe's needs 8): D4-invariant to float rounding.
Results and why it replaced the plain recipe: ``docs/results.md`` (equal compute).

Launch: deepsea train experiments/ndsb_cpu.py --data ../shared/data/ndsb/train --workdir runs/ndsb_cpu
Then:   deepsea evaluate --workdir runs/ndsb_cpu --tta 70
Small run: deepsea train experiments/ndsb_cpu.py --data ../shared/data/ndsb/train --small
"""

from deepsea.configs import small_run
from deepsea.groups import get_group
from experiments import ndsb_cpu_plain


def get_config(small: bool = False, symmetry: str = "c4"):
    c = ndsb_cpu_plain.get_config()
    c.name = "ndsb_cpu"
    c.model.symmetry = symmetry
    c.model.orbit_average = "d4"  # one copy per coset of the network's own group (C4: the image and its mirror)
    c.model.roll_every_conv = True
    c.model.width = 1.0 / get_group(symmetry).order  # a view's channels times the views: the plain network's
    c.model.fold_views = len(c.model.stages)  # every stage: every convolution has the plain network's shape
    if small:
        small_run(c)
    return c
