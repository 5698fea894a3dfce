"""Output paths checked before any work starts: a prediction that fails to write after an hour is an hour lost.

:func:`output_file` and :func:`output_folder` make the parent folder (or refuse, naming why), refuse a file where
a folder is wanted and the reverse, and probe that the place can be written by writing to it (a read-only mount
refuses even root).  Every command that writes calls them on its arguments first.
"""

from __future__ import annotations

import os
import tempfile

from deepsea.errors import UserError

__all__ = ["output_file", "output_folder"]


def _writable(folder: str, what: str, path: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise UserError(f"{what} {path!r}: its folder {folder!r} cannot be made ({e.strerror})") from None
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".deepsea-write-check-"):
            pass
    except OSError as e:
        raise UserError(f"{what} {path!r}: {folder!r} cannot be written ({e.strerror})") from None


def output_file(path: str, what: str = "output file") -> str:
    """``path`` as an absolute file path that can be written: not a folder, its folder made and writable."""
    full = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(full):
        raise UserError(f"{what} {path!r} is a folder: give a file path")
    _writable(os.path.dirname(full), what, path)
    return full


def output_folder(path: str, what: str = "output folder") -> str:
    """``path`` as an absolute folder path that can be written: not a file, made if missing, writable."""
    full = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(full) and not os.path.isdir(full):
        raise UserError(f"{what} {path!r} is a file: give a folder")
    _writable(full, what, path)
    return full
