"""User-facing errors.

Every error a user can cause (bad input, bad configuration, unknown participant) derives from
:class:`SymprepError`. The command line prints such errors as a single line and exits non-zero
without a traceback; ``--debug`` shows the traceback.
"""

from __future__ import annotations

from os import PathLike


class SymprepError(Exception):
    """Base class of errors caused by the user's input; printed by the CLI as one line.

    Parameters
    ----------
    message : str
        What is wrong, in one sentence.
    path : str or path-like, optional
        The file or directory the problem is about; prefixed to the message.
    """

    exit_code: int = 2

    def __init__(self, message: str, path: str | PathLike[str] | None = None) -> None:
        self.message = " ".join(str(message).split())  # always one line
        self.path = None if path is None else str(path)
        super().__init__(self.message if self.path is None else f"{self.path}: {self.message}")


class InputError(SymprepError):
    """An input file or directory is missing, unreadable or malformed."""


class ImageError(InputError):
    """An image is unreadable, truncated, has the wrong dimensionality, non-finite data or affine."""


class BIDSError(InputError):
    """The input directory is not a usable BIDS dataset."""


class OutputError(SymprepError):
    """An output or work folder cannot be created or written."""


class ParticipantError(SymprepError):
    """A participant label is unknown or unsafe (for instance contains a path separator)."""


class ConfigError(SymprepError):
    """The configuration file has an unknown key, a wrong type or an invalid value."""


class StageError(SymprepError):
    """A processing stage failed for one subject; other subjects go on."""

    exit_code = 1


class QCError(StageError):
    """A result failed its quality-control thresholds."""
