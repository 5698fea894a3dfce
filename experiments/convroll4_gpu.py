"""convroll4 on a lent GPU for the minutes one device call allows (issue 28): the seed's network and recipe (95x95,
C4 slice, conv rolls and RMS view pool, Nesterov momentum 0.9 at 0.003, batch 32), its two 10x drops at the same
fractions of the steps (180k and 205k of 215k), so that a time budget scales the schedule to the steps that fit
(``budget.json`` records them), bfloat16 compute, and a loader of 12 workers with the decoded images cached (the
lent machine has 16 cores).

Launch, on the device, inside the prepared call (``docs/gpu.md``): ``bash tools/gpu_check.sh 9``; alone:
    deepsea train experiments/convroll4_gpu.py --data ../shared/data/ndsb/train --workdir runs/convroll4_gpu \\
        --set train.budget_minutes=5
Small run (the CPU test of the device call): deepsea train experiments/convroll4_gpu.py --small
"""

from deepsea.configs import small_run
from experiments import convroll4


def get_config(small: bool = False):
    c = convroll4.get_config()
    c.name = "convroll4_gpu"
    c.data.path = "../shared/data/ndsb/train"
    c.data.workers = 12
    c.data.cache_images = True
    c.model.precision = "bfloat16"
    c.optim.decay_steps = tuple(d / c.train.steps for d in c.optim.decay_steps)  # the seed's drops, as fractions
    c.train.budget_minutes = 5.0  # the device call sets the minutes it has left
    c.train.eval_every = 2000
    c.train.checkpoint_every = 2000
    c.train.log_every = 200
    if small:
        small_run(c, steps=8)
        c.data.path = ""
        c.data.synthetic_per_class = 10
        c.data.size = 47
        c.data.rescale = "factor:0.7"
        c.data.workers = 0
        c.model.stages = ((4,), (8,))
        c.model.dense_features = 16
        c.train.batch_size = 8
        c.train.eval_batch_size = 16
        c.train.eval_every = c.train.checkpoint_every = 200  # a budget's steps, not the small run's 8
        c.train.log_every = 50
        c.train.budget_probe_steps = 2
    return c
