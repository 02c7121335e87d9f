"""Per-video token sequences for pre-training and inference (stage 2 of LV-MAE).

One token is one segment embedding (5 s by default, docs/design.md "Reference facts"); a video is
the ``[L, D]`` sequence of its segment embeddings in time order. This module turns the
segments table (:func:`lvmae.storage.read_segments`) into those sequences, assigns videos to
train/val splits, draws the random contiguous training windows of the paper (Naiman et al.,
ICCV 2025, §4), tiles whole videos into windows for inference, and pads windows into a batch:
``x`` float32 ``[B, L, D]`` plus ``real`` bool ``[B, L]`` (True = real token, False = [PAD];
the real tokens of a row are a prefix).

Pure numpy / pyarrow: no torch, no Ray.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

WINDOW_MODES = ("cap", "random")


def _embedding_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """``[N, D]`` float32 from a list-typed Arrow column; ValueError on nulls / mixed D."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    if arr.null_count:
        raise ValueError(f"embedding column has {arr.null_count} null rows; re-run extraction")
    typ = arr.type
    if pa.types.is_fixed_size_list(typ):
        dim = typ.list_size
    elif pa.types.is_list(typ) or pa.types.is_large_list(typ):
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        dims = np.unique(lengths)
        if len(dims) > 1:
            raise ValueError(
                f"mixed embedding dims {dims.tolist()} in one table: the segments come from "
                "different encoders; extract into separate output directories"
            )
        dim = int(dims[0]) if n else 0
    else:
        raise ValueError(f"embedding column must be a list of floats, got {typ}")
    values = arr.flatten()  # honours slicing offsets
    if values.null_count:
        raise ValueError("embedding column holds null values; re-run extraction")
    flat = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if n and dim == 0:
        raise ValueError("embedding column holds empty embeddings")
    return flat.reshape(n, dim)


def sequences_from_table(table: pa.Table) -> Iterator[tuple[str, np.ndarray]]:
    """Iterate ``(video_id, x)`` per video, videos in ascending id order, ``x`` float32
    ``[L, D]``: the video's segment embeddings ordered by ``segment_index`` (L tokens).

    Rows repeating a ``(video_id, segment_index)`` pair are dropped, keeping the first in
    table order (:func:`lvmae.storage.read_segments` already deduplicates). Gaps in the
    segment indices are not errors: tokens are simply the present segments in order. The
    arrays yielded are read-only views into one matrix for the whole table; copy one before
    changing it in place. The table is checked and converted eagerly, so errors are raised
    by the call itself, before iteration.

    Args:
        table: needs the columns ``video_id`` (string), ``segment_index`` (integer) and
            ``embedding`` (fixed-size or variable list of floats) of the segments table
            (docs/design.md, "Data contracts").

    Raises:
        ValueError: a column is missing, embeddings have different widths (mixed encoders)
            or null rows.
    """
    missing = [c for c in ("video_id", "segment_index", "embedding") if c not in table.schema.names]
    if missing:
        raise ValueError(
            f"segments table lacks column(s) {missing}; expected the table of "
            "lvmae.storage.read_segments"
        )
    if table.num_rows == 0:
        return iter(())
    if table["video_id"].null_count or table["segment_index"].null_count:
        raise ValueError("segments table has null video_id or segment_index values")
    # pyarrow's sort is stable, so among duplicates the first row in table order leads.
    order = pc.sort_indices(
        table.select(["video_id", "segment_index"]),
        sort_keys=[("video_id", "ascending"), ("segment_index", "ascending")],
    )
    vids = table["video_id"].take(order).to_numpy(zero_copy_only=False)
    segs = table["segment_index"].take(order).to_numpy(zero_copy_only=False)
    keep = np.ones(len(vids), dtype=bool)
    keep[1:] = (vids[1:] != vids[:-1]) | (segs[1:] != segs[:-1])
    order = order.to_numpy()[keep]
    vids = vids[keep]
    emb = _embedding_matrix(table["embedding"].take(pa.array(order)))
    emb.flags.writeable = False
    starts = np.flatnonzero(np.r_[True, vids[1:] != vids[:-1]])
    ends = np.r_[starts[1:], len(vids)]
    return ((str(vids[s]), emb[s:e]) for s, e in zip(starts, ends, strict=True))


def split_of(video_id: str, val_fraction: float, seed: int = 0) -> str:
    """``"train"`` or ``"val"`` for ``video_id``: a stable hash split.

    The decision is a SHA-256 of ``seed`` and ``video_id`` (never Python's salted
    ``hash()``), so it is the same in every process, worker and run; about ``val_fraction``
    of ids land in ``"val"``; ``val_fraction == 0`` puts every id in ``"train"``. Splitting
    by video (not by window) keeps a video's windows out of both splits at once.

    Raises:
        ValueError: ``val_fraction`` outside ``[0, 1]``.
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    if val_fraction == 0.0:
        return "train"
    digest = hashlib.sha256(f"{int(seed)}\x00{video_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64  # uniform in [0, 1)
    return "val" if u < val_fraction else "train"


def seconds_to_tokens(seconds: float, segment_s: float) -> int:
    """Number of tokens (segments of ``segment_s`` seconds) needed to span ``seconds``:
    ``ceil(seconds / segment_s)``, at least 1 (e.g. the reference's 10 s minimum window at
    5 s per token is 2 tokens).

    Raises:
        ValueError: ``segment_s <= 0`` or ``seconds < 0``.
    """
    if segment_s <= 0:
        raise ValueError(f"segment_s must be > 0 seconds, got {segment_s}")
    if seconds < 0:
        raise ValueError(f"seconds must be >= 0, got {seconds}")
    return max(1, math.ceil(seconds / segment_s - 1e-9))


def sample_window(
    length: int,
    max_tokens: int,
    rng: np.random.Generator,
    *,
    mode: str = "cap",
    min_tokens: int = 2,
) -> tuple[int, int]:
    """A random contiguous training window ``[start, end)`` of a ``length``-token video.

    The paper trains on random contiguous windows of each video's sequence (Naiman et al.,
    ICCV 2025, §4; docs/design.md "Reference facts"):

    - ``"cap"``: ``end - start == min(length, max_tokens)`` at a uniformly random start.
    - ``"random"``: the reference code's random duration: a length drawn uniformly from
      ``[min(min_tokens, length), min(length, max_tokens)]`` tokens, at a uniformly random
      start. Callers convert the reference's 10 s minimum with :func:`seconds_to_tokens`.

    Args:
        length: tokens in the video (>= 1).
        max_tokens: the model's token cap (>= 1).
        rng: numpy generator (seed it per worker/epoch for reproducibility).
        mode: ``"cap"`` or ``"random"``.
        min_tokens: shortest window in ``"random"`` mode, tokens (1 <= min_tokens <=
            max_tokens).

    Returns:
        ``(start, end)`` token indices, ``0 <= start < end <= length``.

    Raises:
        ValueError: non-positive ``length``/``max_tokens``, bad ``min_tokens`` or unknown
            ``mode``.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1 token, got {length}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if mode == "cap":
        n = min(length, max_tokens)
    elif mode == "random":
        if not 1 <= min_tokens <= max_tokens:
            raise ValueError(
                f"min_tokens must be in [1, max_tokens={max_tokens}], got {min_tokens}"
            )
        hi = min(length, max_tokens)
        n = int(rng.integers(min(min_tokens, hi), hi + 1))
    else:
        raise ValueError(f"mode must be one of {WINDOW_MODES}, got {mode!r}")
    start = int(rng.integers(0, length - n + 1))
    return start, start + n


def windows_for_inference(length: int, max_tokens: int) -> list[tuple[int, int]]:
    """Consecutive, non-overlapping ``[start, end)`` windows tiling ``[0, length)`` tokens,
    each at most ``max_tokens`` long, to embed whole videos longer than the model's cap.

    Uses the fewest windows, ``ceil(length / max_tokens)``, with sizes balanced to differ by
    at most one token (so no window is a stub of a few tokens). ``length == 0`` gives ``[]``.

    Raises:
        ValueError: ``length < 0`` or ``max_tokens < 1``.
    """
    if length < 0:
        raise ValueError(f"length must be >= 0 tokens, got {length}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if length == 0:
        return []
    n = -(-length // max_tokens)
    bounds = [i * length // n for i in range(n + 1)]
    return list(itertools.pairwise(bounds))


def collate(
    seqs: Sequence[np.ndarray], max_tokens: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Pad token sequences into a batch.

    Args:
        seqs: B arrays ``[L_i, D]`` (L_i >= 1 tokens, one D for all).
        max_tokens: when given, the longest allowed ``L_i`` (the model's cap).

    Returns:
        ``x`` float32 ``[B, L, D]`` with ``L = max L_i`` and zeros at pads, and ``real`` bool
        ``[B, L]``, True on the first ``L_i`` positions of row i (real tokens), False on
        [PAD] tokens.

    Raises:
        ValueError: no sequences, a sequence that is not 2-D or is empty, mixed D, or one
            longer than ``max_tokens`` (cut it with :func:`sample_window` or
            :func:`windows_for_inference` first).
    """
    if len(seqs) == 0:
        raise ValueError("collate needs at least one sequence")
    lengths = []
    dims = set()
    for i, s in enumerate(seqs):
        if np.ndim(s) != 2:
            raise ValueError(f"sequence {i} must be [L, D], got shape {np.shape(s)}")
        if s.shape[0] == 0:
            raise ValueError(f"sequence {i} is empty: every row needs at least one real token")
        lengths.append(s.shape[0])
        dims.add(s.shape[1])
    if len(dims) > 1:
        raise ValueError(f"sequences have mixed embedding dims {sorted(dims)}")
    longest = max(lengths)
    if max_tokens is not None and longest > max_tokens:
        bad = int(np.argmax(lengths))
        raise ValueError(
            f"sequence {bad} has {longest} tokens, more than max_tokens={max_tokens}; "
            "cut it into windows first"
        )
    lengths_arr = np.asarray(lengths)
    x = np.zeros((len(seqs), longest, dims.pop()), dtype=np.float32)
    real = np.arange(longest)[None, :] < lengths_arr[:, None]
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
    return x, real


def sequence_table(group: pa.Table) -> pa.Table:
    """Segment rows of one or more videos → one row per video with its ordered,
    deduplicated sequence: ``video_id``, ``length`` L (tokens) and ``embedding`` flattened
    ``[L * D]`` float32 (a Ray Data ``map_groups`` function; see
    :func:`sequences_from_table`)."""
    ids, lengths, flats = [], [], []
    for video_id, seq in sequences_from_table(group):
        ids.append(video_id)
        lengths.append(seq.shape[0])
        flats.append(seq.ravel().astype(np.float32))
    return pa.table(
        {
            "video_id": pa.array(ids, pa.string()),
            "length": pa.array(lengths, pa.int32()),
            "embedding": pa.array(flats, pa.list_(pa.float32())),
        }
    )
