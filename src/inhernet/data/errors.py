"""Errors raised by the data loaders.

They are separate classes so that callers (the CLI, the tests) can tell "this data set is not on
this machine" - something the user fixes by installing a package - apart from "this file is
damaged", which needs a re-download. Both are :class:`inhernet.errors.InherNetError` s, so the
command line reports them as one-line messages.
"""

from __future__ import annotations

from inhernet.errors import InherNetError

__all__ = ["DataFormatError", "DatasetNotFoundError", "IdxFormatError"]


class DatasetNotFoundError(InherNetError, FileNotFoundError):
    """A data set's files are not on this machine.

    Subclasses :class:`FileNotFoundError` so that generic ``except FileNotFoundError`` handlers
    still catch it; the message always ends with the exact command or step that installs the data.
    """


class DataFormatError(InherNetError, ValueError):
    """A data file is there but truncated, corrupt, or not in the format expected."""


class IdxFormatError(DataFormatError):
    """An IDX file (the MNIST file format) is truncated, corrupt or not the kind that was expected."""
