"""The one exception type a user sees.

A :class:`DifflabError` carries a single sentence that says what was wrong, where, and what to
do. The CLI prints it without a traceback and exits with status 2; library callers can catch it.
"""


class DifflabError(Exception):
    """A problem with the user's input or environment, explained in one sentence."""
