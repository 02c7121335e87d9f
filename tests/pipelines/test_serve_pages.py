"""``lvmae serve`` pages over a hand-made archive (real Parquet written by the storage layer,
the real tiny text encoder, Starlette's client): a run page that stays bounded for a large
videos table, and request parameters that only ASCII digits satisfy."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest
from starlette.testclient import TestClient

from lvmae.storage import VIDEO_SCHEMA, segment_schema, write_manifest, write_table_atomic
from pipelines.serve.app import RUN_PAGE_ROWS, create_app
from pipelines.serve.archive import Archive, video_key
from tests.pipelines.conftest import loaded

DIM = 64  # the tiny encoder's width: its text tower is warmed at load
VIDEOS = 2 * RUN_PAGE_ROWS + 50  # three pages
NOT_OK = {f"z{i:03d}.mp4": "failed" if i % 2 else "partial" for i in range(7)}  # sort last by id


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Archive:
    out = str(tmp_path_factory.mktemp("serve-pages") / "extract")
    write_manifest(out, {"config_id": "x", "encoder": {"name": "tiny",
                         "checkpoint": "tiny-seed0", "embedding_dim": DIM}})  # fmt: skip
    ids = [f"v{i:04d}.mp4" for i in range(VIDEOS - len(NOT_OK))] + list(NOT_OK)
    rng = np.random.default_rng(0)
    n = 3  # segments of the first video
    write_table_atomic(pa.table(
        {"video_id": [ids[0]] * n, "segment_index": pa.array(range(n), pa.int32()),
         "start_s": [2.0 * i for i in range(n)], "end_s": [2.0 * i + 2 for i in range(n)],
         "frame_indices": [[0]] * n, "frame_times_s": [[2.0 * i] for i in range(n)],
         "embedding": pa.FixedSizeListArray.from_arrays(
             pa.array(rng.standard_normal(n * DIM).astype(np.float32)), DIM),
         "encoder": ["tiny"] * n, "config_id": ["x"] * n},
        schema=segment_schema(DIM),
    ), out, "segments")  # fmt: skip
    rows = [{"video_id": v, "uri": f"/nonexistent/{v}", "status": NOT_OK.get(v, "ok"),
             "error": "cannot decode" if v in NOT_OK else None, "config_id": "x"}
            for v in ids]  # fmt: skip
    write_table_atomic(pa.Table.from_pylist(rows, VIDEO_SCHEMA), out, "videos")
    with loaded(Archive(out, cache_dir=str(tmp_path_factory.mktemp("thumbs")))) as archive:
        yield archive


@pytest.fixture(scope="module")
def client(archive) -> TestClient:
    return TestClient(create_app(archive), raise_server_exceptions=False)


def video_links(html: str) -> list[str]:
    return re.findall(r'<tr><td><a href="/video/([0-9a-f]{16})">', html)


def test_run_page_shows_a_bounded_page_failed_and_partial_first(client, archive):
    first = client.get("/run")
    assert first.status_code == 200
    keys = video_links(first.text)
    assert len(keys) == RUN_PAGE_ROWS  # not every one of the videos
    assert keys[: len(NOT_OK)] == [video_key(v) for v in sorted(NOT_OK)]
    assert 'href="/run?page=2" rel="next"' in first.text and "page 1 of 3" in first.text
    assert f"{len(NOT_OK) // 2} failed" in first.text  # the counts cover every video
    seen = list(keys)
    for number in (2, 3):
        page = client.get("/run", params={"page": number})
        assert page.status_code == 200 and f"page {number} of 3" in page.text
        assert f'href="/run?page={number - 1}" rel="prev"' in page.text
        seen += video_links(page.text)
    assert len(seen) == VIDEOS and set(seen) == set(archive.videos)  # each video exactly once
    for bad in ("0", "4", "²", "-1", "x"):
        page = client.get("/run", params={"page": bad})
        assert page.status_code == 400 and "page must be" in page.text, bad


def test_only_ascii_digits_are_numbers(client, archive):
    """``str.isdigit`` also accepts superscripts and other scripts' digits, which ``int``
    refuses: they must be the same clear answers as any other bad value, never a 500."""
    key = next(iter(archive.videos))
    for k in ("²", "١", "𝟗", "9" * 30):
        api = client.get("/api/search", params={"q": "bars", "k": k})
        assert api.status_code == 400 and "k must be" in api.json()["error"], k
        page = client.get("/", params={"q": "bars", "k": k})
        assert page.status_code == 400 and "k must be" in page.text, k
    for idx in ("²", "٣", "9" * 30):
        assert client.get("/api/search", params={"like": f"{key}:{idx}"}).status_code == 404
        assert client.get("/", params={"like": f"{key}:{idx}"}).status_code == 404
    assert client.get("/api/search", params={"like": f"{key}:1", "k": "2"}).status_code == 200
