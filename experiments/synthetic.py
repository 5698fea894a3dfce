"""The embedded default: a small cyclic rolled net on the generated dataset, a couple of minutes on 2 CPU cores.

Launch: deepsea train experiments/synthetic.py --workdir runs/synthetic
Small run (tests): deepsea train experiments/synthetic.py --small
"""

from deepsea.configs import base_config, small_run


def get_config(small: bool = False):
    c = base_config()
    c.name = "synthetic"
    c.data.path = ""  # the generated dataset, made on first use
    c.data.size = 47
    c.data.rescale = "factor:0.7"  # a fixed factor keeps the size cue (two classes differ only in size)
    c.aug.zoom = 1.2  # milder zoom and stretch than the seed's, so sizes stay informative
    c.aug.stretch = 1.15
    c.aug.shift = 3.0
    c.model.name = "rollnet"
    c.model.symmetry = "c4"
    c.model.stages = ((16,), (32,), (64,))
    c.model.dense_features = 64
    c.model.dropout_rate = 0.3
    c.model.size_features = True
    c.optim.lr = 0.01
    c.optim.grad_clip = 2.0  # at lr 0.01 an occasional large step diverged the run (docs/results.md)
    c.optim.decay_steps = (0.7, 0.9)
    c.train.batch_size = 32
    c.train.steps = 600
    c.train.eval_every = 200
    c.train.checkpoint_every = 200
    c.train.log_every = 20
    c.data.stats_images = 500
    if small:
        small_run(c, steps=6)
        c.data.synthetic_per_class = 10
        c.model.stages = ((4,), (8,))
        c.model.dense_features = 16
        c.train.batch_size = 8
        c.train.eval_batch_size = 16
        c.data.workers = 0
    return c
