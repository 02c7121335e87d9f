"""What every module of :mod:`lvmae.labels` shares: the split and task names, the error, and
small text helpers.

This module imports nothing else of the package, so :mod:`lvmae.labels.splits` (which the
format's validation uses) and :mod:`lvmae.labels.format` can both raise :class:`LabelsError`
without importing each other in a cycle. :mod:`lvmae.labels.format` re-exports the names of
the format (:data:`SPLITS`, :data:`TASKS`, :class:`LabelsError`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from lvmae.errors import LvmaeError

__all__ = ["INTEGER", "SPLITS", "TASKS", "LabelsError", "as_float", "label_text", "some"]

SPLITS = ("train", "val", "test")
TASKS = ("classification", "regression")

# An integer as written in a labels file or an LVU annotation line: ``3``, ``-2``, ``+10``.
INTEGER = re.compile(r"[+-]?\d+")


class LabelsError(LvmaeError, ValueError):
    """Labels are missing, malformed or inconsistent; the message says what to fix.

    An :class:`~lvmae.errors.LvmaeError` (the ``lvmae`` command prints it without a
    traceback) and a ``ValueError`` (so ``except ValueError`` keeps working).
    """


def some(items: Sequence[object], k: int = 5) -> str:
    """``a, b, c`` or ``a, b, c, ... (12 in all)``: the first ``k`` items for a message."""
    shown = ", ".join(str(x) for x in items[:k])
    return shown if len(items) <= k else f"{shown}, ... ({len(items)} in all)"


def label_text(value: object) -> str:
    """A cell as label text: stripped; ``""`` for None / NaN; integral floats without ``.0``
    (``3.0`` → ``3``), other floats by ``repr`` (exact)."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value).strip()


def as_float(text: str) -> float | None:
    """``text`` as a finite float, or None (not a number, or inf / nan)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
