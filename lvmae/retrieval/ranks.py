"""Reconstruction-retrieval metrics (LV-MAE §4.4, Fig. 6): ranks, recall@k, median rank.

The reconstruction monitor compares reconstructed masked embeddings with the true segment
embeddings: it ranks each true segment among all candidates of the held-out set
(:func:`retrieval_ranks`) and summarises the ranks with :func:`recall_at_k` (R@1 / R@5 /
R@10) and :func:`median_rank`. A rank is ``1 + #other candidates scoring at least as high``
— scores are compared, never indices subtracted (the reference helper's bug).

Scores are cosine similarities computed as in :mod:`lvmae.retrieval.index` (the same
normalisation and chunked score blocks). Pure numpy; no Ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lvmae.retrieval.index import (
    _block_scores,
    _check_chunk,
    _check_k,
    _exact_scores,
    _queries_and_corpus,
    _query_blocks,
    _rescore_near,
    normalize,
)

__all__ = ["median_rank", "recall_at_k", "retrieval_ranks"]


def retrieval_ranks(
    queries: np.ndarray, candidates: np.ndarray, targets: np.ndarray, *, chunk: int = 65536
) -> np.ndarray:
    """1-based rank of each query's true candidate among all candidates, by cosine.

    For the reconstruction monitor, ``queries`` are reconstructed segment embeddings,
    ``candidates`` the true embeddings of the held-out set and ``targets[q]`` the row of
    query q's true segment. ``rank[q] = 1 + #{j != targets[q] : s(q, j) >= s(q,
    targets[q])}``: ties count *against* the query (a candidate scoring as high as the true
    one ranks ahead of it), so degenerate reconstructions cannot look perfect — all-zero
    queries score 0 against everything and get rank N, not 1. Scores are compared, never
    indices subtracted.

    Exact ties — duplicate candidates, perfect reconstructions — are counted whatever the
    matrix product's rounding: the target's score and every score within
    :func:`lvmae.retrieval.index.gemm_tolerance` of it are summed in float64 from the two
    rows' values (a float32 matrix product alone can score identical rows a few ulps
    apart, which would rank the query ahead of an exact duplicate of its target).

    Args:
        queries: ``[Q, D]``; candidates: ``[N, D]`` (N >= 1); targets: ``[Q]`` ints in
            ``[0, N)``; chunk: candidate rows scored at a time (memory O(Q × chunk)).

    Returns:
        ``[Q]`` int64 ranks in ``[1, N]``.

    Raises:
        ValueError: bad shapes, dim mismatch, empty candidates, targets out of range, or a
            NaN / infinite value in ``queries`` or ``candidates``.
    """
    chunk = _check_chunk(chunk)
    q, c = _queries_and_corpus(queries, candidates, "candidates")
    n = c.shape[0]
    t_arr = np.asarray(targets)
    if t_arr.ndim != 1 or t_arr.shape[0] != q.shape[0]:
        raise ValueError(f"targets must have shape [{q.shape[0]}], got {t_arr.shape}")
    if t_arr.size and not np.issubdtype(t_arr.dtype, np.integer):
        raise ValueError(f"targets must be integers, got dtype {t_arr.dtype}")
    tgt = t_arr.astype(np.int64)
    if tgt.size and (tgt.min() < 0 or tgt.max() >= n):
        raise ValueError(f"targets must lie in [0, {n}), got range [{tgt.min()}, {tgt.max()}]")
    qn = normalize(q)
    # The target's score from its two rows alone (float64, rounded once); every score near it
    # is recomputed the same way, so a duplicate of the target ties with it exactly.
    own = _exact_scores(qn, normalize(c[tgt]))
    at_least = np.zeros(q.shape[0], dtype=np.int64)
    for start in range(0, n, chunk):
        block = normalize(c[start : start + chunk])
        for qs in _query_blocks(q.shape[0], block.shape[0]):
            s = _rescore_near(_block_scores(qn[qs], block), qn[qs], block, own[qs])
            at_least[qs] += (s >= own[qs, None]).sum(axis=1)
    return at_least  # the count includes the target itself: 1 + #{others >= target}


def _ranks(ranks: Any) -> np.ndarray:
    arr = np.asarray(ranks)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-D array, got shape {arr.shape}")
    integral = np.issubdtype(arr.dtype, np.integer) or (
        np.issubdtype(arr.dtype, np.floating) and bool(np.all(arr == np.round(arr)))
    )
    if not integral:
        raise ValueError(f"ranks must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.min() < 1:
        raise ValueError(f"ranks are 1-based, got minimum {arr.min()}")
    return arr


def recall_at_k(ranks: Sequence[int] | np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Recall@k from 1-based ranks: ``{"R@k": fraction of ranks <= k}`` for each k.

    ValueError on empty / non-integer / non-positive ranks or k < 1.
    """
    arr = _ranks(ranks)
    out: dict[str, float] = {}
    for k in ks:
        out[f"R@{_check_k(k)}"] = float(np.mean(arr <= k))
    return out


def median_rank(ranks: Sequence[int] | np.ndarray) -> float:
    """Median of 1-based ranks (mean of the two middle ones for an even count)."""
    return float(np.median(_ranks(ranks)))
