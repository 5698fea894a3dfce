"""The embedded default's network on the generated dataset's colour mode: RGB input, colour jitter.

Three pairs of classes differ only in colour (red and green of equal luma); ``--set data.channels=1`` trains on
the luma and cannot separate them; ``--set aug.brightness=0 --set aug.contrast=0 --set aug.saturation=0 --set
aug.hue=0`` turns the jitter off.

Launch: deepsea train experiments/synthetic_colour.py --workdir runs/synthetic_colour
Small run: deepsea train experiments/synthetic_colour.py --small
"""

from experiments import synthetic


def get_config(small: bool = False):
    c = synthetic.get_config(small)
    c.name = "synthetic_colour"
    c.data.synthetic_colour = True
    c.data.channels = 3
    c.aug.brightness = 0.3
    c.aug.contrast = 0.3
    c.aug.saturation = 0.3
    c.aug.hue = 0.05
    return c
