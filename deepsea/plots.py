"""Every figure the project draws, as PNG files (matplotlib, Agg backend, imported on first use).

- :func:`plot_metrics`: a run's training loss and validation log loss and accuracy (``metrics.png``);
- :func:`save_confusion_png`: a row-normalised confusion matrix readable for 121 classes;
- :func:`plot_rounds`: ``deepsea bench``'s images/s per round, ours beside the variants and PyTorch;
- :func:`save_preview`: raw, rescaled and augmented images side by side (``deepsea preview``);
- :func:`plot_views`: the dihedral slice of an image and the conv roll of one view (``deepsea demo``);
- :func:`plot_reconstruction`: the autoencoder's reconstruction error per phase (``deepsea pretrain``);
- :func:`plot_sweep`: a sweep's validation curves and its log losses with their spread (``deepsea sweep``);
- :func:`plot_frontier`: validation log loss against training minutes per network (``deepsea frontier``).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

from deepsea.data.folders import ImageFolder
from deepsea.data.pipeline import AugmentedSource, Preprocess, preprocess_image, read_input
from deepsea.data.transforms import TRAIN_RANGES, AugmentRanges
from deepsea.metrics import accuracy, confusion_matrix
from deepsea.rundir import read_metrics

__all__ = [
    "plot_abundances",
    "plot_frontier",
    "plot_metrics",
    "plot_reconstruction",
    "plot_rounds",
    "plot_shift_study",
    "plot_sweep",
    "plot_views",
    "save_confusion_png",
    "save_preview",
    "save_reliability_png",
]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metrics(workdir: str) -> str:
    """Training loss, validation log loss and accuracy against steps, as ``workdir/metrics.png``."""
    plt = _pyplot()

    rows = read_metrics(workdir)
    tr = [r for r in rows if r["split"] == "train"]
    va = [r for r in rows if r["split"] == "validation"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if tr:
        ax1.plot([r["step"] for r in tr], [r["loss"] for r in tr], label="training loss (cross-entropy)", alpha=0.7)
    if va:
        ax1.plot([r["step"] for r in va], [r["log_loss"] for r in va], "o-", label="validation log loss")
        ax2.plot([r["step"] for r in va], [r["accuracy"] for r in va], "o-", label="validation accuracy")
        ax2.plot([r["step"] for r in va], [r["top5"] for r in va], "s--", label="validation top-5")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.set_xlabel("step")
    ax2.set_ylabel("accuracy")
    ax2.set_ylim(0, 1)
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.suptitle(os.path.basename(os.path.abspath(workdir)))
    fig.tight_layout()
    out = os.path.join(workdir, "metrics.png")
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def save_confusion_png(probs: np.ndarray, labels: np.ndarray, classes: list[str], path: str, title: str = "") -> str:
    """A row-normalised confusion matrix readable for 121 classes: log colour scale, every class labelled."""
    from matplotlib.colors import LogNorm

    plt = _pyplot()
    m = confusion_matrix(probs, labels, len(classes)).astype(np.float64)
    rows = m.sum(1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    k = len(classes)
    size = max(6.0, 0.16 * k + 3)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(np.where(norm > 0, norm, np.nan), cmap="viridis", norm=LogNorm(vmin=1e-3, vmax=1))
    fs = max(3.0, min(9.0, 600 / k / 6))
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(classes, rotation=90, fontsize=fs)
    ax.set_yticklabels(classes, fontsize=fs)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"confusion (row-normalised), accuracy {accuracy(probs, labels):.3f}")
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_reliability_png(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str, bins: int = 15) -> str:
    """Reliability diagrams: accuracy against confidence per bin for each ``name -> (probs, labels)``, with the
    diagonal of perfect calibration and each curve's expected calibration error and log loss."""
    from deepsea.calibration import expected_calibration_error, reliability
    from deepsea.metrics import log_loss

    plt = _pyplot()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.5, 6.5), height_ratios=(3, 1), sharex=True)
    ax.plot([0, 1], [0, 1], color="gray", lw=1, ls="--", label="perfectly calibrated")
    for name, (probs, labels) in curves.items():
        conf, acc, count = reliability(probs, labels, bins)
        used = count > 0
        ece = expected_calibration_error(probs, labels, bins)
        label = f"{name}: ECE {ece:.3f}, log loss {log_loss(probs, labels):.3f}"
        ax.plot(conf[used], acc[used], marker="o", ms=3, label=label)
        hist.plot(conf[used], count[used], marker="o", ms=3)
    ax.set_ylabel("accuracy")
    ax.set_title("reliability (top-1 confidence, equal-width bins)")
    ax.legend(fontsize=7)
    hist.set_xlabel("confidence")
    hist.set_ylabel("images")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_rounds(lines: Sequence[dict[str, Any]], path: str) -> list[str]:
    """Images/s per round for ours, each ``--compare`` variant and PyTorch, from ``bench``'s JSON lines; returns
    the legend's labels."""
    plt = _pyplot()

    summary = next((rec for rec in lines if rec.get("summary")), None)
    if summary is None:
        raise ValueError("plot_rounds needs bench's JSON lines with their summary line")
    series: dict[str, list[tuple[int, float]]] = {}
    for rec in lines:
        if rec.get("summary"):
            continue
        name = "PyTorch" if rec.get("impl") == "torch" else rec.get("variant") or "deepsea"
        series.setdefault(name, []).append((rec["round"], rec["images_per_s"]))
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in series.items():
        rounds, ips = zip(*points, strict=True)
        median = statistics.median(ips)
        ax.plot(rounds, ips, "o-", label=f"{name}: median {median:.1f} images/s")
    ax.set_xticks(sorted({r for points in series.values() for r, _ in points}))
    ax.set_xlabel("round (interleaved)")
    ax.set_ylabel("training images/s")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    size, width, batch = summary["size"], summary["width"], summary["batch"]
    title = f"{summary['experiment']} {size}x{size}, width {width}, batch {batch}"
    if "ratio_vs_torch" in summary:
        title += f": {summary['ratio_vs_torch']:.2f}x PyTorch"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [t.get_text() for t in ax.get_legend().get_texts()]


def save_preview(
    folder: ImageFolder,
    out: str,
    pp: Preprocess = Preprocess(),
    ranges: AugmentRanges = TRAIN_RANGES,
    n_images: int = 8,
    n_augmented: int = 6,
    seed: int = 0,
) -> str:
    """Writes ``out`` (PNG): one row per image, the raw image, its plain preprocessing, then augmentations.

    Images are drawn from different classes where the dataset has labels.
    """
    plt = _pyplot()

    rng = np.random.default_rng(seed)
    if folder.labels is not None:
        classes = rng.permutation(len(folder.classes))[:n_images]
        picks = [int(rng.choice(np.flatnonzero(folder.labels == c))) for c in classes]
    else:
        picks = [int(i) for i in rng.permutation(len(folder))[:n_images]]
    src = AugmentedSource([folder.paths[i] for i in picks], None, pp, ranges, seed=seed, shuffle=False)
    cols = 2 + n_augmented
    fig, axes = plt.subplots(len(picks), cols, figsize=(1.6 * cols, 1.7 * len(picks)), squeeze=False)
    for row, i in enumerate(picks):
        raw = read_input(folder.paths[i], pp)
        plain = preprocess_image(raw, pp)
        panels = [raw, plain] + [src.example(epoch, row)["image"] for epoch in range(n_augmented)]
        for col, img in enumerate(panels):
            ax = axes[row, col]
            cmap = "gray_r" if col == 0 and pp.inverted else "gray"
            if col > 0 and img.shape[-1] == 3:  # normalised colour: back to [0, 1] to show it as it is
                img = np.clip(img * np.asarray(pp.std) + np.asarray(pp.mean), 0, 1)
            ax.imshow(img if img.ndim == 2 or img.shape[-1] == 3 else img[..., 0], cmap=cmap)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                label = folder.classes[folder.labels[i]] if folder.labels is not None else folder.names[i]
                ax.set_ylabel(f"{label}\n{raw.shape[0]}x{raw.shape[1]}", fontsize=7)
            if row == 0:
                ax.set_title(["raw", f"rescaled {pp.size}"][col] if col < 2 else f"augmented {col - 1}", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def plot_views(path: str, views: Any) -> str:
    """The 8 views of a dihedral slice ``(8, H, W, 1)`` (top) and the conv roll of view r3 (bottom), whose every
    block is the image aligned to that view."""
    from deepsea import ops
    from deepsea.groups import D4

    rolled = ops.dihedral_conv_roll(views)  # (8, H, W, 8): block h of view g is g(img)
    plt = _pyplot()
    fig, axes = plt.subplots(2, 8, figsize=(16, 5.0))
    for v in range(8):
        axes[0, v].imshow(views[v, :, :, 0], cmap="gray")
        axes[0, v].set_title(f"slice view {D4.label(v)}")
        axes[1, v].imshow(rolled[3, :, :, v], cmap="gray")
        axes[1, v].set_title(f"view r3, block {D4.label(v)}")
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.suptitle("dihedral slice (top) and the conv roll of view r3 (bottom): every block is aligned to the view")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_reconstruction(workdir: str) -> str:
    """``deepsea pretrain``'s reconstruction error against steps, one line per phase (``reconstruction.png``)."""
    plt = _pyplot()
    rows = read_metrics(workdir)
    fig, ax = plt.subplots(figsize=(7, 4))
    for phase in dict.fromkeys(r["phase"] for r in rows):
        pts = [(r["step"], r["mse"]) for r in rows if r["phase"] == phase]
        ax.plot(*zip(*pts, strict=True), label=phase, marker="." if len(pts) < 30 else None)
    ax.set(xlabel="step", ylabel="reconstruction error (MSE)", yscale="log", title="autoencoder pre-training")
    ax.legend(fontsize=8)
    path = os.path.join(workdir, "reconstruction.png")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_sweep(out: str, records: list[dict], rows: list[dict]) -> None:
    """``deepsea sweep``'s figures: every run's validation curve, coloured by variant (``curves.png``), and each
    variant's mean plain log loss with its spread over seeds (``bars.png``); ``rows`` are the per-variant means."""
    plt = _pyplot()
    colours = {r["variant"]: plt.cm.tab10(i % 10) for i, r in enumerate(rows)}
    fig, ax = plt.subplots(figsize=(8, 4.5))
    seen = set()
    for rec in records:
        path = os.path.join(out, "runs", rec["name"])
        val = [m for m in read_metrics(path) if m.get("split") == "validation"] if os.path.isdir(path) else []
        if val:
            label = None if rec["variant"] in seen else rec["variant"]
            seen.add(rec["variant"])
            ax.plot([m["step"] for m in val], [m["log_loss"] for m in val], color=colours[rec["variant"]],
                    marker="o", ms=3, label=label)  # fmt: skip
    ax.set(xlabel="step", ylabel="validation log loss", title="validation curves (one line per seed)")
    if seen:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "curves.png"), dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(rows) + 2), 4))
    x = np.arange(len(rows))
    ax.bar(x, [r["plain.log_loss"] for r in rows], yerr=[r["plain.log_loss.spread"] for r in rows], capsize=4,
           color=[colours[r["variant"]] for r in rows])  # fmt: skip
    ax.set_xticks(x, [r["variant"] for r in rows], rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="validation log loss (plain)", title="mean over seeds, bars: spread")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "bars.png"), dpi=100)
    plt.close(fig)


def plot_frontier(path: str, rows: list[dict]) -> None:
    """``deepsea frontier``'s figure: per network (colour), each run's validation curve against its training
    minutes (thin), each run's final score (dots) and the mean over seeds at each budget, joined (the frontier);
    ``rows`` are :func:`deepsea.frontier.frontier_rows`."""
    plt = _pyplot()
    networks = list(dict.fromkeys(r["network"] for r in rows))
    colours = {n: plt.cm.tab10(i % 10) for i, n in enumerate(networks)}
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        if r["curve"]:
            x = [step / r["steps"] * r["minutes"] for step, _ in r["curve"]]
            ax.plot(x, [loss for _, loss in r["curve"]], color=colours[r["network"]], lw=0.7, alpha=0.45)
        ax.plot(r["minutes"], r["plain"]["log_loss"], "o", color=colours[r["network"]], ms=4, alpha=0.7)
    for n in networks:
        budgets = sorted({r["minutes"] for r in rows if r["network"] == n})
        means = [np.mean([r["plain"]["log_loss"] for r in rows if r["network"] == n and r["minutes"] == m])
                 for m in budgets]  # fmt: skip
        ax.plot(budgets, means, "-s", color=colours[n], lw=2, ms=6, label=n)
    for setting in sorted({k for r in rows for k in r if k.startswith("tta_")}):
        for n in networks:  # the same frontier scored with TTA, dashed, where the network's runs have it
            scored = [r for r in rows if r["network"] == n and setting in r]
            budgets = sorted({r["minutes"] for r in scored})
            means = [np.mean([r[setting]["log_loss"] for r in scored if r["minutes"] == m]) for m in budgets]
            if budgets:
                label = f"{n}, {setting.replace('tta_', 'TTA ')}"
                ax.plot(budgets, means, "--D", color=colours[n], lw=1.5, ms=5, label=label)
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    plain_numbers = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain_numbers)
    ax.xaxis.set_minor_formatter(plain_numbers)
    ax.set(xlabel="training minutes on 2 CPU cores (log scale)", ylabel="validation log loss")
    ax.set_title("thin lines: each run's validation passes; squares: the mean over seeds at each budget "
                 "(dashed, diamonds: with TTA)", fontsize=9)  # fmt: skip
    if networks:
        ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_claims(path: str, results: list) -> None:
    """``deepsea claims``' forest plot: each measured claim's gain in log loss (positive: the claim holds) with
    its 95% margin, coloured by verdict; ``results`` are ``deepsea.claims.ClaimResult`` s."""
    plt = _pyplot()
    shown = [r for r in results if r.gain is not None]
    colours = {"confirmed": "tab:green", "reversed": "tab:red", "not at this scale": "tab:grey"}
    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.4 * max(1, len(shown))))
    y = np.arange(len(shown))[::-1]
    for yi, r in zip(y, shown, strict=True):
        err = 0.0 if r.margin is None else r.margin
        ax.errorbar(r.gain, yi, xerr=err, fmt="o", capsize=3, color=colours.get(r.verdict, "black"))
    ax.axvline(0.0, color="black", lw=0.8)
    labels = [f"{r.claim.text} ({r.claim.budget})" for r in shown]
    ax.set_yticks(y, [t if len(t) < 60 else t[:57] + "..." for t in labels], fontsize=7)
    ax.set_xlabel("gain in validation log loss (positive: the claim holds); bars: 95% intervals", fontsize=8)
    ax.set_title("green: confirmed, grey: not at this scale, red: reversed", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_shift_study(study: Any, path: str) -> str:
    """A :class:`deepsea.abundance.ShiftStudy`: estimated against true proportions, a panel per method (log axes;
    the diagonal is a perfect estimate)."""
    plt = _pyplot()
    n = len(study.methods)
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n, 3.8), sharex=True, sharey=True)
    floor = 0.5 / study.sample_size
    rows = np.arange(study.samples)
    for ax, m in zip(np.atleast_1d(axes), study.methods, strict=True):
        t, e = np.maximum(study.true, floor), np.maximum(study.estimates[m], floor)
        ax.scatter(t.ravel(), e.ravel(), s=4, alpha=0.3, color="grey", label="other classes")
        ax.scatter(t[rows, study.boosted], e[rows, study.boosted], s=12, color="tab:red", label=f"x{study.boost:g}")
        ax.scatter(t[rows, study.absent], e[rows, study.absent], s=12, color="tab:blue", label="absent (at the floor)")
        ax.plot([floor, 1], [floor, 1], color="black", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{m}: L1 {study.l1[m]:.3f}", fontsize=10)
        ax.set_xlabel("true proportion", fontsize=9)
        ax.tick_params(labelsize=8)
    first = np.atleast_1d(axes)[0]
    first.set_ylabel("estimated proportion", fontsize=9)
    first.legend(fontsize=7, loc="upper left")
    fig.suptitle(
        f"{study.samples} samples of {study.sample_size} images: one class x{study.boost:g}, one absent", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_abundances(results: Sequence[Any], path: str, top: int = 15) -> str:
    """Abundances (:class:`deepsea.abundance.Abundance`) per sample (up to 6): the ``top`` most abundant classes'
    counts by every method with their intervals."""
    plt = _pyplot()
    shown = list(results)[:6]
    fig, axes = plt.subplots(len(shown), 1, figsize=(9, 0.32 * top * len(shown) + 1.2), squeeze=False)
    for ax, a in zip(axes[:, 0], shown, strict=True):
        order = np.argsort(-a.counts.mean(0))[:top][::-1]
        y = np.arange(len(order))
        for mi, m in enumerate(a.methods):
            off = (mi - (len(a.methods) - 1) / 2) * 0.8 / len(a.methods)
            c, lo, hi = a.counts[mi, order], a.low[mi, order], a.high[mi, order]
            (dots,) = ax.plot(c, y + off, "o", ms=3, label=m)  # a percentile interval need not contain its estimate
            ax.hlines(y + off, lo, hi, color=dots.get_color(), lw=1)
        ax.set_yticks(y, [a.classes[i] for i in order], fontsize=7)
        ax.set_title(f"{a.sample}: {a.images} images ({a.confidence:.0%} intervals)", fontsize=9)
        ax.set_xlabel("count")
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
