"""ndsb_cpu_plain fine-tuned from a convolutional autoencoder pre-trained on images without labels (the seed's
experiment: tied weights, greedy then joint; fine-tuned with the pre-trained layers frozen at first, then at half
the learning rate).

Launch, in order (the autoencoder learns from the held-aside images without their labels, or from the training
images: drop --images):

    deepsea holdout ../shared/data/ndsb/train --out ../ndsb_holdout --fraction 0.1
    deepsea pretrain experiments/ndsb_cpu_cae.py --data ../ndsb_holdout/train \
        --images ../ndsb_holdout/aside_images --workdir runs/cae
    deepsea train experiments/ndsb_cpu_cae.py --data ../ndsb_holdout/train --workdir runs/ndsb_cpu_cae
    deepsea evaluate --workdir runs/ndsb_cpu_cae --data ../ndsb_holdout/aside --tta 8

Small run: the same commands with --small.
"""

from experiments import ndsb_cpu_plain


def get_config(small: bool = False):
    c = ndsb_cpu_plain.get_config(small)
    c.name = "ndsb_cpu_cae"
    c.pretrain.greedy_steps = 100  # per convolution (ten of them)
    c.pretrain.joint_steps = 1000
    c.pretrain.lr = 1e-3
    c.train.pretrained = "runs/cae"  # deepsea pretrain ... --workdir runs/cae
    c.train.pretrained_frozen_steps = 500
    c.train.pretrained_warmup_steps = 500  # thawed at once at the schedule's peak rate it diverges (docs/results.md)
    c.optim.grad_clip = 5.0
    c.optim.pretrained_lr_multiplier = 0.5
    if small:
        c.pretrain.greedy_steps, c.pretrain.joint_steps = 2, 4
        c.train.pretrained_frozen_steps = 2
        c.train.pretrained_warmup_steps = 2
    return c
