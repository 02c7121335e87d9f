"""The project's one error family.

Every error a user can cause (a bad config, path, video, labels file, checkpoint or cluster
address) is an :class:`LvmaeError`. The ``lvmae`` command prints such an error as
``error: <message>`` and exits 1, without a traceback; anything else is a bug and keeps its
traceback. Subclasses live next to the code that raises them and also derive from the
built-in exception that fits (``ValueError`` for bad values, ``RuntimeError`` for failed
work), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class LvmaeError(Exception):
    """Base of every error a user can fix; the message says what to fix."""
