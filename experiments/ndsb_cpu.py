"""convroll4 sized for 2 CPU cores and about 30 minutes on the shared NDSB images.

Half convroll4's widths on 47x47 patches (largest side 42, the seed's 85-in-95
ratio), batch norm after each convolution (not in the seed; it keeps the exact
invariance), the raw image size late-fused, milder augmentation and dropout
than the seed's, and Adam with a short warm-up and a cosine decay: a 30-minute
budget has no time for the seed's slow SGD start and step drops.

Launch: deepsea train experiments/ndsb_cpu.py --data ../shared/data/ndsb/train --workdir runs/ndsb_cpu
Small run: deepsea train experiments/ndsb_cpu.py --data ../shared/data/ndsb/train --small
"""

from deepsea.configs import base_config, small_run


def get_config(small: bool = False):
    c = base_config()
    c.name = "ndsb_cpu"
    c.data.path = "../shared/data/ndsb/train"
    c.data.size = 47
    c.data.rescale = "max_side:42"
    c.data.workers = 1
    c.model.name = "rollnet"
    c.model.symmetry = "c4"
    c.model.width = 0.5
    c.model.size_features = True
    c.model.batch_norm = True
    c.model.dropout = 0.2
    c.aug.zoom = 1.3
    c.aug.shear = 10.0
    c.aug.stretch = 1.15
    c.optim.name = "adam"
    c.optim.lr = 0.003
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 200
    c.optim.weight_decay = 1e-5
    c.train.batch_size = 32
    c.train.steps = 5400
    c.train.eval_every = 1000
    c.train.checkpoint_every = 500
    c.train.log_every = 50
    if small:
        small_run(c)
    return c
