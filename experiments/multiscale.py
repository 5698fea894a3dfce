"""The seed's multiscale net: a 95x95 size-rescaled branch and a 47x47 fixed-scale (1/5) branch.

Launch: deepsea train experiments/multiscale.py --data ../shared/data/ndsb/train --workdir runs/multiscale
Small run: deepsea train experiments/multiscale.py --small
"""

from experiments import convroll4


def get_config(small: bool = False):
    c = convroll4.get_config(small)
    c.name = "multiscale"
    c.model.name = "multiscale"
    c.data.second_size = 47
    c.data.second_rescale = "factor:0.2"
    c.model.small_stages = ((32, 16), (64, 32), (128, 128, 64))
    return c
