"""The approximate index of `lvmae search` over small hand-made archives (real Parquet, real
usearch, moto's real S3 server): where it is kept, when it is rebuilt. Searches are by
example, so no text encoder is built."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lvmae.storage import segment_schema, write_manifest, write_table_atomic
from pipelines.search import Searcher, index_dir, search

DIM = 16


def write_video(out: str, video_id: str, embeddings: np.ndarray) -> None:
    """One segments file under ``out`` (local or ``s3://``): ``video_id``'s 2-s segments."""
    n = len(embeddings)
    table = pa.table(
        {"video_id": [video_id] * n, "segment_index": pa.array(range(n), pa.int32()),
         "start_s": [2.0 * i for i in range(n)], "end_s": [2.0 * i + 2 for i in range(n)],
         "frame_indices": [[0]] * n, "frame_times_s": [[2.0 * i] for i in range(n)],
         "embedding": pa.FixedSizeListArray.from_arrays(
             pa.array(np.asarray(embeddings, np.float32).ravel()), DIM),
         "encoder": ["tiny"] * n, "config_id": ["x"] * n},
        schema=segment_schema(DIM),
    )  # fmt: skip
    write_table_atomic(table, out, "segments")


def make_archive(out: str, seed: int = 0) -> None:
    """A manifest and three videos of 6 random segments each."""
    write_manifest(out, {"config_id": "x", "encoder": {"name": "tiny",
                         "checkpoint": "tiny-seed0", "embedding_dim": DIM}})  # fmt: skip
    rng = np.random.default_rng(seed)
    for v in range(3):
        write_video(out, f"v{v}.mp4", rng.standard_normal((6, DIM)))


def test_an_object_store_archive_keeps_its_index_in_the_local_cache(s3_env, tmp_path, monkeypatch):
    """For ``s3://`` embeddings the index lives in this machine's cache keyed by the URI
    (not in a folder named ``s3:`` under the working directory), and segment files that
    arrive later (listed by the object store) make it rebuilt."""
    s3_env.client().create_bucket(Bucket="search-index")
    uri = "s3://search-index/arch"
    make_archive(uri)
    monkeypatch.setenv("LVMAE_CACHE_DIR", str(tmp_path / "cache"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    first = Searcher(uri, exact=False)
    assert first.index is not None and first.index.size == 18
    meta = index_dir(uri) / "meta.json"
    assert meta.is_file() and meta.is_relative_to(tmp_path / "cache")
    assert list(cwd.iterdir()) == []
    stamp = meta.read_bytes()
    assert Searcher(uri, exact=False).index.size == 18 and meta.read_bytes() == stamp

    # the extraction goes on: a fourth video whose two segments are near each other
    base = np.random.default_rng(9).standard_normal(DIM)
    write_video(uri, "new.mp4", [base, base + 0.01])
    rows = search(uri, example=("new.mp4", 1.0), top_k=1, exact=False)
    assert meta.read_bytes() != stamp  # rebuilt over the new files
    assert Searcher(uri, exact=False).index.size == 20
    assert (rows[0]["video_id"], rows[0]["segment_index"]) == ("new.mp4", 1)
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize("damage", ["meta", "meta-not-object", "index", "index-empty"])
def test_a_corrupt_saved_index_is_rebuilt(tmp_path, caplog, damage):
    """A ``meta.json`` that is not JSON (or not an object), or a truncated index file, is
    rebuilt with one warning line instead of failing the search."""
    emb = str(tmp_path / "arch")
    make_archive(emb)
    expected = search(emb, example=("v1.mp4", 3.0), top_k=3, exact=True)
    Searcher(emb, exact=False)
    directory = index_dir(emb)
    (index_file,) = directory.glob("index-*.usearch")
    if damage == "meta":
        (directory / "meta.json").write_text("{trunc")
    elif damage == "meta-not-object":
        (directory / "meta.json").write_text("[1, 2]")
    else:
        index_file.write_bytes(index_file.read_bytes()[: 0 if damage == "index-empty" else 100])
    with caplog.at_level(logging.WARNING, logger="lvmae.retrieval.index"):
        rows = search(emb, example=("v1.mp4", 3.0), top_k=3, exact=False)
    assert [(r["video_id"], r["segment_index"]) for r in rows] == [
        (r["video_id"], r["segment_index"]) for r in expected
    ]
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "rebuilding vector index" in warning.getMessage()
    assert "\n" not in warning.getMessage()
    assert Searcher(emb, exact=False).index.size == 18  # saved again, and now it loads


def test_a_local_index_stays_beside_the_embeddings(tmp_path):
    emb = tmp_path / "arch"
    make_archive(str(emb))
    assert index_dir(str(emb)) == emb / "index"
    assert index_dir(f"file://{emb}") == emb / "index"
    Searcher(str(emb), exact=False)
    assert Path(emb, "index", "meta.json").is_file()
