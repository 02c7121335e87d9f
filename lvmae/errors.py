"""The project's one error family.

Every error a user can cause (a bad config, path, video, labels file, checkpoint or cluster
address) is an :class:`LvmaeError`. The ``lvmae`` command prints such an error as
``error: <message>`` and exits 1, without a traceback; anything else is a bug and keeps its
traceback. Subclasses live next to the code that raises them and also derive from the
built-in exception that fits (``ValueError`` for bad values, ``RuntimeError`` for failed
work), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

from collections.abc import Iterable


class LvmaeError(Exception):
    """Base of every error a user can fix; the message says what to fix."""


class UnknownNameError(LvmaeError, ValueError):
    """A name that a plug-in registry (probe kinds, frozen encoders; docs/design.md
    "Plug-ins") does not hold; the message lists the ones it does. Lives here because both
    registries raise it and they import nothing else of the project."""

    def __init__(self, what: str, name: str, known: Iterable[str]) -> None:
        super().__init__(f"unknown {what} {name!r}; valid names: {', '.join(known)}")
