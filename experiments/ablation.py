"""The ablation base (issue 19): the seed's cyclic network at CPU size (``ndsb_cpu_c4``: 47x47, half convroll4's
widths, C4 slice, conv rolls and RMS view pool), trained for 12 minutes or a fixed number of epochs.  Each
structural variant is a module that overrides it (``ablation_plain``, ``ablation_plain_orbit``,
``ablation_c4_noroll``, ``ablation_c4_denseroll``, ``ablation_d4``); the others are sweeps of one key over it.

Launch (equal epochs: what a network learns; equal CPU time: --budget-minutes 12 instead of --epochs):

    D=../shared/data/ndsb/train
    for v in ablation ablation_plain ablation_plain_orbit ablation_c4_noroll ablation_c4_denseroll ablation_d4; do
        deepsea sweep experiments/$v.py --data $D --seeds 2 --epochs 2 --tta 8 --out runs/ablation/$v
    done
    deepsea sweep experiments/ablation.py --data $D --seeds 2 --epochs 2 --out runs/ablation/pool \\
        --grid model.view_pool_mode=rms,mean,max
    deepsea sweep experiments/ablation.py --data $D --seeds 2 --epochs 2 --out runs/ablation/slope \\
        --grid model.negative_slope=0.3333333333333333,0.01,0.0
    deepsea sweep experiments/ablation.py --data $D --seeds 2 --epochs 2 --out runs/ablation/maxout \\
        --grid model.maxout_pieces=2,1
    deepsea sweep experiments/ablation.py --data $D --seeds 2 --epochs 2 --out runs/ablation/biases \\
        --grid model.untied_biases=false,true
    deepsea sweep experiments/ablation.py --data $D --seeds 2 --epochs 2 --out runs/ablation/optimizer \\
        --grid optim.name=sgd,adam
    deepsea sweep experiments/ablation.py --data $D --seeds 1 --epochs 2 --tta 8,70 --out runs/ablation/tta

Small run: deepsea train experiments/ablation.py --small
"""

from experiments import ndsb_cpu_c4


def get_config(small: bool = False):
    c = ndsb_cpu_c4.get_config(small)
    c.name = "ablation"
    if not small:
        c.train.budget_minutes = 12.0  # a sweep sets its own budget: --epochs or --budget-minutes
        c.train.eval_every = 500
    return c
