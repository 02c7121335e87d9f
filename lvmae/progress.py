"""Progress a person can follow, with or without a terminal.

On a TTY, :class:`Progress` is a tqdm bar. Without one (``kubectl logs``, ``ray job logs``,
a CI log) it writes one plain line every ``every_s`` seconds and a last one at the end:
``extract: 12/128 videos (9%) · 0:01:40 elapsed · ETA 0:14:00 · segments=96 failed=1``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TextIO

from tqdm.auto import tqdm

from lvmae.errors import LvmaeError

EVERY_S = 30.0
"""Seconds between progress lines without a TTY, unless ``LVMAE_PROGRESS_EVERY_S`` says."""


def every_s_from_env() -> float:
    """``LVMAE_PROGRESS_EVERY_S`` (seconds, >= 0) when set, else :data:`EVERY_S`.

    Raises:
        LvmaeError: the variable is not a number of seconds.
    """
    raw = os.environ.get("LVMAE_PROGRESS_EVERY_S", "").strip()
    if not raw:
        return EVERY_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not value >= 0 or math.isinf(value):
        raise LvmaeError(
            f"LVMAE_PROGRESS_EVERY_S={raw!r}: give the seconds between progress lines as a "
            "number, e.g. 30"
        )
    return value


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds))) if math.isfinite(seconds) else "?"


class Progress:
    """Progress of ``total`` units of work (``None``: unknown).

    Args:
        total: the units expected.
        desc: what is being done (``extract``, ``pretrain``...).
        unit: the unit's name (``videos``, ``epochs``...).
        enabled: False shows nothing.
        every_s: seconds between lines without a TTY (None: :func:`every_s_from_env`).
        stream: where to write (default stderr); a TTY gets a bar.
        clock: the time source (seconds), for tests.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        *,
        enabled: bool = True,
        every_s: float | None = None,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.stream = stream or sys.stderr
        self.every_s = every_s_from_env() if every_s is None else every_s
        self.clock = clock
        self.n, self.postfix = 0, {}
        self.t0 = self.last = clock()
        self.bar = None
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            self.bar = tqdm(total=total, desc=desc, unit=f" {unit}", file=self.stream)

    def update(self, n: int = 1, **postfix: Any) -> None:
        """``n`` more units done; ``postfix`` replaces the shown counters."""
        self.n += n
        self.postfix.update(postfix)
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(self.postfix, refresh=False)
        elif self.enabled and self.clock() - self.last >= self.every_s:
            self.write_line()

    def line(self) -> str:
        """The current progress as one line."""
        elapsed = self.clock() - self.t0
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        parts = [f"{self.desc}: {done} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{_clock(elapsed)} elapsed")
        if self.total and 0 < self.n < self.total:
            parts.append(f"ETA {_clock(elapsed / self.n * (self.total - self.n))}")
        if self.postfix:
            parts.append(" ".join(f"{k}={v}" for k, v in self.postfix.items()))
        return " · ".join(parts)

    def write_line(self) -> None:
        """Write :meth:`line` now (no TTY)."""
        self.last = self.clock()
        print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        """End the bar, or write the last line."""
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self.write_line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
