"""One exception type for every user-facing failure.

The CLI turns a HusaiError into a one-line message and a non-zero exit; anything raised as
HusaiError must therefore have a message that makes sense on its own, without a traceback.
"""


class HusaiError(Exception):
    """A problem with the user's input or files, explained in one line."""
