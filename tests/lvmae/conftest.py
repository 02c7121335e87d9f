"""Shared fixtures of the lvmae tests."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

FRESH_TEXTS = ["a person slices onions", "a dog runs on the beach", "two people talk in a car"]


@pytest.fixture(scope="session")
def fresh_tiny(tmp_path_factory) -> dict:
    """The tiny encoder (seed 0) run ONCE in a fresh interpreter, for the tests that its
    outputs do not depend on the process: video embeddings of ``frames`` (4 random
    segments) and text embeddings of :data:`FRESH_TEXTS`. Also records whether importing
    :mod:`lvmae.encoders.models` imported languagebind (it must not, until an encoder is built)."""
    root = tmp_path_factory.mktemp("fresh_tiny")
    frames = np.random.default_rng(0).integers(0, 256, size=(4, 8, 224, 224, 3), dtype=np.uint8)
    np.save(root / "frames.npy", frames)
    script = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        from lvmae.encoders.models import build_encoder
        eager = sorted(m for m in sys.modules if m.startswith("languagebind"))
        enc = build_encoder("tiny", device="cpu", seed=0)
        np.save({str(root / "video.npy")!r}, enc.encode(np.load({str(root / "frames.npy")!r})))
        np.save({str(root / "text.npy")!r}, enc.encode_text({FRESH_TEXTS!r}))
        open({str(root / "eager.json")!r}, "w").write(json.dumps(eager))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    return {
        "frames": frames,
        "video": np.load(root / "video.npy"),
        "text": np.load(root / "text.npy"),
        "eager_imports": json.loads((root / "eager.json").read_text()),
    }


def assert_unit_embeddings(emb, rows: int, dim: int) -> None:
    """``emb`` is a finite float32 numpy ``[rows, dim]`` array of unit-norm embeddings."""
    assert isinstance(emb, np.ndarray)
    assert emb.shape == (rows, dim)
    assert emb.dtype == np.float32
    assert np.all(np.isfinite(emb))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
