"""The one exception type for bad input from a user.

:class:`UserError` is raised for what a user gave: a file, folder, run, setting or value that does not fit, named
in the message.  The command line prints it (and missing or unwritable files) as one line; any other exception is
a bug and shows its traceback.  It is a ``ValueError``, so code that catches those keeps working.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(ValueError):
    """Bad input from the user, named in the message: printed as one line by the command line."""
