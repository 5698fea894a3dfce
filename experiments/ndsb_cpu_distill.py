"""ndsb_cpu_plain distilled from a teacher: the loss mixes the labels with the teacher's predictions for the training
images, both softened by a temperature (Hinton et al. 2015); the student may be smaller or larger than the
teacher (override ``model.*``), and the teacher may be a blend of runs (``deepsea pseudolabel RUN RUN ...``).

Launch, in order (the same held-aside folder as ``ndsb_cpu_pseudo``; the teacher's predictions for its own
training images, without TTA):

    deepsea holdout ../shared/data/ndsb/train --out ../ndsb_holdout --fraction 0.1
    deepsea train experiments/ndsb_cpu_plain.py --data ../ndsb_holdout/train --workdir runs/teacher
    deepsea pseudolabel runs/teacher --images ../ndsb_holdout/train --out runs/teacher_train.npz
    deepsea train experiments/ndsb_cpu_distill.py --data ../ndsb_holdout/train --workdir runs/ndsb_cpu_distill
    deepsea evaluate --workdir runs/ndsb_cpu_distill --data ../ndsb_holdout/aside --tta 8

Small run: the same commands with --small.
"""

from experiments import ndsb_cpu_plain


def get_config(small: bool = False):
    c = ndsb_cpu_plain.get_config(small)
    c.name = "ndsb_cpu_distill"
    c.data.distill = "runs/teacher_train.npz"  # deepsea pseudolabel RUN --images TRAIN_DIR --out runs/teacher_train.npz
    c.train.distill_weight = 0.5
    c.train.distill_temperature = 2.0
    return c
