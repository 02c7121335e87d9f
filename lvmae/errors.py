"""The project's one error family.

Every error a user can cause (a bad config, path, video, labels file, checkpoint or cluster
address) is an :class:`LvmaeError`. The ``lvmae`` command prints such an error as
``error: <message>`` and exits 1, without a traceback; anything else is a bug and keeps its
traceback. Subclasses live next to the code that raises them and also derive from the
built-in exception that fits (``ValueError`` for bad values, ``RuntimeError`` for failed
work), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable


class LvmaeError(Exception):
    """Base of every error a user can fix; the message says what to fix."""


class UnknownNameError(LvmaeError, ValueError):
    """A name that a plug-in registry (probe kinds, frozen encoders; docs/design.md
    "Plug-ins") does not hold; the message lists the ones it does. Lives here because both
    registries raise it and they import nothing else of the project."""

    def __init__(self, what: str, name: str, known: Iterable[str]) -> None:
        super().__init__(f"unknown {what} {name!r}; valid names: {', '.join(known)}")


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
"""A full device, a quota reached, a file-size limit (``ulimit -f``) hit: to the user, all
"no space to write"."""
_DISK_FULL_TEXT = (
    "no space left on device", "disk quota exceeded", "file too large",
    "database or disk is full", "[errno 28]", "[errno 27]", "[errno 122]",
)  # fmt: skip


def disk_full_cause(exc: BaseException) -> BaseException | None:
    """The exception in ``exc``'s chain (itself, its ``__cause__`` / ``__context__``) that
    says the disk is full (``ENOSPC``, ``EDQUOT``, or ``EFBIG`` from a file-size limit), or
    None. Libraries report it their own way: an ``OSError`` with ``errno`` (Python), an
    ``OSError`` whose text carries ``[errno 28]`` (pyarrow), SQLite's "database or disk is
    full" (MLflow's store), a worker's error re-raised as text (Ray); all are recognised."""
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, OSError) and node.errno in DISK_FULL_ERRNOS:
            return node
        if any(t in str(node).lower() for t in _DISK_FULL_TEXT):
            return node
        node = node.__cause__ or node.__context__
    return None
