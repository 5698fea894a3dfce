"""The seed's multiscale net: a 95x95 size-rescaled branch and a 47x47 fixed-scale (1/5) branch.

Launch: deepsea train experiments/multiscale.py --data ../shared/data/ndsb/train --workdir runs/multiscale
Small run: deepsea train experiments/multiscale.py --small
"""

from deepsea.models import CONVROLL4_STAGES
from experiments import convroll4


def get_config(small: bool = False):
    c = convroll4.get_config(small)
    c.name = "multiscale"
    c.model.name = "multiscale"
    c.data.second_size = 47
    c.data.second_rescale = "factor:0.2"
    with c.unlocked():
        c.model.small_stages = CONVROLL4_STAGES[:3]  # the fixed-scale branch: convroll4's first three stages
    return c
