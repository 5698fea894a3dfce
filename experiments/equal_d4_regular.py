"""The equal-compute study's regular dihedral network (issue 27): ``equal_c4_regular`` over D4, at an eighth of
the plain recipe's per-view widths (eight views), so a training step does the FLOPs the plain step does with
convolutions of its shapes.

Launch: deepsea train experiments/equal_d4_regular.py --data ../shared/data/ndsb/train --workdir runs/d4_regular
Small run: deepsea train experiments/equal_d4_regular.py --data ../shared/data/ndsb/train --small
"""

from experiments import equal_c4_regular


def get_config(small: bool = False):
    return equal_c4_regular.get_config(small, symmetry="d4")
