"""Measures the abundance corrections on a run's own labelled predictions (``deepsea.abundance.shift_study``).

``deepsea bench-abundance --workdir RUN`` splits the run's validation predictions in two stratified halves: the
corrections learn from one, and samples are drawn from the other with the validation's class mix except one class
at 10x its share and another absent.  It prints, per method and sample size, the mean L1 distance of the
estimated class proportions to the true ones, the error on the boosted class and the share left on the absent one,
each beside classify-and-count's, and draws estimated against true proportions.
"""

from __future__ import annotations

import argparse
import json

from deepsea.tools.timing import format_table

__all__ = ["add_arguments", "main_with_args"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="a run (or any model, with --data)")
    p.add_argument("--data", default=None, help="a labelled folder instead of the run's validation split")
    p.add_argument("--sizes", default="1000,5000", help="images per sample, comma-separated")
    p.add_argument("--samples", type=int, default=20, help="samples per size")
    p.add_argument("--boost", type=float, default=10.0, help="the boosted class's factor")
    p.add_argument("--tta", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default="", metavar="PNG", help="estimated against true proportions (the first size)")
    p.add_argument("--out", default="", help="append the JSON lines to this file")


def main_with_args(args: argparse.Namespace) -> None:
    from deepsea.abundance import shift_study
    from deepsea.load import load_predictor
    from deepsea.predictor import predictor_probs
    from deepsea.runs import scoring_set

    predictor = load_predictor(args.workdir)
    labelled = scoring_set(predictor, args.data)
    probs = predictor_probs(predictor, list(labelled.paths), args.tta)
    rows, lines = [], []
    for i, n in enumerate(int(s) for s in args.sizes.split(",")):
        study = shift_study(probs, labelled.labels, predictor.classes, args.samples, n, args.boost, seed=args.seed)
        for m in study.methods:
            rec = {
                "method": m,
                "sample_size": n,
                "l1": round(study.l1[m], 4),
                "l1_vs_cc": round(study.l1[m] / study.l1["cc"], 3),
                "boosted_error": round(study.boosted_error[m], 4),
                "boosted_vs_cc": round(study.boosted_error[m] / study.boosted_error["cc"], 3),
                "absent_share": round(study.absent_share[m], 5),
            }
            rows.append(rec)
            lines.append({**rec, "workdir": args.workdir, "images": len(labelled.labels), "samples": args.samples})
        if args.plot and i == 0:
            from deepsea.plots import plot_shift_study

            print(f"wrote {plot_shift_study(study, args.plot)}")
    columns = [("method", "method", "6s"), ("images", "sample_size", "6d"), ("L1", "l1", "7.4f"),
               ("/ CC", "l1_vs_cc", "6.3f"), ("boosted err", "boosted_error", "11.4f"),
               ("/ CC", "boosted_vs_cc", "6.3f"), ("absent share", "absent_share", "12.5f")]  # fmt: skip
    print(format_table(rows, columns))
    if args.out:
        with open(args.out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in lines)
