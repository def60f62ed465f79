"""The one exception type for mistakes a user can fix (bad option, missing file, impossible topology).

The CLI prints such an error as one line naming the problem and the fix and exits with status 2,
before anything is written to disk. Everything else is a bug or a failure and keeps its traceback.
"""


class UserError(Exception):
    """A problem in the user's input; the message names the problem and the fix in one line."""
