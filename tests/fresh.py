"""Run test code in a fresh Python interpreter (what a module imports, hash seeds)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def fresh_python(code: str, **env: str) -> str:
    """The stripped stdout of ``python -c code`` in a new interpreter with the repository on
    its path and ``env`` added to the environment; CalledProcessError when it fails."""
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
    )  # fmt: skip
    return res.stdout.strip()
