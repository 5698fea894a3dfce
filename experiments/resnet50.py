"""The second reference: ResNet-50 on colour input with colour jitter, TenCrop validation, SGD with momentum.

ImageNet's recipe (torchvision's reference) on the NDSB images: 224x224 inputs, batch 64 with the learning rate
scaled from 0.1 at batch 256, momentum 0.9 (Nesterov here), weight decay 1e-4, two 10x drops at a third and two
thirds of 90 epochs, mirror and zoom/aspect augmentation with colour jitter 0.4/0.4/0.4/0.1.  NDSB's images are
grayscale, so they are read as three equal channels (``data.gray_to_rgb``), as that solution did; on colour
images set ``data.gray_to_rgb = False``.  Validation during training uses TenCrop, the predictions it makes.
Predict as it did with ``deepsea ensemble RUN... --uniform --tta tencrop`` (m runs x 10 crops).

Launch: deepsea train experiments/resnet50.py --data ../shared/data/ndsb/train --workdir runs/resnet50
Small run: deepsea train experiments/resnet50.py --small
"""

from deepsea.configs import base_config, small_run

EPOCH_STEPS = 27_300 // 64  # steps of 64 in an epoch of NDSB's training split (90% of 30,336 images)


def get_config(small: bool = False):
    c = base_config()
    c.name = "resnet50"
    c.data.channels = 3
    c.data.gray_to_rgb = True
    c.data.size = 224
    c.data.rescale = "max_side:196"  # 224 * 0.875: TenCrop's crop of the image resized to 256
    c.aug.rotation = 0.0  # ImageNet photographs have an up; plankton do not: set 360 to rotate
    c.aug.shift = 28.0
    c.aug.zoom = 1.3
    c.aug.shear = 0.0
    c.aug.stretch = 1.15  # RandomResizedCrop's aspect ratios 3/4 - 4/3
    c.aug.brightness = 0.4
    c.aug.contrast = 0.4
    c.aug.saturation = 0.4
    c.aug.hue = 0.1
    c.model.name = "resnet50"
    c.model.width = 1.0
    c.optim.name = "sgd"
    c.optim.lr = 0.1 * 64 / 256
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-4
    c.optim.schedule = "step"
    c.optim.decay_steps = (1 / 3, 2 / 3)
    c.train.batch_size = 64
    c.train.steps = 90 * EPOCH_STEPS
    c.train.eval_every = 5 * EPOCH_STEPS
    c.train.checkpoint_every = EPOCH_STEPS
    c.train.eval_tta = "tencrop"
    if small:
        small_run(c, steps=4)
        c.data.size = 47
        c.data.rescale = "max_side:41"
        c.data.synthetic_colour = True
        c.data.synthetic_per_class = 10
        c.data.gray_to_rgb = False
        c.model.width = 0.125
        c.train.batch_size = 8
        c.train.eval_batch_size = 16
        c.data.workers = 0
    return c
