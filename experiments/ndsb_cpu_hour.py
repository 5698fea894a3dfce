"""The one-hour recipe for 2 CPU cores: the equal-compute study's rolled C4 network (``equal_c4``, rolled once a
stage, at the width whose step costs what the plain recipe's does with the faster code: its first three stages
folded), its inputs rescaled by image moments as ``ndsb_cpu``'s, trained for 60 minutes.  At that budget it beats
the plain recipe's orbit-averaged network (``ndsb_cpu_plain``, which stops improving after 30 minutes), with and
without TTA 70 (docs/results.md, equal compute).  Invariant by construction, it predicts on one copy of each image.

Launch: deepsea train experiments/ndsb_cpu_hour.py --data ../shared/data/ndsb/train --workdir runs/ndsb_cpu_hour
Then:   deepsea evaluate --workdir runs/ndsb_cpu_hour --tta 70
Small run: deepsea train experiments/ndsb_cpu_hour.py --data ../shared/data/ndsb/train --small
"""

from deepsea.configs import small_run
from experiments import equal_c4, ndsb_cpu_plain

# deepsea bench experiments/equal_c4.py --set model.fold_views=3 --match-time experiments/ndsb_cpu_plain.py
WIDTH = 0.256


def get_config(small: bool = False):
    c = equal_c4.get_config()
    c.name = "ndsb_cpu_hour"
    c.model.width = WIDTH
    c.model.fold_views = 3
    c.data.rescale = ndsb_cpu_plain.get_config().data.rescale  # image moments: better at 60 minutes too
    c.train.budget_minutes = 60.0  # the steps that fill an hour on the machine that trains
    c.train.steps = 28_200  # only without the budget (train.budget_minutes = 0): the study's 60-minute steps
    c.train.eval_every = 5_000
    if small:
        small_run(c)
    return c
