"""The second reference's other backbone: ResNeXt-50 (32x4d), the ResNet-50 recipe otherwise.

Launch: deepsea train experiments/resnext50.py --data ../shared/data/ndsb/train --workdir runs/resnext50
Small run: deepsea train experiments/resnext50.py --small
"""

from experiments import resnet50


def get_config(small: bool = False):
    c = resnet50.get_config(small)
    c.name = "resnext50"
    c.model.name = "resnext50"
    if small:
        c.model.width = 0.25  # the smallest width that keeps 32 groups of 4 channels
    return c
