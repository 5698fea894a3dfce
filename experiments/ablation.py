"""The ablation base (issue 19): the seed's cyclic network at CPU size (``ndsb_cpu_c4``: 47x47 inputs, half
convroll4's widths, C4 slice, conv rolls and RMS view pool, maxout dense layers, leaky ReLU 1/3, batch norm, Adam
at 3e-3 on a cosine schedule, batch 32, bfloat16), trained on the NDSB images with a tenth of every class held out
for validation; a sweep gives every run the same budget (``--epochs``: the same images seen; ``--budget-minutes``:
the same training time).  Each structural variant is a module that overrides it (``ablation_plain``,
``ablation_plain_orbit``, ``ablation_c4_noroll``, ``ablation_c4_denseroll``, ``ablation_d4``); the others are
sweeps of one key over it.

Launch, in order (equal epochs: what a network learns; then equal CPU time: what a user gets), then the page:

    D=../shared/data/ndsb/train A=runs/ablation
    deepsea sweep experiments/ablation.py --data $D --seeds 3 --epochs 2 --tta 8,70 --out $A/ablation
    deepsea sweep experiments/ablation_plain.py --data $D --seeds 2 --epochs 2 --tta 8 --out $A/ablation_plain
    for v in ablation_plain_orbit ablation_c4_noroll ablation_d4 ablation_c4_denseroll; do
        deepsea sweep experiments/$v.py --data $D --seeds 2 --epochs 2 --out $A/$v
    done
    deepsea sweep experiments/ablation.py --data $D --seeds 2 --epochs 2 --out $A/pool \\
        --grid model.view_pool_mode=mean,max
    deepsea sweep experiments/ablation.py --data $D --seeds 2 --epochs 2 --out $A/slope \\
        --grid model.negative_slope=0.01,0.0
    deepsea sweep experiments/ablation.py --data $D --seeds 2 --epochs 2 --out $A/maxout --grid model.maxout_pieces=1
    deepsea sweep experiments/ablation.py --data $D --seeds 2 --epochs 2 --out $A/biases --grid model.untied_biases=true
    deepsea sweep experiments/ablation.py --data $D --seeds 2 --epochs 2 --out $A/optimizer \\
        --set optim.name=sgd --set optim.schedule=step --set "optim.decay_steps=(0.8,0.95)" --grid optim.lr=0.03
    deepsea ensemble $A/ablation/runs/base_s0 $A/ablation/runs/base_s1 $A/ablation/runs/base_s2 --uniform \\
        --scores $A/ensemble_3.json
    deepsea sweep experiments/ablation.py --data $D --seeds 2 --budget-minutes 4 --out $A/equal_time \\
        --grid model.symmetry=c4,none,d4
    deepsea claims experiments/ablation.py --root $A --out docs/ablation.md --title "Ablations: the seed's claims"

Small run: deepsea train experiments/ablation.py --small
"""

from deepsea.claims import Claim, Measure
from experiments import ndsb_cpu_c4, ndsb_cpu_plain


def get_config(small: bool = False):
    c = ndsb_cpu_c4.get_config(small)
    c.name = "ablation"
    c.data.rescale = ndsb_cpu_plain.LARGEST_SIDE  # the page's inputs: before the plain recipe rescaled by moments
    if not small:
        c.train.budget_minutes = 12.0  # a sweep sets its own budget: --epochs or --budget-minutes
        c.train.eval_every = 500
    return c


def claims() -> list[Claim]:
    """The seed's claims, each as the setting it says is better against the one it is compared with (the sweep
    folders of the launch commands above; ``deepsea claims`` measures them)."""
    base = Measure("ablation", label="C4, conv rolls (base)")
    plain = Measure("ablation_plain", label="plain")
    orbit = Measure("ablation_plain_orbit", label="plain + C4 orbit average")
    noroll = Measure("ablation_c4_noroll", label="C4 slice + pool, no roll")
    c4, d4 = (Measure("equal_time", f"symmetry={g}", label=f"{g.upper()}, conv rolls") for g in ("c4", "d4"))
    return [
        Claim("cyclic pooling helps", noroll, plain),
        Claim("cyclic pooling helps beyond an orbit-averaged plain net", noroll, orbit),
        Claim("rolling the feature maps helps beyond pooling alone", base, noroll),
        Claim(
            "rolling the dense layer too helps further",
            Measure("ablation_c4_denseroll", label="C4, conv + dense rolls"),
            base,
        ),
        Claim("dihedral beats cyclic", Measure("ablation_d4", label="D4, conv rolls"), base),
        Claim("RMS pooling beats mean", base, Measure("pool", "view_pool_mode=mean", label="mean view pool")),
        Claim("RMS pooling beats max", base, Measure("pool", "view_pool_mode=max", label="max view pool")),
        Claim("leaky ReLU 1/3 beats 0.01", base, Measure("slope", "negative_slope=0.01", label="leaky ReLU 0.01")),
        Claim("leaky ReLU 1/3 beats ReLU", base, Measure("slope", "negative_slope=0.0", label="ReLU")),
        Claim("maxout dense layers help a little", base, Measure("maxout", label="plain dense")),
        Claim("untied biases help a little", Measure("biases", label="untied biases"), base),
        Claim("Nesterov momentum ends better than Adam", Measure("optimizer", label="Nesterov SGD, step drops"), base),
        Claim("TTA (8 transforms) gains about 10%", Measure("ablation", setting="tta_8", label="base, TTA 8"), base),
        Claim("TTA (70 transforms) gains about 10%", Measure("ablation", setting="tta_70", label="base, TTA 70"), base),
        Claim("an ensemble gains more than TTA", Measure("ensemble_3.json", label="ensemble of 3 seeds"), base),
        Claim("cyclic pooling helps", c4, Measure("equal_time", "symmetry=none", label="plain"), "equal CPU time"),
        Claim("dihedral beats cyclic", d4, c4, "equal CPU time"),
    ]
