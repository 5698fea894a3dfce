"""Reading images and turning them into the seed's input: grayscale, inverted, float32.

The seed's images are dark organisms on a white background; inverted as
``1 - x / 255`` the organism is bright on a zero background, which is also
the constant the affine warp fills in.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from deepsea.errors import UserError

__all__ = ["GRAYSCALE_MODES", "IMAGE_EXTENSIONS", "BadImageError", "invert", "read_image"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})


class BadImageError(UserError):
    """An image file that cannot be decoded; ``path`` names it and ``reason`` says why."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot read image {path!r}: {reason}")
        self.path = path
        self.reason = reason


GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})
"""PIL modes without colour: an RGB model (``data.channels = 3``) refuses them rather than invent colour."""


def read_image(path: str | os.PathLike, mode: str = "L", gray_to_rgb: bool = False) -> np.ndarray:
    """Decodes ``path`` fully into a uint8 array: ``(H, W)`` for ``mode="L"``, ``(H, W, 3)`` for ``"RGB"``.

    RGB, palette, 16-bit and transparent images are converted (transparency is
    composited on white, the background of plankton images); a colour image
    read as ``"L"`` becomes its luma.  A grayscale file read as ``"RGB"`` is
    refused (a model of colour images would see three equal channels it never
    trained on) unless ``gray_to_rgb`` replicates it into three channels, as a
    model trained so expects.  Corrupt, truncated, empty or unreadable files
    raise :class:`BadImageError` naming the file.
    """
    path = os.fspath(path)
    if mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'L' or 'RGB', not {mode!r}")
    try:
        with Image.open(path) as im:
            im.load()  # decodes everything now: a truncated file fails here, not later
            if mode == "RGB" and not gray_to_rgb and im.mode in GRAYSCALE_MODES:
                raise BadImageError(
                    path,
                    f"a grayscale image ({im.mode}) where colour (RGB) images are expected "
                    "(data.gray_to_rgb = true trains on grayscale images as three equal channels)",
                )
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(background, rgba)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                top = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 1.0)
                im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
            out = np.asarray(im.convert(mode), dtype=np.uint8)
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError(path, "no such file") from None
    except PermissionError as e:
        raise BadImageError(path, f"permission denied ({e})") from None
    except UnidentifiedImageError:
        size = os.path.getsize(path) if os.path.exists(path) else -1
        reason = "empty file" if size == 0 else "not an image PIL can identify (corrupt or another format)"
        raise BadImageError(path, reason) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadImageError(path, f"corrupt or truncated ({type(e).__name__}: {e})") from None
    if out.size == 0:
        raise BadImageError(path, f"image has no pixels (shape {out.shape})")
    return out


def invert(image: np.ndarray) -> np.ndarray:
    """``1 - x / 255`` as float32: a dark organism on white becomes bright on zero."""
    return (1.0 - image.astype(np.float32) / 255.0).astype(np.float32)
