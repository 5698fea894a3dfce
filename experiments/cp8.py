"""cp8: convroll4 on two inputs (0 and 45 degrees), each sliced into 4 views, pooled over all 8.

Launch: deepsea train experiments/cp8.py --data ../shared/data/ndsb/train --workdir runs/cp8
Small run: deepsea train experiments/cp8.py --small
"""

from experiments import convroll4


def get_config(small: bool = False):
    c = convroll4.get_config(small)
    c.name = "cp8"
    c.model.name = "cp8"
    c.data.extra_rotations = (45.0,)
    return c
