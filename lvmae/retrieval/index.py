"""Vector search over segment embeddings: exact, or through a saved HNSW index.

Two ways to find the segments nearest to a query, both by cosine similarity:

* :func:`exact_search` — a matrix product, chunked over the corpus so memory stays
  O(Q × chunk); right for small archives and as the ground truth for the index.
* :class:`VectorIndex` — an approximate HNSW index from usearch (Unum, "USearch",
  https://github.com/unum-cloud/usearch; Malkov & Yashunin, "HNSW", TPAMI 2018) for
  millions of segments. It is built once, saved beside the embeddings with a JSON
  ``fingerprint`` (encoder, dim, a hash of the embedding files, ...), reloaded by later
  searches and rebuilt when the fingerprint changes (:func:`load_or_build`).

The reconstruction monitor's rank metrics, built on the same scoring, are in
:mod:`lvmae.retrieval.ranks`.

Conventions: embeddings are float rows ``[N, D]``; they are L2-normalised inside, so scores
are cosine similarities in [-1, 1] (float32), sorted descending, ties broken by the lower
corpus index; indices are int64 row numbers of the corpus. Pure numpy + usearch; no Ray.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lvmae.errors import LvmaeError

__all__ = [
    "IndexMismatchError",
    "VectorIndex",
    "array_fingerprint",
    "exact_search",
    "gemm_tolerance",
    "load_or_build",
    "normalize",
]

log = logging.getLogger(__name__)

META_FILE = "meta.json"
META_FORMAT = 1
# Elements of one [query block, corpus chunk] score matrix (float32 scores + int64 keys ≈
# 12 bytes each): caps working memory at ~100 MB whatever Q is.
_BLOCK_ELEMENTS = 1 << 23


class IndexMismatchError(LvmaeError, ValueError):
    """A saved index does not match what the caller expects (fingerprint, size or dim)."""


# --------------------------------------------------------------------------------------
# Helpers


def _matrix(x: Any, name: str, dim: int | None = None) -> np.ndarray:
    """``x`` as a finite 2-D float32 array ``[n, D]``; ValueError otherwise."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n, D], got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has zero dimensions, shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} has dim {arr.shape[1]}, expected {dim}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _queries_and_corpus(queries: Any, corpus: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(queries [Q, D], corpus [N, D])`` as finite float32 (:func:`_matrix`), ``N >= 1``;
    ValueError otherwise, naming the corpus ``name``."""
    c = _matrix(corpus, name)
    q = _matrix(queries, "queries", dim=c.shape[1])
    if c.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    return q, c


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


def _check_chunk(chunk: int) -> int:
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    return int(min(chunk, 1 << 31))


def _query_blocks(n_queries: int, chunk_width: int) -> Iterator[slice]:
    """Slices over the queries so one score block holds about ``_BLOCK_ELEMENTS`` values."""
    step = max(1, _BLOCK_ELEMENTS // max(chunk_width, 1))
    for start in range(0, n_queries, step):
        yield slice(start, min(start + step, n_queries))


def _ordered_key(scores: np.ndarray) -> np.ndarray:
    """Top-k key per score block ``[q, C]``: int64, larger = better, unique within a row.

    High 32 bits: the float32 score mapped to an order-preserving int32; low 32 bits:
    ``C - 1 - column``, so equal scores rank the lower column first.
    """
    bits = scores.view(np.int32)
    ordered = np.where(bits < 0, bits ^ np.int32(0x7FFFFFFF), bits).astype(np.int64)
    width = scores.shape[1]
    tie = (width - 1 - np.arange(width, dtype=np.int64))[None, :]
    return (ordered << 32) + tie


def _top_k_block(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of each row of ``scores [q, C]``: (scores desc, columns), ties → lower column."""
    width = scores.shape[1]
    k = min(k, width)
    key = _ordered_key(scores)
    if k < width:
        cols = np.argpartition(key, width - k, axis=1)[:, width - k :]
    else:
        cols = np.broadcast_to(np.arange(width), key.shape)
    sub = np.take_along_axis(key, cols, axis=1)
    order = np.argsort(sub, axis=1)[:, ::-1]  # keys are unique: no stability question
    cols = np.take_along_axis(cols, order, axis=1)
    return np.take_along_axis(scores, cols, axis=1), cols.astype(np.int64)


def _block_scores(queries: np.ndarray, block: np.ndarray) -> np.ndarray:
    """Cosine scores ``[q, C]`` float32 of normalised queries against a normalised block."""
    scores = queries @ block.T
    scores += np.float32(0.0)  # -0.0 → +0.0 so that the integer keys agree with ``==``
    return scores


def gemm_tolerance(dim: int) -> float:
    """Bound on how far two float32 scores of unit rows of width ``dim``, computed by one
    matrix product, can be from each other's order: ``4 · dim · 2⁻²⁴``, twice the
    worst-case rounding error ``γ_D ≈ D·u`` of a float32 dot product of unit vectors in
    any summation order (Higham, "Accuracy and Stability of Numerical Algorithms", §3.1),
    with room. A BLAS sums identical rows in different orders depending on where they sit
    in the matrix (its kernels' tails), so their scores can differ by a few ulps."""
    return 4.0 * dim * 2.0**-24


def _exact_scores(queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``[n]`` float32 scores of paired rows ``queries[i] · rows[i]`` (both ``[n, D]``),
    summed in float64 and rounded once: a function of the two rows' values alone, so
    identical candidate rows get bit-identical scores wherever they sit."""
    out = np.empty(queries.shape[0], np.float32)
    step = max(1, _BLOCK_ELEMENTS // (2 * max(queries.shape[1], 1)))
    for a in range(0, queries.shape[0], step):
        q64 = queries[a : a + step].astype(np.float64)
        q64 *= rows[a : a + step]
        out[a : a + step] = q64.sum(axis=1)
    return out + np.float32(0.0)  # -0.0 → +0.0, as in _block_scores


def _rescore_near(
    scores: np.ndarray, queries: np.ndarray, block: np.ndarray, floor: np.ndarray
) -> np.ndarray:
    """``scores [q, C]`` (:func:`_block_scores` of ``queries [q, D]`` and ``block [C, D]``)
    with every score at or above ``floor [q] - gemm_tolerance(D)`` replaced in place by
    :func:`_exact_scores`; returns ``scores``.

    Scores further below ``floor`` cannot reach it in exact arithmetic, so comparisons and
    top-k selections at or above ``floor`` then depend on the rows' values only: exact
    duplicates tie exactly and the tie rules apply. Zero query rows are left alone (their
    scores are exactly 0). Cost: one gather per score kept (few, unless many near-duplicate
    candidates sit at the floor).
    """
    live = np.any(queries != 0, axis=1)
    near = scores >= (floor - np.float32(gemm_tolerance(block.shape[1])))[:, None]
    r, c = np.nonzero(near & live[:, None])
    step = max(1, _BLOCK_ELEMENTS // max(block.shape[1], 1))
    for a in range(0, r.size, step):
        rs, cs = r[a : a + step], c[a : a + step]
        scores[rs, cs] = _exact_scores(queries[rs], block[cs])
    return scores


def _merge(
    best_s: np.ndarray, best_i: np.ndarray, new_s: np.ndarray, new_i: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge running top-k with a later chunk's top-k (all its indices are larger)."""
    cand_s = np.concatenate([best_s, new_s], axis=1)
    cand_i = np.concatenate([best_i, new_i], axis=1)
    # Stable sort: among equal scores the earlier (= lower-index) candidate stays first.
    order = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(cand_s, order, axis=1), np.take_along_axis(cand_i, order, axis=1)


def _sort_rows(scores: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by (score descending, index ascending)."""
    order = np.lexsort((indices, -scores), axis=-1)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(indices, order, axis=1)


# --------------------------------------------------------------------------------------
# Exact search


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``x [..., D]`` scaled to unit L2 norm, as float32; zero rows stay zero.

    The norm is taken in float64 so large or tiny magnitudes do not overflow / underflow.
    """
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 0:
        raise ValueError("normalize needs at least a 1-D array")
    norms = np.linalg.norm(arr.astype(np.float64), axis=-1, keepdims=True)
    safe = np.where(norms > 0, norms, 1.0)
    return (arr / safe).astype(np.float32)


def exact_search(
    queries: np.ndarray, corpus: np.ndarray, k: int, *, chunk: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` cosine neighbours of each query in the corpus by matrix product.

    Args:
        queries: ``[Q, D]`` float rows (normalised inside; zero rows score 0 everywhere).
        corpus: ``[N, D]`` float rows, N >= 1.
        k: neighbours per query (>= 1); ``k' = min(k, N)`` are returned.
        chunk: corpus rows scored at a time; memory is O(Q × chunk) (queries are also
            processed in blocks, so in practice about 100 MB at most).

    Returns:
        ``(scores [Q, k'] float32`` cosine similarities, descending; ``indices [Q, k']``
        int64 corpus rows``)``; equal scores are ordered by the lower index. The scores
        returned (and every score within :func:`gemm_tolerance` of the k-th) are summed
        in float64 from the rows' values, so identical corpus rows score identically and
        come in index order (a float32 matrix product alone can score them a few ulps
        apart).

    Raises:
        ValueError: non-2-D / non-finite inputs, dim mismatch, empty corpus, ``k < 1``.
    """
    k = _check_k(k)
    chunk = _check_chunk(chunk)
    q, c = _queries_and_corpus(queries, corpus, "corpus")
    n = c.shape[0]
    k_out = min(k, n)
    qn = normalize(q)
    best_s = np.empty((q.shape[0], 0), dtype=np.float32)
    best_i = np.empty((q.shape[0], 0), dtype=np.int64)
    for start in range(0, n, chunk):
        block = normalize(c[start : start + chunk])
        parts_s, parts_i = [], []
        at = block.shape[0] - min(k_out, block.shape[0])  # column of the k-th best, sorted
        for qs in _query_blocks(q.shape[0], block.shape[0]):
            s = _block_scores(qn[qs], block)
            kth = np.partition(s, at, axis=1)[:, at]
            s, cols = _top_k_block(_rescore_near(s, qn[qs], block, kth), k_out)
            parts_s.append(s)
            parts_i.append(cols + start)
        if not parts_s:  # Q == 0
            break
        new_s, new_i = np.concatenate(parts_s), np.concatenate(parts_i)
        if best_s.shape[1] == 0:
            best_s, best_i = new_s, new_i
        else:
            best_s, best_i = _merge(best_s, best_i, new_s, new_i, k_out)
    if q.shape[0] == 0:
        return np.empty((0, k_out), np.float32), np.empty((0, k_out), np.int64)
    return best_s.astype(np.float32), best_i.astype(np.int64)


# --------------------------------------------------------------------------------------
# Approximate index


def _canonical(fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """The fingerprint as it reads back from JSON (tuples → lists, keys → str)."""
    if not isinstance(fingerprint, Mapping):
        raise TypeError(f"fingerprint must be a mapping, got {type(fingerprint).__name__}")
    try:
        return json.loads(json.dumps(dict(fingerprint), sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"fingerprint must be JSON-serialisable: {exc}") from exc


def _fingerprint_diff(stored: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    diffs = []
    for key in sorted(set(stored) | set(given)):
        if key not in given:
            diffs.append(f"{key!r}: stored {stored[key]!r}, not in the given fingerprint")
        elif key not in stored:
            diffs.append(f"{key!r}: given {given[key]!r}, absent from the stored fingerprint")
        elif stored[key] != given[key]:
            diffs.append(f"{key!r}: stored {stored[key]!r} != given {given[key]!r}")
    return diffs


def array_fingerprint(vectors: np.ndarray) -> str:
    """SHA-256 hex digest of an embedding matrix's shape, dtype and bytes.

    A convenient ``fingerprint`` entry when the embeddings fit in memory; for Parquet
    archives, hashing the file names, sizes and modification times is cheaper.
    """
    arr = np.ascontiguousarray(np.asarray(vectors))
    h = hashlib.sha256()
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.data)
    return h.hexdigest()


def _usearch_version() -> str:
    import usearch

    return str(getattr(usearch, "__version__", "unknown"))


class VectorIndex:
    """Approximate cosine index (usearch HNSW) over ``N`` vectors of dim ``D``.

    Keys are the row numbers 0..N-1 of the vectors it was built from. Vectors are
    normalised and stored as float32 (usearch would otherwise pick f16 on some CPUs).
    Build with :meth:`build`, persist with :meth:`save`, reopen with :meth:`load`.

    Attributes:
        fingerprint: JSON dict describing what the index was built from.
        size: N. dim: D.
    """

    def __init__(self, index: Any, fingerprint: Mapping[str, Any], params: Mapping[str, Any]):
        self._index = index
        self.fingerprint: dict[str, Any] = _canonical(fingerprint)
        self.params: dict[str, Any] = dict(params)
        self.size: int = len(index)
        self.dim: int = int(index.ndim)

    def __repr__(self) -> str:
        return f"VectorIndex(size={self.size}, dim={self.dim}, fingerprint={self.fingerprint})"

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        *,
        fingerprint: Mapping[str, Any],
        connectivity: int = 16,
        expansion_add: int = 128,
        expansion_search: int = 64,
    ) -> VectorIndex:
        """Build an HNSW index over ``vectors [N, D]`` (N >= 1, finite).

        ``connectivity`` is HNSW's M, ``expansion_add`` its efConstruction and
        ``expansion_search`` its ef (usearch names). ValueError on empty / bad input.
        """
        from usearch.index import Index

        v = _matrix(vectors, "vectors")
        if v.shape[0] == 0:
            raise ValueError("cannot build an index over zero vectors")
        fp = _canonical(fingerprint)
        params = {
            "metric": "cos",
            "dtype": "f32",
            "connectivity": int(connectivity),
            "expansion_add": int(expansion_add),
            "expansion_search": int(expansion_search),
        }
        index = Index(
            ndim=v.shape[1],
            metric="cos",
            dtype="f32",
            connectivity=params["connectivity"],
            expansion_add=params["expansion_add"],
            expansion_search=params["expansion_search"],
        )
        index.add(np.arange(v.shape[0], dtype=np.uint64), normalize(v))
        return cls(index, fp, params)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-``k`` by cosine similarity; same conventions as :func:`exact_search`.

        Returns ``(scores [Q, k'] float32 descending, indices [Q, k'] int64)`` with
        ``k' = min(k, N)``. Rows for which HNSW returns fewer than ``k'`` hits are
        re-searched exhaustively. ValueError on dim mismatch or ``k < 1``.
        """
        k = _check_k(k)
        q = _matrix(queries, "queries", dim=self.dim)
        k_out = min(k, self.size)
        if q.shape[0] == 0:
            return np.empty((0, k_out), np.float32), np.empty((0, k_out), np.int64)
        qn = normalize(q)
        keys, dist, counts = _padded(self._index.search(qn, k_out), q.shape[0], k_out)
        short = np.flatnonzero(counts < k_out)
        if short.size:
            keys[short], dist[short], _ = _padded(
                self._index.search(qn[short], k_out, exact=True), short.size, k_out
            )
        # usearch's cos distance is 1 - cosine similarity.
        scores = (1.0 - dist.astype(np.float32)).astype(np.float32)
        return _sort_rows(scores, keys.astype(np.int64))

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the index file and ``meta.json`` into ``directory``; return the directory.

        Atomic: the index goes to a fresh uniquely named file, then ``meta.json`` (which
        names that file, with the fingerprint, N, D, parameters and usearch version) is
        written to a temp file and renamed over the old one; older index files are then
        removed. A reader therefore sees either the old or the new index, never a mix.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        index_name = f"index-{uuid.uuid4().hex[:12]}.usearch"
        tmp_index = directory / f".{index_name}.tmp"
        self._index.save(str(tmp_index))
        tmp_index.replace(directory / index_name)
        meta = {
            "format": META_FORMAT,
            "index_file": index_name,
            "fingerprint": self.fingerprint,
            "size": self.size,
            "dim": self.dim,
            "params": self.params,
            "library": {"name": "usearch", "version": _usearch_version()},
        }
        fd, tmp_meta = tempfile.mkstemp(dir=directory, prefix=".meta-", suffix=".json.tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(meta, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp_meta).replace(directory / META_FILE)
        for old in directory.glob("index-*.usearch"):
            if old.name != index_name:
                old.unlink(missing_ok=True)
        return directory

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], *, fingerprint: Mapping[str, Any] | None = None
    ) -> VectorIndex:
        """Reopen an index saved by :meth:`save`.

        Raises:
            FileNotFoundError: no ``meta.json`` or index file in ``directory``.
            IndexMismatchError: ``fingerprint`` is given and differs from the stored one
                (another encoder, dim, or changed embeddings), the index file does not
                match its metadata, or either cannot be read (``meta.json`` not a JSON
                object, a truncated or foreign index file); the message lists the
                differences and says to rebuild.
        """
        from usearch.index import Index

        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"no saved vector index in {directory} ({META_FILE} missing)")
        rebuild = f"rebuild it (load_or_build(..., rebuild=True) or delete {directory})"
        try:
            meta = json.loads(meta_path.read_bytes())
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
            raise IndexMismatchError(f"{meta_path} is unreadable ({exc}) — {rebuild}") from exc
        if not isinstance(meta, dict) or not isinstance(meta.get("fingerprint", {}), dict):
            raise IndexMismatchError(f"{meta_path} is not an index's metadata — {rebuild}")
        stored = meta.get("fingerprint", {})
        if fingerprint is not None:
            diffs = _fingerprint_diff(stored, _canonical(fingerprint))
            if diffs:
                raise IndexMismatchError(
                    f"vector index in {directory} was built for other embeddings: "
                    + "; ".join(diffs)
                    + f" — {rebuild}"
                )
        index_path = directory / str(meta.get("index_file", ""))
        if not index_path.is_file():
            raise FileNotFoundError(f"index file {index_path} named in {meta_path} is missing")
        try:
            index = Index.restore(str(index_path))
        except (ValueError, RuntimeError) as exc:  # "Not a dense USearch index!", truncated
            raise IndexMismatchError(
                f"{index_path} is not a readable usearch index ({exc}) — {rebuild}"
            ) from exc
        if index is None:
            raise IndexMismatchError(f"{index_path} is not a usearch index — {rebuild}")
        params = meta.get("params") or {}
        try:
            params = dict(params)
            if "expansion_search" in params:
                index.expansion_search = int(params["expansion_search"])
        except (ValueError, TypeError) as exc:
            raise IndexMismatchError(f"{meta_path} has bad parameters ({exc}) — {rebuild}") from exc
        out = cls(index, stored, params)
        if (out.size, out.dim) != (meta.get("size"), meta.get("dim")):
            raise IndexMismatchError(
                f"{index_path} holds {out.size} × {out.dim} vectors but {meta_path} says "
                f"{meta.get('size')} × {meta.get('dim')} — {rebuild}"
            )
        return out


def _padded(matches, n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """usearch results as ``keys [n, k]``, ``distances [n, k]`` and ``counts [n]``: a batch
    result (``BatchMatches``) or, for one query, a ``Matches`` with only its hits."""
    if hasattr(matches, "counts"):
        keys = np.asarray(matches.keys).reshape(n, -1)[:, :k].copy()
        dist = np.asarray(matches.distances).reshape(n, -1)[:, :k].copy()
        return keys, dist, np.asarray(matches.counts).reshape(-1)
    hits = np.asarray(matches.keys).reshape(-1)[:k]
    keys = np.zeros((1, k), np.int64)
    dist = np.full((1, k), np.inf, np.float32)
    keys[0, : hits.size] = hits
    dist[0, : hits.size] = np.asarray(matches.distances).reshape(-1)[:k]
    return keys, dist, np.array([hits.size])


def load_or_build(
    directory: str | os.PathLike[str],
    vectors_fn: Callable[[], np.ndarray],
    fingerprint: Mapping[str, Any],
    *,
    rebuild: bool = False,
    **build_kwargs: Any,
) -> tuple[VectorIndex, bool]:
    """Reload the index in ``directory`` when its fingerprint matches, else build and save.

    ``vectors_fn`` is only called when building (loading millions of embeddings is the
    expensive part). ``build_kwargs`` go to :meth:`VectorIndex.build`.

    Returns:
        ``(index, built)`` — ``built`` is True when the index was (re)built and saved.
    """
    fp = _canonical(fingerprint)
    if not rebuild:
        try:
            return VectorIndex.load(directory, fingerprint=fp), False
        except FileNotFoundError:
            log.info("no vector index in %s; building one", directory)
        except IndexMismatchError as exc:
            log.warning("rebuilding vector index: %s", exc)
    index = VectorIndex.build(vectors_fn(), fingerprint=fp, **build_kwargs)
    index.save(directory)
    return index, True
