"""The plain NDSB recipe for 2 CPU cores and about 30 minutes (``ndsb_cpu`` until the regular C4 network matched
it): a plain network made exactly D4-invariant by averaging its predictions over the input's orbit; the
equal-compute study's plain arm and the base of the held-aside experiments (``ndsb_cpu_cae``, ``_distill``,
``_pseudo``).

It trains the plain backbone (convroll4's stages without the channel halving that anticipates a roll) on single
images, with rotations and mirrors from the augmentation, and gets the invariance at evaluation only:
:class:`deepsea.models.OrbitAverage` averages the log-probabilities of the eight D4 copies of each input.  47x47
patches, each image centred on its intensity centroid and scaled to a radius of gyration of 12 pixels (its image
moments; the seed tried this and kept the largest side), bfloat16 computation, no batch norm (on this CPU it costs
more steps than it saves), the raw image size late-fused (sorted, so rotation-invariant), mild augmentation,
decoded images kept in memory, and Adam (batch 128) with a short warm-up and a cosine decay over as many steps as
fill 30 minutes on the machine that trains it (``train.budget_minutes``: the step time is measured before the run
starts, and the steps chosen are in the run's ``config.json`` and ``budget.json``).  Results: ``docs/results.md``.

Launch: deepsea train experiments/ndsb_cpu_plain.py --data ../shared/data/ndsb/train --workdir runs/ndsb_cpu_plain
Small run: deepsea train experiments/ndsb_cpu_plain.py --data ../shared/data/ndsb/train --small
"""

from deepsea.configs import base_config, small_run

LARGEST_SIDE = "max_side:42"  # the inputs before moments; the studies that compare with that recipe keep them


def get_config(small: bool = False):
    c = base_config()
    c.name = "ndsb_cpu_plain"
    c.data.path = "../shared/data/ndsb/train"
    c.data.size = 47
    c.data.rescale = "moments:12"  # better than the largest side at 42 pixels (docs/results.md, equal compute)
    c.data.workers = 0  # the loader in threads of this process: on 2 cores faster than a worker process (results.md)
    c.data.cache_images = True  # later epochs skip the JPEG decode
    c.model.name = "rollnet"
    c.model.symmetry = None
    c.model.orbit_average = "d4"
    c.model.stages = ((16, 16), (32, 32), (64, 64, 64), (128, 128, 128))
    c.model.width = 1.0
    c.model.dense_features = 256
    c.model.size_features = True
    c.model.batch_norm = False  # costs more steps than it saves on 2 cores (docs/results.md)
    c.model.dropout_rate = 0.1
    c.model.precision = "bfloat16"  # oneDNN's bf16 convolutions: more steps in the budget (docs/results.md)
    c.aug.shift = 3.0  # pixels of the 47x47 patch (the seed's 10 was for 95x95)
    c.aug.zoom = 1.2
    c.aug.shear = 5.0
    c.aug.stretch = 1.1
    c.optim.name = "adam"
    c.optim.lr = 0.0025
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 200
    c.optim.weight_decay = 1e-5
    c.train.batch_size = 128
    c.train.steps = 10_400  # only without the budget below (train.budget_minutes = 0)
    c.train.budget_minutes = 30.0  # the steps that fill 30 minutes on the machine that trains
    c.train.eval_every = 5200
    c.train.checkpoint_every = 500
    c.train.log_every = 50
    if small:
        small_run(c)
    return c
