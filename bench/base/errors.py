"""The one exception type for mistakes a user can fix (bad option, missing file, impossible topology).

The CLI prints such an error as one line naming the problem and the fix and exits with status 2,
before anything is written to disk. Everything else is a bug or a failure and keeps its traceback.
"""

import traceback


class UserError(Exception):
    """A problem in the user's input; the message names the problem and the fix in one line."""


def last_line(exc: BaseException) -> str:
    """The last line of an exception's message: what a failed rank or cell reports in one line."""
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()
    return text[-1] if text else type(exc).__name__


class ResultsUnwritable(Exception):
    """The results folder stopped taking writes during a run (a full disk, a folder made read-only): the run ends
    with this one line and exit status 1; whatever could still be written says status failed."""
