"""ndsb_cpu_plain with pseudo-labels: a third of every batch is unlabelled images with a teacher's (TTA-averaged) soft
predictions as targets, one of the seed's late gains (its bigger models took two thirds pseudo-labelled: ``--set
data.pseudo_fraction=0.67``; measured effects in docs/results.md).

Launch, in order, with a labelled tenth of the shared images set aside as the "test folder" whose labels only
the last command reads (``aside_images/`` holds the same images without their classes):

    deepsea holdout ../shared/data/ndsb/train --out ../ndsb_holdout --fraction 0.1
    deepsea train experiments/ndsb_cpu_plain.py --data ../ndsb_holdout/train --workdir runs/teacher
    deepsea pseudolabel runs/teacher --images ../ndsb_holdout/aside_images --tta 8 --out runs/pseudo_labels.npz
    deepsea train experiments/ndsb_cpu_pseudo.py --data ../ndsb_holdout/train --workdir runs/ndsb_cpu_pseudo
    deepsea evaluate --workdir runs/ndsb_cpu_pseudo --data ../ndsb_holdout/aside --tta 8   # and runs/teacher

Small run: the same commands with --small (and --set train.steps=N for the teacher).
"""

from experiments import ndsb_cpu_plain


def get_config(small: bool = False):
    c = ndsb_cpu_plain.get_config(small)
    c.name = "ndsb_cpu_pseudo"
    c.data.pseudo_labels = "runs/pseudo_labels.npz"  # deepsea pseudolabel ... --out runs/pseudo_labels.npz
    c.data.pseudo_fraction = 0.33
    return c
