"""The seed's claims where they mean something (issue 27, item 4): a base that converges on 2 cores in 10 minutes,
every claim measured at the base's 10-minute budget (4,700 steps of batch 128: the same images seen by every
variant, about 25 epochs; 2 seeds, the seed's other experiments 1), and the equal-compute rows of the equal-compute
study.

The base is the seed's cyclic network as close as 2 cores allow: C4 slice, conv rolls and RMS view pool, maxout
dense layers, leaky ReLU 1/3, no batch norm, the plain recipe's (``ndsb_cpu_plain``) inputs and augmentation (47x47,
largest side 42), at the per-view width whose training step costs what the plain recipe's does (``equal_c4``), with
the tuning check's best setting (dropout 0; docs/results.md). It keeps that recipe's Adam with a cosine decay:
Nesterov momentum with the seed's two drops is a claim of its own below. The page before this one (2 epochs, every
network far from converged) stays as history in docs/ablation.md.

Launch (each sweep may run beside other work: its steps are fixed), then the page:

    D=../shared/data/ndsb/train C=runs/claims X=experiments/claims.py
    S="--data $D --seeds 2 --steps 4700 --set train.eval_every=940" S1="${S/--seeds 2/--seeds 1}"
    deepsea sweep $X $S --tta 8,70 --out $C/base
    deepsea sweep $X $S --grid model.symmetry=none --out $C/plain
    deepsea sweep $X $S --set model.symmetry=none --grid model.orbit_average=c4 --out $C/orbit
    deepsea sweep $X $S --grid model.conv_roll=false --out $C/noroll
    deepsea sweep $X $S --grid model.dense_roll=true --out $C/denseroll
    deepsea sweep $X $S --grid model.symmetry=d4 --out $C/d4
    # one seed each so far ($S adds the second)
    deepsea sweep $X $S --grid model.view_pool_mode=mean,max --out $C/pool
    deepsea sweep $X $S --grid model.negative_slope=0.01,0.0 --out $C/slope
    deepsea sweep $X $S --grid model.maxout_pieces=1 --out $C/maxout
    deepsea sweep $X $S1 --grid model.untied_biases=true --out $C/biases
    deepsea sweep $X $S --set optim.name=sgd --set optim.schedule=step --set "optim.decay_steps=(0.8,0.95)" \\
        --grid optim.lr=0.003,0.01 --out $C/nesterov
    # the seed's other experiments (issue 31), one seed each (their margins from the seed spread pooled over the
    # sweeps), against the base or their own control:
    deepsea sweep $X $S1 --set model.dropout_rate=0.1 --grid model.dropout_kind=bernoulli,gaussian --out $C/dropout
    deepsea sweep $X $S1 --grid model.conv_dropout_rate=0.1 --out $C/conv_dropout
    deepsea sweep $X $S1 --grid model.dense_units=channel_out --out $C/channel_out
    deepsea sweep $X $S1 --grid model.activation=smooth_leaky,prelu --out $C/activation
    deepsea sweep $X $S1 --grid train.bootstrap=soft --out $C/boot_soft
    deepsea sweep $X $S1 --set train.bootstrap_beta=0.8 --grid train.bootstrap=hard --out $C/boot_hard
    deepsea sweep $X $S1 --grid data.label_noise=0.2 --out $C/noisy
    deepsea sweep $X $S1 --set data.label_noise=0.2 --grid train.bootstrap=soft --out $C/noisy_soft
    deepsea sweep $X $S1 --set data.label_noise=0.2 --set train.bootstrap_beta=0.8 --grid train.bootstrap=hard \\
        --out $C/noisy_hard
    deepsea sweep $X $S1 --grid aug.elastic=2.0 --out $C/elastic
    deepsea sweep $X $S1 --grid aug.draws=gaussian --out $C/draws
    deepsea sweep $X $S1 --grid data.rescale=moments:12 --out $C/moments
    # late fusion on the base's seed 0 (its validation split, 5-fold cross-validated), with and without LBP:
    deepsea fuse $C/base/runs/base_s0 --out $C/fused_all --scores $C/fused_all.json
    deepsea fuse $C/base/runs/base_s0 --out $C/fused_nolbp --features shape,hu,zernike,haralick,pftas \\
        --scores $C/fused_nolbp.json
    deepsea ensemble $C/base/runs/base_s0 $C/base/runs/base_s1 --uniform --scores $C/ensemble_2.json
    # pseudo-labels (issue 31): a tenth of every class set aside unlabelled, a teacher (the base) trained on the
    # rest, then students on the rest with and without its soft or hard pseudo-labels for the aside images:
    H=../ndsb_holdout
    deepsea holdout $D --out $H --fraction 0.1
    deepsea sweep $X ${S1/$D/$H/train} --out $C/teacher
    deepsea pseudolabel $C/teacher/runs/base_s0 --images $H/aside_images --tta 8 --out $C/pseudo_labels.npz
    deepsea sweep $X ${S1/$D/$H/train} --set data.pseudo_labels=$C/pseudo_labels.npz \\
        --grid data.pseudo_hard=false,true --out $C/pseudo
    ln -s ../equal $C/equal   # the equal-compute study's sweeps (experiments/equal_compute.py)
    deepsea claims $X --root $C --out docs/claims.md --title "The seed's claims at 10 minutes"

Small run: deepsea train experiments/claims.py --small
"""

from deepsea.claims import Claim, Measure
from experiments import equal_c4


def get_config(small: bool = False):
    c = equal_c4.get_config(small)
    c.name = "claims"
    c.model.dropout_rate = 0.0  # the tuning check's best for every network at 10 minutes
    return c


def claims() -> list[Claim]:
    """The seed's claims, each as the setting it says is better against the one it is compared with (the sweep
    folders of the launch commands above; ``deepsea claims`` measures them)."""
    base = Measure("base", label="C4, conv rolls (base)")
    noroll = Measure("noroll", label="C4 slice + pool, no roll")
    plain = Measure("plain", label="plain, same per-view width")
    orbit = Measure("orbit", label="plain + C4 orbit average")
    eq_plain = Measure("equal/plain", label="plain + D4 orbit average (largest side 42)")
    eq_c4 = Measure("equal/c4", label="C4 rolled, equal step time (w 0.22)")
    eq_c4_flops = Measure("equal/c4_flops", label="C4 rolled, equal FLOPs (w 0.396)")
    eq_d4 = Measure("equal/d4_flops", label="D4 rolled, equal FLOPs (w 0.225)")
    eq_fast = "C4 rolled, folded, equal step time, faster code (w 0.256)"

    def with_tta(setting: str) -> str:
        return "" if setting == "plain" else ", TTA " + setting.removeprefix("tta_")

    def fast(budget: str, tta: str = "plain") -> Measure:
        return Measure(f"equal/c4_fast{budget}", setting=tta, label=eq_fast + with_tta(tta))

    def orbit_avg(minutes: int, tta: str) -> Measure:
        return Measure(f"equal/plain_{minutes}", setting=tta, label="plain + D4 orbit average" + with_tta(tta))

    eq_moments = "plain + D4 orbit average, moments (ndsb_cpu_plain)"
    regular = "rolled before every convolution, folded, equal FLOPs and step time, moments"

    def moments_arm(minutes: str, tta: str = "plain") -> Measure:
        return Measure(f"equal/moments{minutes}", setting=tta, label=eq_moments + with_tta(tta))

    def regular_arm(group: str, minutes: str, tta: str = "plain") -> Measure:
        width = {"c4": "1/4", "d4": "1/8"}[group]
        label = f"{group.upper()} regular: {regular} (w {width})" + with_tta(tta)
        folder = f"equal/{group}_regular{minutes}"  # seed 1 in a folder of its own (--first-seed 1)
        return Measure(folder, setting=tta, label=label, also=(folder + "_s1",))

    equal = "equal compute (10 minutes, dropout 0.1)"
    longer = "equal compute, longer budgets (1 seed each)"
    tta70 = Measure("base", setting="tta_70", label="base, TTA 70")
    ensemble = Measure("ensemble_2.json", label="ensemble of 2 seeds")
    nesterov = lambda lr: Measure("nesterov", f"lr={lr}", label=f"Nesterov SGD, two drops, lr {lr}")  # noqa: E731
    return [
        Claim("cyclic pooling helps", noroll, plain),
        Claim("cyclic pooling helps beyond an orbit-averaged plain net", noroll, orbit),
        Claim("rolling the feature maps helps beyond pooling alone", base, noroll),
        Claim("rolling the dense layer too helps further", Measure("denseroll", label="C4, conv + dense rolls"), base),
        Claim("dihedral beats cyclic", Measure("d4", label="D4, conv rolls"), base),
        Claim("RMS pooling beats mean", base, Measure("pool", "view_pool_mode=mean", label="mean view pool")),
        Claim("RMS pooling beats max", base, Measure("pool", "view_pool_mode=max", label="max view pool")),
        Claim("leaky ReLU 1/3 beats 0.01", base, Measure("slope", "negative_slope=0.01", label="leaky ReLU 0.01")),
        Claim("leaky ReLU 1/3 beats ReLU", base, Measure("slope", "negative_slope=0.0", label="ReLU")),
        Claim("maxout dense layers help a little", base, Measure("maxout", label="plain dense")),
        Claim("untied biases help a little", Measure("biases", label="untied biases"), base),
        Claim("Nesterov momentum ends better than Adam (the seed's rate)", nesterov("0.003"), base),
        Claim("Nesterov momentum ends better than Adam (3x the rate)", nesterov("0.01"), base),
        Claim("TTA (8 transforms) gains about 10%", Measure("base", setting="tta_8", label="base, TTA 8"), base),
        Claim("TTA (70 transforms) gains about 10%", tta70, base),
        Claim("an ensemble (of 2 seeds) helps", ensemble, base),
        Claim("an ensemble gains more than TTA", ensemble, tta70),
        Claim("an exactly invariant network beats an orbit-averaged one", eq_c4, eq_plain, equal),
        Claim("at equal FLOPs too", eq_c4_flops, eq_plain, equal),
        Claim("dihedral beats an orbit average at equal FLOPs", eq_d4, eq_plain, equal),
        Claim("an exactly invariant network beats an orbit-averaged one (faster code)", fast(""), eq_plain, equal),
        *(
            Claim(
                f"the same at {minutes} minutes{with_tta(tta)}",
                fast(f"_{minutes}", tta),
                orbit_avg(minutes, tta),
                longer,
            )
            for minutes in (30, 60)
            for tta in ("plain", "tta_70")
        ),
        *(
            Claim(
                f"a regular {group.upper()} network beats an orbit-averaged one at its FLOPs and step time"
                + with_tta(tta),
                regular_arm(group, "", tta),
                moments_arm("", tta),
                equal,
            )
            for group in ("c4", "d4")
            for tta in ("plain", "tta_70")
        ),
        *(
            Claim(
                f"the regular C4 network at 30 minutes{with_tta(tta)}",
                regular_arm("c4", "_30", tta),
                moments_arm("_30", tta),
                longer,
            )
            for tta in ("plain", "tta_70")
        ),
        *_other_experiments(base),
    ]


def _other_experiments(base: Measure) -> list[Claim]:
    """The seed's other experiments (issue 31; it found none of them helped), each as the claim that it helps."""
    tried = "equal epochs: the seed's other experiments"
    bernoulli = Measure("dropout", "dropout_kind=bernoulli", label="dropout 0.1")
    noisy = Measure("noisy", label="20% of labels wrong")
    fused = Measure("fused_all.json", label="base + every feature group, fused (seed 0, cross-validated)")
    soft = Measure("pseudo", "pseudo_hard=false", label="a third of every batch soft pseudo-labels")
    teacher = Measure("teacher", label="base on 90% of the images, no pseudo-labels (the teacher)")
    return [
        Claim("Gaussian dropout beats dropout", Measure("dropout", "dropout_kind=gaussian", label="Gaussian 0.1"),
              bernoulli, tried),
        Claim("dropout in the convolutional layers helps", Measure("conv_dropout", label="conv dropout 0.1"), base,
              tried),
        Claim("channel-out beats maxout", Measure("channel_out", label="channel-out dense units"), base, tried),
        Claim("a smoothed leaky ReLU helps", Measure("activation", "activation=smooth_leaky", label="smooth leaky"),
              base, tried),
        Claim("parameterised ReLUs help", Measure("activation", "activation=prelu", label="PReLU"), base, tried),
        Claim("soft bootstrapping helps on clean labels", Measure("boot_soft", label="soft bootstrap"), base, tried),
        Claim("hard bootstrapping helps on clean labels", Measure("boot_hard", label="hard bootstrap"), base, tried),
        Claim("soft bootstrapping resists wrong labels", Measure("noisy_soft", label="20% wrong, soft bootstrap"),
              noisy, tried),
        Claim("hard bootstrapping resists wrong labels", Measure("noisy_hard", label="20% wrong, hard bootstrap"),
              noisy, tried),
        Claim("elastic distortions help", Measure("elastic", label="elastic 2 px"), base, tried),
        Claim("Gaussian augmentation draws help", Measure("draws", label="Gaussian draws"), base, tried),
        Claim("centring and scaling by image moments helps", Measure("moments", label="moments rescale (R 12)"), base,
              tried),
        Claim("late-fused image features help (the seed: about 0.01)", fused,
              Measure("fused_all.json", setting="convnets", label="base seed 0 alone (the same images)"), tried),
        Claim("local binary patterns add to the late-fused features", fused,
              Measure("fused_nolbp.json", label="fused without LBP (seed 0, cross-validated)"), tried),
        Claim("soft pseudo-labels help (the seed's choice)", soft, teacher, tried),
        Claim("hard pseudo-labels beat soft ones", Measure("pseudo", "pseudo_hard=true", label="hard pseudo-labels"),
              soft, tried),
    ]  # fmt: skip
