"""Progress without a TTY: one line every N seconds and a last one, with counts and ETA."""

from __future__ import annotations

import io

import pytest

from lvmae.errors import LvmaeError
from lvmae.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_lines_every_n_seconds_without_a_tty():
    out, clock = io.StringIO(), Clock()
    with Progress(10, "extract", "videos", every_s=30, stream=out, clock=clock) as p:
        for i in range(10):
            clock.t += 10
            p.update(1, failed=i // 5)
    lines = out.getvalue().splitlines()
    # at 30, 60, 90 s, then the last line at close
    assert len(lines) == 4
    assert lines[0].startswith("extract: 3/10 videos (30%) · 0:00:30 elapsed · ETA 0:01:10")
    assert lines[0].endswith("failed=0")
    assert lines[-1].startswith("extract: 10/10 videos (100%) · 0:01:40 elapsed")
    assert "ETA" not in lines[-1] and lines[-1].endswith("failed=1")


def test_disabled_and_unknown_totals():
    out = io.StringIO()
    with Progress(5, "x", enabled=False, stream=out) as p:
        p.update(5)
    assert out.getvalue() == ""
    clock = Clock()
    with Progress(None, "trials", "trials", stream=out, clock=clock) as p:
        p.update(2)
    assert out.getvalue().strip() == "trials: 2 trials · 0:00:00 elapsed"


def test_the_line_interval_comes_from_the_environment_and_is_checked(monkeypatch):
    monkeypatch.setenv("LVMAE_PROGRESS_EVERY_S", "2.5")
    assert Progress(3, "t", stream=io.StringIO()).every_s == 2.5
    monkeypatch.delenv("LVMAE_PROGRESS_EVERY_S")
    assert Progress(3, "t", stream=io.StringIO()).every_s == 30.0
    for bad in ("30s", "-1", "nan", "inf"):
        monkeypatch.setenv("LVMAE_PROGRESS_EVERY_S", bad)
        with pytest.raises(LvmaeError, match="LVMAE_PROGRESS_EVERY_S"):
            Progress(3, "t", stream=io.StringIO())
