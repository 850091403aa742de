"""One exception type for every user-facing failure (bad input, unknown name, missing data).

The CLI prints ``ddbench: error: <message>`` for these and exits non-zero without a traceback.
"""


class DDBenchError(Exception):
    """A problem the user can fix; the message names it and says what to do."""
