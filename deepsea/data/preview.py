"""A PNG grid of preprocessed images beside augmented versions of each, for any dataset."""

from __future__ import annotations

import numpy as np

from deepsea.data.folders import ImageFolder
from deepsea.data.pipeline import AugmentedSource, Preprocess, _read, preprocess_image
from deepsea.data.transforms import TRAIN_RANGES, AugmentRanges

__all__ = ["save_preview"]


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
        raw = _read(folder.paths[i], pp.channels)
        plain = preprocess_image(raw, pp)
        panels = [raw, plain] + [src.example(epoch, row)["image"] for epoch in range(n_augmented)]
        for col, img in enumerate(panels):
            ax = axes[row, col]
            cmap = "gray_r" if col == 0 else "gray"
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
