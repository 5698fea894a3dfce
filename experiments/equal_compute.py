"""The equal-compute study (issue 27): a plain network made D4-invariant by an orbit average at prediction
(``ndsb_cpu_plain``), a C4 rolled network of the same recipe whose width gives the same measured step time
(``equal_c4``, width 0.22), the C4 network at the plain one's FLOPs per image (width 0.396, slower per step) and the
D4 network at its FLOPs (``equal_d4``, width 0.225; no width gives D4 the plain step time), and the regular C4 and
D4 networks (``equal_c4_regular``, ``equal_d4_regular``: a conv roll before every convolution, every stage folded,
at the plain network's FLOPs and step time), each trained for the same minutes of 2-core training time (5, 10 and 30
minutes for the first two, and 60 for the plain one; 10, 30 and 60 for the C4 network with the faster code and the
regular C4 network) on the NDSB images (the steps that fill the budget, measured once on quiet cores with ``deepsea
bench``) and scored on the tenth of every class held out for validation.

Launch (the steps: 10 minutes at each network's measured rate; every run alone on the cores, or beside work that
does not change its steps), then the page:

    D=../shared/data/ndsb/train E=runs/equal
    N="experiments/ndsb_cpu_plain.py --set data.rescale=max_side:42"  # the plain arm, before it rescaled by moments
    deepsea bench experiments/equal_c4.py --match-time experiments/ndsb_cpu_plain.py   # -> equal_c4.WIDTH
    deepsea bench experiments/equal_d4.py --match-flops experiments/ndsb_cpu_plain.py  # -> equal_d4.WIDTH
    deepsea sweep $N --data $D --seeds 2 --steps 4700 --set train.eval_every=940 --out $E/plain
    deepsea sweep experiments/equal_c4.py --data $D --seeds 2 --steps 4700 --set train.eval_every=940 --out $E/c4
    deepsea sweep $N --data $D --seeds 1 --steps 2350 --set train.eval_every=470 --out $E/plain_5
    deepsea sweep experiments/equal_c4.py --data $D --seeds 1 --steps 2350 --set train.eval_every=470 --out $E/c4_5
    deepsea sweep experiments/equal_c4.py --data $D --seeds 2 --steps 2400 --set train.eval_every=480 \\
        --set model.width=0.396 --out $E/c4_flops
    deepsea sweep experiments/equal_d4.py --data $D --seeds 2 --steps 1650 --set train.eval_every=330 --out $E/d4_flops
    deepsea sweep experiments/equal_c4.py --data $D --seeds 1 --steps 14100 --set train.eval_every=2820 --tta 70 \\
        --out $E/c4_30
    deepsea sweep $N --data $D --seeds 1 --steps 14100 --set train.eval_every=2820 --tta 70 \\
        --out $E/plain_30
    # with thin max pooling folded and model.fold_views=3 the C4 step is faster: the width re-matched
    deepsea bench experiments/equal_c4.py --set model.fold_views=3 \\
        --match-time experiments/ndsb_cpu_plain.py  # -> 0.256
    F="--data $D --set model.width=0.256 --set model.fold_views=3"
    deepsea sweep experiments/equal_c4.py $F --seeds 1 --steps 14100 --set train.eval_every=2820 --tta 70 \\
        --out $E/c4_fast_30
    deepsea sweep experiments/equal_c4.py $F --seeds 2 --steps 4700 --set train.eval_every=940 --out $E/c4_fast
    # the crossover the shorter budgets point to (60 minutes: twice the 30-minute steps)
    deepsea sweep experiments/equal_c4.py $F --seeds 1 --steps 28200 --set train.eval_every=5640 --tta 70 \\
        --out $E/c4_fast_60
    deepsea sweep $N --data $D --seeds 1 --steps 28200 --set train.eval_every=5640 --tta 70 \\
        --out $E/plain_60
    # the claims page's moment rescaling (centre and radius of gyration, issue 31) on the plain arm at 10 minutes
    deepsea sweep $N --data $D --seeds 1 --steps 4700 --set train.eval_every=940 \\
        --grid data.rescale=moments:12 --out $E/moments
    # ... and at 30 minutes, with TTA 70 (since then the plain recipe's)
    deepsea sweep $N --data $D --seeds 1 --steps 14100 --set train.eval_every=2820 \\
        --grid data.rescale=moments:12 --tta 70 --out $E/moments_30
    # the C4 network with the faster code rescaled by moments too: 30 minutes, one seed a folder (one core each)
    M="--grid data.rescale=moments:12"
    deepsea sweep experiments/equal_c4.py $F $M --seeds 1 --steps 14100 --set train.eval_every=2820 --tta 70 \
        --out $E/c4_moments_30
    deepsea sweep experiments/equal_c4.py $F $M --seeds 1 --first-seed 1 --steps 14100 --set train.eval_every=2820 \
        --tta 70 --out $E/c4_moments_30_s1
    deepsea sweep experiments/equal_c4.py $F $M --seeds 2 --steps 4700 --set train.eval_every=940 --out $E/c4_moments
    # the hour budget with moments for both (one seed a folder, one core each; runs/equal/moments_60.sh)
    deepsea sweep experiments/equal_c4.py $F $M --seeds 1 --steps 28200 --set train.eval_every=5640 --tta 70 \
        --out $E/c4_moments_60
    deepsea sweep experiments/ndsb_cpu_plain.py --data $D $M --seeds 1 --steps 28200 --set train.eval_every=5640 \
        --tta 70 --out $E/moments_60
    # regular networks: a conv roll before every convolution, every stage folded, at the plain network's FLOPs and
    # shapes (C4 at width 1/4, D4 at 1/8; moments; the C4 one is ndsb_cpu's network), timed against it, then at its
    # 10-minute steps
    deepsea bench experiments/equal_c4_regular.py --rounds 3 --no-ops \
        --compare model.symmetry=none,model.roll_every_conv=false,model.fold_views=0,model.width=1.0 \
        --compare model.symmetry=d4,model.width=0.125 \
        --compare model.roll_every_conv=false,model.fold_views=0,model.width=0.396
    for G in c4 d4; do
      deepsea sweep experiments/equal_${G}_regular.py --data $D --seeds 1 --steps 4700 --set train.eval_every=940 \
          --tta 70 --out $E/${G}_regular
    done
    deepsea sweep experiments/equal_c4_regular.py --data $D --seeds 1 --steps 14100 --set train.eval_every=2820 \
        --tta 70 --out $E/c4_regular_30
    deepsea sweep experiments/equal_c4_regular.py --data $D --seeds 1 --steps 28200 --set train.eval_every=5640 \
        --tta 70 --out $E/c4_regular_60
    deepsea sweep experiments/equal_c4_regular.py --data $D --seeds 1 --first-seed 1 --steps 28200 \
        --set train.eval_every=5640 --tta 70 --out $E/c4_regular_60_s1
    # their second seeds, a folder each (runs/equal/regular_10.sh, regular_30.sh): the commands above with
    # --first-seed 1 and --out $E/c4_regular_s1, $E/d4_regular_s1, $E/c4_regular_30_s1; and ndsb_cpu's mirror
    # average of the finished runs: deepsea evaluate --workdir RUN --orbit-average d4 [--tta 70]
    # TTA 70 for the 5- and 10-minute arms: their commands above again with --tta 70 (the finished runs are scored)
    # second seeds of the 30- and 60-minute pairs: their four commands again with --first-seed 1, into folders of
    # the same names (seed 0's records come from the page's ledger, docs/equal_compute.jsonl; where seed 0's folder
    # is still there, --seeds 2 adds seed 1 to it)
    deepsea frontier experiments/equal_compute.py --root $E --out docs/equal_compute.md --title "Equal compute"
The tuning check (10 minutes, seed 0; the same two departures for each network; docs/results.md):
    for X in "optim.lr=0.005 lr" "model.dropout_rate=0.0 drop"; do set -- $X
      deepsea sweep experiments/equal_c4.py --data $D --seeds 1 --steps 4700 --set train.eval_every=940 --grid $1 \\
          --out $E/tune_c4_$2
      deepsea sweep $N --data $D --seeds 1 --steps 4700 --set train.eval_every=940 --grid $1 \\
          --out $E/tune_plain_$2
      deepsea sweep experiments/equal_d4.py --data $D --seeds 1 --steps 1650 --set train.eval_every=330 --grid $1 \\
          --out $E/tune_d4_$2
      deepsea sweep experiments/equal_c4_regular.py --data $D --seeds 1 --steps 4700 --set train.eval_every=940 \\
          --grid $1 --out $E/tune_c4r_$2
    done

Small run: deepsea train experiments/equal_compute.py --small
"""

from deepsea.frontier import Arm
from experiments import equal_c4


def get_config(small: bool = False):
    """The study's rolled network (``equal_c4``); the other arms are their own experiment modules."""
    c = equal_c4.get_config(small)
    c.name = "equal_compute"
    return c


def frontier() -> list[Arm]:
    """The networks and budgets compared (the sweep folders of the launch commands above)."""
    plain = "plain + D4 orbit average (the plain recipe before moments, largest side 42)"
    c4 = "C4 rolled, equal step time (width 0.22)"
    c4_fast = "C4 rolled, folded, equal step time with the faster code (width 0.256)"
    moments = "plain + D4 orbit average, rescaled by image moments (ndsb_cpu_plain)"
    c4_moments = "C4 rolled, folded, equal step time with the faster code, rescaled by image moments (width 0.256)"
    regular = "rolled before every convolution, all stages folded, equal FLOPs and step time, moments"
    c4_regular = f"C4 regular: {regular} (width 1/4; ndsb_cpu's network)"
    d4_regular = f"D4 regular: {regular} (width 1/8)"
    return [
        Arm(plain, "plain_5", 5),
        Arm(plain, "plain", 10),
        Arm(plain, "plain_30", 30),
        Arm(c4, "c4_5", 5),
        Arm(c4, "c4", 10),
        Arm(c4, "c4_30", 30),
        Arm("C4 rolled, equal FLOPs (width 0.396)", "c4_flops", 10),
        Arm("D4 rolled, equal FLOPs (width 0.225)", "d4_flops", 10),
        Arm(c4_fast, "c4_fast", 10),
        Arm(c4_fast, "c4_fast_30", 30),
        Arm(plain, "plain_60", 60),
        Arm(c4_fast, "c4_fast_60", 60),
        Arm(moments, "moments", 10),
        Arm(moments, "moments_30", 30),
        Arm(c4_moments, "c4_moments", 10),
        Arm(c4_moments, "c4_moments_30", 30),
        Arm(c4_moments, "c4_moments_30_s1", 30),
        Arm(moments, "moments_60", 60),
        Arm(c4_moments, "c4_moments_60", 60),
        Arm(c4_regular, "c4_regular", 10),
        Arm(d4_regular, "d4_regular", 10),
        Arm(c4_regular, "c4_regular_30", 30),
        Arm(c4_regular, "c4_regular_s1", 10),
        Arm(d4_regular, "d4_regular_s1", 10),
        Arm(c4_regular, "c4_regular_30_s1", 30),
        Arm(c4_regular, "c4_regular_60", 60),
        Arm(c4_regular, "c4_regular_60_s1", 60),
    ]
