"""Datasets, preprocessing, augmentation and loaders (NumPy/SciPy/grain; no JAX in the workers' path)."""

from deepsea.data.folders import FolderError, ImageFolder, scan_flat_folder, scan_labelled_folder
from deepsea.data.images import BadImageError, invert, read_image
from deepsea.data.pipeline import (
    AugmentedSource,
    Preprocess,
    check_images,
    compute_stats,
    eval_batches,
    preprocess_image,
    stratified_split,
    train_batches,
)
from deepsea.data.transforms import (
    NO_AUGMENTATION,
    TRAIN_RANGES,
    TTA_RANGES,
    AugmentParams,
    AugmentRanges,
    Rescale,
    affine_matrix,
    halton,
    params_from_unit,
    sample_params,
    tta_params,
    warp,
)

__all__ = [
    "NO_AUGMENTATION",
    "TRAIN_RANGES",
    "TTA_RANGES",
    "AugmentParams",
    "AugmentRanges",
    "AugmentedSource",
    "BadImageError",
    "FolderError",
    "ImageFolder",
    "Preprocess",
    "Rescale",
    "affine_matrix",
    "check_images",
    "compute_stats",
    "eval_batches",
    "halton",
    "invert",
    "params_from_unit",
    "preprocess_image",
    "read_image",
    "sample_params",
    "scan_flat_folder",
    "scan_labelled_folder",
    "stratified_split",
    "train_batches",
    "tta_params",
    "warp",
]
