"""ResNet-50 at a quarter width on the generated colour data, sized for a few minutes on 2 CPU cores.

The ResNet-50 recipe (colour jitter, momentum SGD with two drops, TenCrop validation) on 47x47 RGB patches of
the generated dataset's colour mode, where three pairs of classes differ only in colour.  ``--set
data.channels=1`` trains the same network on the images' luma, which cannot tell those pairs apart.

Launch: deepsea train experiments/resnet50_cpu.py --workdir runs/resnet50_cpu
Small run: deepsea train experiments/resnet50_cpu.py --small
"""

from deepsea.configs import small_run
from experiments import resnet50


def get_config(small: bool = False):
    c = resnet50.get_config()
    c.name = "resnet50_cpu"
    c.data.path = ""  # the generated dataset, colour mode
    c.data.synthetic_colour = True
    c.data.gray_to_rgb = False
    c.data.size = 47
    c.data.rescale = "factor:0.7"  # a fixed factor keeps the size cue (classes that differ only in size)
    c.aug.rotation = 360.0
    c.aug.shift = 3.0
    c.aug.zoom = 1.2
    c.aug.stretch = 1.15
    c.aug.brightness = 0.3
    c.aug.contrast = 0.3
    c.aug.saturation = 0.3
    c.aug.hue = 0.05  # a tenth of the way from red to green at most
    c.model.width = 0.25
    c.optim.lr = 0.05
    c.optim.decay_steps = (0.6, 0.85)
    c.train.batch_size = 32
    c.train.steps = 1500
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    c.train.log_every = 50
    c.data.stats_images = 500
    if small:
        small_run(c, steps=4)
        c.data.synthetic_per_class = 10
        c.model.width = 0.125
        c.train.batch_size = 8
        c.train.eval_batch_size = 16
        c.data.workers = 0
    return c
