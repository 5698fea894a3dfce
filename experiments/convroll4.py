"""convroll4, the seed's cyclic network, at full scale: 95x95, 215k steps of batch 32.

Launch: deepsea train experiments/convroll4.py --data ../shared/data/ndsb/train --workdir runs/convroll4
Small run: deepsea train experiments/convroll4.py --small
"""

from deepsea.configs import base_config, small_run


def get_config(small: bool = False):
    c = base_config()
    c.name = "convroll4"
    if small:
        small_run(c)
    return c
