"""Search an archive's segments by text or by example, in the frozen encoder's
video–language aligned space (LanguageBind; LV-MAE §4.4 uses the same space to monitor
reconstructions).

Small archives are searched exactly (one matrix product); past ``EXACT_MAX`` segments an
approximate usearch index is built once, saved beside the embeddings
(``<embeddings>/index/``; for an object-store archive in this machine's cache,
:func:`index_dir`), reloaded on later searches and rebuilt when the embeddings change
(their files' names and sizes as the storage lists them, the encoder and the width are
fingerprinted) or when the saved index cannot be read.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from lvmae.errors import LvmaeError
from lvmae.retrieval.index import exact_search, load_or_build
from lvmae.storage import is_remote, read_manifest, read_segments, segment_files
from lvmae.tracking import cache_dir
from pipelines.job_inputs import text_encoder

EXACT_MAX = 200_000  # segments; above this an approximate index is used
INDEX_DIR = "index"


class SearchError(LvmaeError, ValueError):
    """A search cannot run (empty query, unknown segment, incompatible index...)."""


@dataclass
class SegmentMatrix:
    """All segments of an archive: ``embeddings`` ``[N, D]`` float32 and their keys."""

    video_id: list[str]
    segment_index: np.ndarray
    start_s: np.ndarray
    end_s: np.ndarray
    embeddings: np.ndarray


def load_segment_matrix(embeddings: str) -> SegmentMatrix:
    """Every segment (deduplicated, sorted) with its embedding; StorageError when none."""
    return segment_matrix(read_segments(
        embeddings, columns=["video_id", "segment_index", "start_s", "end_s", "embedding"]
    ))  # fmt: skip


def segment_matrix(table: pa.Table) -> SegmentMatrix:
    """The :class:`SegmentMatrix` of a segments table (``video_id``, ``segment_index``,
    ``start_s``, ``end_s`` and a fixed-size ``embedding`` list column), in its row order."""
    flat = table["embedding"].combine_chunks()
    dim = flat.type.list_size
    matrix = flat.values.to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32)
    return SegmentMatrix(
        table["video_id"].to_pylist(),
        table["segment_index"].to_numpy(),
        table["start_s"].to_numpy(),
        table["end_s"].to_numpy(),
        matrix,
    )


def index_dir(embeddings: str) -> Path:
    """Where the approximate index of ``embeddings`` is saved: ``<embeddings>/index`` for a
    local directory; for object storage (usearch reads and writes local files) a folder of
    this machine's cache keyed by the URI, ``<cache>/index/<16 hex of SHA-1(URI)>``
    (:func:`lvmae.tracking.cache_dir`: ``LVMAE_CACHE_DIR``, else the user cache)."""
    if is_remote(embeddings):
        key = hashlib.sha1(embeddings.rstrip("/").encode()).hexdigest()[:16]
        return cache_dir() / INDEX_DIR / key
    return Path(embeddings.removeprefix("file://")) / INDEX_DIR


def fingerprint(embeddings: str) -> dict:
    """What the saved index must match: the encoder, the width and the segment files
    (:func:`lvmae.storage.segment_files`: names and sizes)."""
    manifest = read_manifest(embeddings) or {}
    encoder = manifest.get("encoder", {})
    digest = hashlib.sha1()
    for name, size in segment_files(embeddings):
        digest.update(f"{name}:{size}".encode())
    return {
        "encoder": encoder.get("name"),
        "checkpoint": encoder.get("checkpoint"),
        "embedding_dim": encoder.get("embedding_dim"),
        "segments": digest.hexdigest(),
    }


def _check_saved_index(directory: Path, current: dict, rebuild: bool) -> None:
    """A saved index from another encoder or width is an error (rebuilding silently would
    hide a mixed-up directory); one from older embeddings of the same encoder, or one whose
    ``meta.json`` cannot be read, is left to :func:`load_or_build`, which rebuilds it."""
    meta = directory / "meta.json"
    if rebuild or not meta.is_file():
        return
    try:
        stored = json.loads(meta.read_text()).get("fingerprint", {})
    except (OSError, ValueError, AttributeError):  # unreadable: load_or_build rebuilds
        return
    if not isinstance(stored, dict):
        return
    differs = [
        f"{k}: index {stored.get(k)!r}, embeddings {current.get(k)!r}"
        for k in ("encoder", "checkpoint", "embedding_dim")
        if stored.get(k) != current.get(k)
    ]
    if differs:
        raise SearchError(
            f"the saved index in {meta.parent} was built for other embeddings "
            f"({'; '.join(differs)}): pass --rebuild-index (or delete the directory)"
        )


class Searcher:
    """An archive held in memory for many searches (``lvmae serve``): the segment matrix,
    the text encoder (built on the first text query) and, for approximate search, the index.

    ``exact`` as in :func:`search` (None: exact up to :data:`EXACT_MAX` segments). Building
    may take seconds (reading the embeddings, building or loading the index); searching is
    then a text-tower call plus a matrix product or an HNSW lookup, safe from many threads.

    Raises (at construction):
        StorageError: no embeddings under ``embeddings``.
        SearchError: a saved index built for another encoder or width (without rebuild).
    """

    def __init__(
        self,
        embeddings: str,
        *,
        exact: bool | None = None,
        rebuild_index: bool = False,
        segments: SegmentMatrix | None = None,
    ) -> None:
        self.embeddings = embeddings
        self.segments = segs = segments or load_segment_matrix(embeddings)
        self.exact = exact if exact is not None else len(segs.video_id) <= EXACT_MAX
        self.index = None
        self._encoder = None
        self._encoder_lock = threading.Lock()
        if not self.exact:
            directory, current = index_dir(embeddings), fingerprint(embeddings)
            _check_saved_index(directory, current, rebuild_index)
            self.index, _ = load_or_build(
                directory, lambda: segs.embeddings, current, rebuild=rebuild_index
            )

    @property
    def size(self) -> int:
        return len(self.segments.video_id)

    def text_vector(self, query: str) -> np.ndarray:
        """``[1, D]`` float32: ``query`` through the archive's text tower (built once)."""
        if not query.strip():
            raise SearchError("empty query: type some words to search for")
        with self._encoder_lock:
            if self._encoder is None:
                self._encoder = text_encoder(self.embeddings)
        vec = self._encoder.encode_text([query])
        if vec.shape[1] != self.segments.embeddings.shape[1]:
            raise SearchError(
                f"the text encoder gives {vec.shape[1]}-d vectors but {self.embeddings!r} "
                f"holds {self.segments.embeddings.shape[1]}-d segment embeddings"
            )
        return vec

    def find(self, video_id: str, t: float) -> int:
        """Row of the segment of ``video_id`` that covers ``t`` seconds; SearchError if none."""
        segs = self.segments
        hits = [
            i for i, v in enumerate(segs.video_id)
            if v == video_id and segs.start_s[i] <= t < segs.end_s[i]
        ]  # fmt: skip
        if not hits:
            raise SearchError(f"no segment of {video_id!r} covers {t} s")
        return hits[0]

    def nearest(self, vec: np.ndarray, top_k: int, *, exclude: int = -1) -> list[dict]:
        """The ``top_k`` segments nearest to ``vec [1, D]``, best first, leaving out row
        ``exclude``; rows as :func:`search` returns them (plus ``row``)."""
        if top_k < 1:
            raise SearchError(f"top_k must be >= 1, got {top_k}")
        segs = self.segments
        k = min(top_k + (exclude >= 0), self.size)
        if self.index is None:
            scores, idx = exact_search(vec, segs.embeddings, k)
        else:
            scores, idx = self.index.search(vec, k)
        rows = []
        for score, i in zip(scores[0], idx[0], strict=True):
            if i == exclude:
                continue
            rows.append(
                {
                    "rank": len(rows) + 1,
                    "row": int(i),
                    "video_id": segs.video_id[i],
                    "segment_index": int(segs.segment_index[i]),
                    "start_s": float(segs.start_s[i]),
                    "end_s": float(segs.end_s[i]),
                    "score": float(score),
                }
            )
        return rows[:top_k]


def search(
    embeddings: str,
    *,
    query: str | None = None,
    example: tuple[str, float] | None = None,
    top_k: int = 10,
    exact: bool | None = None,
    rebuild_index: bool = False,
) -> list[dict]:
    """The ``top_k`` segments nearest to a text ``query`` or to an ``example`` segment
    (``(video_id, time in seconds)``; the example itself is left out).

    Returns rows ``rank``, ``video_id``, ``segment_index``, ``start_s``, ``end_s``,
    ``score`` (cosine similarity), best first.

    Raises:
        SearchError: an empty query, both or neither of query/example, an unknown example
            segment, or an encoder whose width differs from the embeddings'.
        StorageError: no embeddings under ``embeddings``.
        IndexMismatchError: a saved index built from other embeddings (with ``exact=False``
            and no rebuild).
    """

    if (query is None) == (example is None):
        raise SearchError("give either a text query or an example segment, not both")
    if query is not None and not query.strip():
        raise SearchError("empty query: type some words to search for")
    if top_k < 1:
        raise SearchError(f"top_k must be >= 1, got {top_k}")
    searcher = Searcher(embeddings, exact=exact, rebuild_index=rebuild_index)
    if query is not None:
        return [
            {k: v for k, v in r.items() if k != "row"}
            for r in searcher.nearest(searcher.text_vector(query), top_k)
        ]
    exclude = searcher.find(*example)
    vec = searcher.segments.embeddings[exclude][None]
    return [
        {k: v for k, v in r.items() if k != "row"}
        for r in searcher.nearest(vec, top_k, exclude=exclude)
    ]
