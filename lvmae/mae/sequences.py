"""Per-video token sequences for pre-training and inference (stage 2 of LV-MAE).

One token is one segment embedding (5 s by default, docs/design.md "Reference facts"); a video is
the ``[L, D]`` sequence of its segment embeddings in time order. This module turns the
segments table (:func:`lvmae.storage.read_segments`) into those sequences, assigns videos to
train/val splits, draws the random contiguous training windows of the paper (Naiman et al.,
ICCV 2025, §4), tiles whole videos into windows for inference, and pads windows into a batch:
``x`` float32 ``[B, L, D]`` plus ``real`` bool ``[B, L]`` (True = real token, False = [PAD];
the real tokens of a row are a prefix).

For pre-training it also gives each epoch's sample order (:func:`epoch_indices`, the
semantics of PyTorch's ``DistributedSampler`` with ``set_epoch``, as in the authors'
reference code) and random access to the per-video sequence rows stored as Parquet
(:class:`SequenceStore`), so every worker can read the videos its share of the global,
seeded permutation names (:func:`epoch_batches`).

Pure numpy / pyarrow: no torch, no Ray.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

WINDOW_MODES = ("cap", "random")
OPEN_FILES = 16  # Parquet files a SequenceStore keeps open (a batch of 16 videos' files)
VISIBLE_PER_WINDOW_SLOT = 32
"""A token-budget micro-batch of ``batch_tokens`` visible tokens holds at most
``ceil(batch_tokens / 32)`` windows (see :func:`plan_token_batches`), which keeps the encoder's
[CLS] rows within 3 % of the budget; windows of 64 tokens or more never reach the limit."""


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

    Rows repeating a ``(video_id, segment_index)`` pair are dropped, keeping the last in
    table order, as :func:`lvmae.storage.read_segments` does (which already deduplicates).
    Gaps in the segment indices are not errors: tokens are simply the present segments in
    order. The arrays yielded are read-only views into one matrix for the whole table; copy
    one before changing it in place. The table is checked and converted eagerly, so errors
    are raised by the call itself, before iteration.

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
    # pyarrow's sort is stable, so among duplicates the last row in table order comes last.
    order = pc.sort_indices(
        table.select(["video_id", "segment_index"]),
        sort_keys=[("video_id", "ascending"), ("segment_index", "ascending")],
    )
    vids = table["video_id"].take(order).to_numpy(zero_copy_only=False)
    segs = table["segment_index"].take(order).to_numpy(zero_copy_only=False)
    keep = np.ones(len(vids), dtype=bool)
    keep[:-1] = (vids[:-1] != vids[1:]) | (segs[:-1] != segs[1:])
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
    min_window_s: float = 10.0,
    segment_s: float = 5.0,
) -> tuple[int, int]:
    """A random contiguous training window ``[start, end)`` of a ``length``-token video.

    The paper trains on random contiguous windows of each video's sequence (Naiman et al.,
    ICCV 2025, §4; docs/design.md "Reference facts"):

    - ``"cap"``: ``end - start == min(length, max_tokens)`` at a uniformly random start.
    - ``"random"``: the authors' reference code's scheme: a duration ``d`` drawn uniformly
      in whole seconds from ``[min_window_s, max_tokens * segment_s]`` (10–1280 s for
      5-s tokens and a 256-token cap), ``floor(d / segment_s)`` tokens (at least 1), then
      clipped to the video, at a uniformly random start. Short videos are therefore mostly
      used whole: for ``length`` 20 the window is the whole video with probability 0.93
      (mean 19.3 tokens), for ``length`` 100 with probability 0.61 (mean 81).

    Args:
        length: tokens in the video (>= 1).
        max_tokens: the model's token cap (>= 1).
        rng: numpy generator (seed it per worker/epoch for reproducibility).
        mode: ``"cap"`` or ``"random"``.
        min_window_s: shortest ``"random"`` duration, seconds (the reference's 10 s).
        segment_s: seconds per token (> 0).

    Returns:
        ``(start, end)`` token indices, ``0 <= start < end <= length``.

    Raises:
        ValueError: non-positive ``length``/``max_tokens``/``segment_s``, a ``min_window_s``
            outside ``[0, max_tokens * segment_s]``, or an unknown ``mode``.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1 token, got {length}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if mode == "cap":
        n = min(length, max_tokens)
    elif mode == "random":
        if segment_s <= 0:
            raise ValueError(f"segment_s must be > 0 seconds, got {segment_s}")
        lo, hi = math.ceil(min_window_s - 1e-9), math.floor(max_tokens * segment_s + 1e-9)
        if not 0 <= lo <= hi:
            raise ValueError(
                f"min_window_s must be in [0, max_tokens * segment_s = {hi} s], got {min_window_s}"
            )
        duration = int(rng.integers(lo, hi + 1))  # whole seconds, as the reference draws
        n = max(1, min(int(duration // segment_s), length, max_tokens))
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


# --------------------------------------------------------------------------- epoch order


def epoch_indices(n: int, *, epoch: int, rank: int, world: int, seed: int = 0) -> np.ndarray:
    """The indices (into ``n`` training videos) that ``rank`` of ``world`` workers visits in
    ``epoch``, in visiting order: PyTorch's ``DistributedSampler(shuffle=True,
    drop_last=False)`` after ``set_epoch(epoch)``, the authors' reference sampler.

    Each epoch draws one permutation of all ``n`` videos from ``(seed, epoch)`` (numpy's
    PCG64, so the same pair gives the same order on every machine and a new epoch gives a
    new order); it is padded by repeating its head (cyclically when ``n`` is smaller than
    the padding) to ``ceil(n / world) * world`` entries, and rank ``r`` takes entries
    ``r, r + world, ...``. Every rank gets ``ceil(n / world)`` indices; over all ranks
    every video appears once, plus ``ceil(n / world) * world - n`` repeats.

    Returns:
        int64 ``[ceil(n / world)]`` (empty when ``n == 0``).

    Raises:
        ValueError: ``n < 0``, ``epoch < 0``, ``world < 1`` or ``rank`` outside
            ``[0, world)``.
    """
    if n < 0 or epoch < 0:
        raise ValueError(f"n and epoch must be >= 0, got n={n}, epoch={epoch}")
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank={rank}, world={world}")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([int(seed) % 2**64, int(epoch)])
    order = rng.permutation(n).astype(np.int64)
    total = -(-n // world) * world
    if total > n:
        order = np.concatenate([order, np.resize(order, total - n)])
    return order[rank:total:world]


def index_batches(indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """``indices`` cut into consecutive batches of ``batch_size``; an incomplete last batch
    is dropped (the reference DataLoader's ``drop_last=True``).

    Raises:
        ValueError: ``batch_size < 1``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    full = len(indices) // batch_size
    return [np.asarray(indices[i * batch_size : (i + 1) * batch_size]) for i in range(full)]


class SequenceStore:
    """Random access to per-video sequence rows stored as Parquet (the rows of
    :func:`sequence_table`: ``video_id``, ``length``, ``embedding`` flat ``[L * D]``).

    Opening reads every file's footer and the small ``video_id`` and ``length`` columns;
    a :meth:`batch` reads the ``embedding`` column of only the row groups that hold the
    rows asked for, one row group at a time (write the store with small row groups to
    bound the memory of a read); at most :data:`OPEN_FILES` files stay open, the least
    recently read closed first. Row ``i`` of the store is the ``i``-th video in
    ascending ``video_id`` order, so the numbering does not depend on how the files
    were written (file names, row order, a rewrite on resume).

    Args:
        path: a directory (or one file) of Parquet files: a local path or a URI pyarrow
            understands (``s3://``, ``gs://``, ``hdfs://``...).
        filesystem: a ``pyarrow.fs.FileSystem`` to read ``path`` with (default: from the
            URI, else local).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a column is missing or a ``video_id`` repeats.
    """

    def __init__(self, path: str, filesystem=None) -> None:
        dataset = pads.dataset(path, format="parquet", filesystem=filesystem)
        self.path, self._fs, self._files = path, dataset.filesystem, sorted(dataset.files)
        self._open: OrderedDict[int, pq.ParquetFile] = OrderedDict()  # least recent first
        ids, lengths, groups, starts, row = [], [], [], [], 0
        for f, name in enumerate(self._files):
            with pq.ParquetFile(name, filesystem=self._fs) as pf:  # footers: closed once read
                missing = {"video_id", "length", "embedding"} - set(pf.schema_arrow.names)
                if missing:
                    raise ValueError(f"{name} lacks column(s) {sorted(missing)}")
                table = pf.read(columns=["video_id", "length"])
                for g in range(pf.metadata.num_row_groups):
                    groups.append((f, g))
                    starts.append(row)
                    row += pf.metadata.row_group(g).num_rows
            ids.extend(table["video_id"].to_pylist())
            lengths.append(table["length"].to_numpy().astype(np.int64))
        id_array = np.asarray(ids, dtype=object)
        self._rows = np.argsort(id_array, kind="stable").astype(np.int64)
        self.video_ids = id_array[self._rows]
        if len(ids) > 1 and np.any(self.video_ids[1:] == self.video_ids[:-1]):
            raise ValueError(f"{path} repeats video ids; rewrite the sequence store")
        self.lengths = (np.concatenate(lengths) if lengths else np.zeros(0, np.int64))[self._rows]
        self._groups, self._starts = groups, np.asarray(starts, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._rows)

    def _file(self, f: int) -> pq.ParquetFile:
        """File ``f``, open: a small LRU of handles that closes the one it evicts
        (``functools.lru_cache`` cannot close what it drops)."""
        pf = self._open.pop(f, None)
        if pf is None:
            pf = pq.ParquetFile(self._files[f], filesystem=self._fs)
            while len(self._open) >= OPEN_FILES:
                self._open.popitem(last=False)[1].close()
        self._open[f] = pf  # now the most recent
        return pf

    def batch(
        self, indices: Sequence[int] | np.ndarray, *, embedding: bool = True
    ) -> dict[str, np.ndarray]:
        """The rows at ``indices`` (store positions, repeats allowed), in that order.

        Args:
            embedding: False: only ``video_id`` and ``length``, from memory (nothing read):
                what a training step skipped on resume needs to replay its random draws.

        Returns:
            ``{"video_id": object [B] str, "length": int64 [B] tokens, "embedding":
            object [B] of float32 [length_i * D]}`` — the batch format of
            :mod:`lvmae.mae.engine`.

        Raises:
            IndexError: an index outside ``[0, len(self))``.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"indices must be in [0, {len(self)}), got {idx.min()}..{idx.max()}")
        if not embedding:
            return {"video_id": self.video_ids[idx], "length": self.lengths[idx]}
        rows = self._rows[idx]
        group = np.searchsorted(self._starts, rows, side="right") - 1
        embedding = np.empty(len(rows), dtype=object)
        for g in np.unique(group):
            where = np.flatnonzero(group == g)
            f, rg = self._groups[g]
            column = self._file(f).read_row_group(int(rg), columns=["embedding"])["embedding"]
            taken = column.take(pa.array(rows[where] - self._starts[g])).combine_chunks()
            flat = taken.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
            sizes = pc.list_value_length(taken).to_numpy(zero_copy_only=False)
            for j, part in zip(where, np.split(flat, np.cumsum(sizes)[:-1]), strict=True):
                embedding[j] = part
        return {
            "video_id": self.video_ids[idx],
            "length": self.lengths[idx],
            "embedding": embedding,
        }


def epoch_batches(
    store: SequenceStore,
    *,
    epoch: int,
    rank: int,
    world: int,
    batch_size: int,
    seed: int = 0,
    skip: int = 0,
) -> Iterator[dict[str, np.ndarray] | None]:
    """One worker's training batches of ``epoch``: its :func:`epoch_indices` over the whole
    ``store``, cut into :func:`index_batches` of ``batch_size`` (drop last), each read with
    :meth:`SequenceStore.batch` when reached. The first ``skip`` batches (done before a
    resume) are yielded without their ``embedding``, reading nothing: the positions
    :func:`lvmae.mae.engine.train_one_epoch` passes over when resuming mid-epoch, replaying
    their random draws from their lengths.

    Yields:
        ``ceil(len(store) / world) // batch_size`` batches.
    """
    indices = epoch_indices(len(store), epoch=epoch, rank=rank, world=world, seed=seed)
    for i, chunk in enumerate(index_batches(indices, batch_size)):
        yield store.batch(chunk, embedding=i >= skip)


# --------------------------------------------------------------------------- token budgets


def keep_count(n: np.ndarray | int, ratio: float) -> np.ndarray:
    """Visible tokens of windows of ``n`` tokens at mask ratio ``ratio``, on the host:
    ``int(n * (1 - ratio))``, at least 1, at most ``n`` (:func:`lvmae.mae.masking.mask_counts`).
    int64 array of ``n``'s shape."""
    n = np.asarray(n, dtype=np.int64)
    keep = np.floor(n.astype(np.float64) * (1.0 - float(ratio))).astype(np.int64)
    return np.minimum(np.maximum(keep, 1), n)


def scored_count(n: np.ndarray, ratio: float, fraction: float) -> np.ndarray:
    """Masked tokens scored by the loss per window (:func:`lvmae.mae.masking.subset_count`)."""
    m = n - keep_count(n, ratio)
    if fraction >= 1.0:
        return m
    keep = np.ceil(m.astype(np.float64) * float(fraction) - 1e-9).astype(np.int64)
    return np.minimum(np.maximum(keep, (m > 0).astype(np.int64)), m)


def max_windows(batch_tokens: int) -> int:
    """Most windows in one micro-batch of ``batch_tokens`` visible tokens."""
    return max(1, -(-batch_tokens // VISIBLE_PER_WINDOW_SLOT))


def plan_token_batches(
    window_lengths: Sequence[int] | np.ndarray, batch_tokens: int, ratio: float
) -> list[np.ndarray]:
    """Cut windows, in the given order, into consecutive micro-batches of at most
    ``batch_tokens`` visible tokens (``keep_count`` of each window) and at most
    :func:`max_windows` windows ("max tokens" batching, as fairseq and Megatron-LM do, on the
    tokens the encoder sees). Every window lands in exactly one micro-batch; order is kept.

    Returns:
        int64 index arrays into ``window_lengths``, one per micro-batch.

    Raises:
        ValueError: a window alone has more visible tokens than ``batch_tokens``.
    """
    keep = keep_count(np.asarray(window_lengths, dtype=np.int64), ratio)
    if len(keep) and keep.max() > batch_tokens:
        raise ValueError(
            f"a window keeps {int(keep.max())} visible tokens, more than batch_tokens="
            f"{batch_tokens}: raise batch_tokens or lower max_tokens"
        )
    limit = max_windows(batch_tokens)
    batches, start, total = [], 0, 0
    for i, k in enumerate(keep):
        if i > start and (total + k > batch_tokens or i - start >= limit):
            batches.append(np.arange(start, i))
            start, total = i, 0
        total += int(k)
    if start < len(keep):
        batches.append(np.arange(start, len(keep)))
    return batches


def sample_windows(
    lengths: np.ndarray,
    max_tokens: int,
    rng: np.random.Generator,
    *,
    mode: str = "cap",
    min_window_s: float = 10.0,
    segment_s: float = 5.0,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`sample_window` for many videos at once (the same distribution; one vectorised
    draw per quantity, so not the same numbers as calling it video by video).

    Returns:
        int64 ``starts`` and ``ends`` ``[len(lengths)]``, ``0 <= start < end <= length``.

    Raises:
        ValueError: a length below 1, or the errors of :func:`sample_window`.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and lengths.min() < 1:
        raise ValueError("every video needs at least one token")
    sample_window(1, max_tokens, np.random.default_rng(0), mode=mode,
                  min_window_s=min_window_s, segment_s=segment_s)  # fmt: skip  # validates
    if mode == "cap":
        n = np.minimum(lengths, max_tokens)
    else:
        lo, hi = math.ceil(min_window_s - 1e-9), math.floor(max_tokens * segment_s + 1e-9)
        duration = rng.integers(lo, hi + 1, size=len(lengths))
        n = np.maximum(1, np.minimum(np.minimum(duration // segment_s, lengths), max_tokens))
        n = n.astype(np.int64)
    starts = rng.integers(0, lengths - n + 1) if len(lengths) else np.zeros(0, np.int64)
    return starts.astype(np.int64), (starts + n).astype(np.int64)


def token_epoch_plan(
    lengths: np.ndarray,
    *,
    epoch: int,
    world: int,
    seed: int,
    batch_tokens: int,
    accumulate: int,
    ratio: float,
    decoder_fraction: float,
    max_tokens: int,
    mode: str = "cap",
    min_window_s: float = 10.0,
    segment_s: float = 5.0,
) -> tuple[list[list[list[np.ndarray]]], np.ndarray]:
    """The optimizer steps of one token-budget epoch, the same on every worker.

    From ``(seed, epoch)`` alone: a permutation of all ``len(lengths)`` training videos, one
    random window each (:func:`sample_windows`), the windows cut in that order into
    micro-batches of at most ``batch_tokens`` visible tokens (:func:`plan_token_batches`),
    and ``world * accumulate`` consecutive micro-batches per optimizer step, dealt to the
    workers in turn (worker ``r`` takes micro-batches ``r, r + world, ...`` of the step). Every
    video is used exactly once per epoch; the last step may give some workers fewer
    micro-batches (or none). Every worker computes the whole plan, so each knows every
    step's token count (the loss normaliser) without communicating.

    Args:
        lengths: int ``[n]`` tokens of each training video (store order).
        the rest: the settings of :class:`lvmae.config.PretrainConfig`.

    Returns:
        ``steps[k][r]``: the micro-batches of worker ``r`` in step ``k``, each int64 ``[m, 3]``
        rows ``(video index, window start, window end)``; and int64 ``[len(steps)]``, the
        masked tokens the loss scores in each step over all workers.

    Raises:
        ValueError: ``world`` or ``accumulate`` below 1, or the errors of
            :func:`plan_token_batches` and :func:`sample_windows`.
    """
    if world < 1 or accumulate < 1:
        raise ValueError(f"world and accumulate must be >= 1, got {world} and {accumulate}")
    lengths = np.asarray(lengths, dtype=np.int64)
    rng = np.random.default_rng([int(seed) % 2**64, int(epoch), 7])
    order = rng.permutation(len(lengths)).astype(np.int64)
    starts, ends = sample_windows(lengths[order], max_tokens, rng, mode=mode,
                                  min_window_s=min_window_s, segment_s=segment_s)  # fmt: skip
    rows = np.stack([order, starts, ends], axis=1)
    micro = [rows[idx] for idx in plan_token_batches(ends - starts, batch_tokens, ratio)]
    per_step = world * accumulate
    steps, scored = [], []
    for k in range(0, len(micro), per_step):
        chunk = micro[k : k + per_step]
        steps.append([chunk[r::world] for r in range(world)])
        windows = np.concatenate([m[:, 2] - m[:, 1] for m in chunk])
        scored.append(int(scored_count(windows, ratio, decoder_fraction).sum()))
    return steps, np.asarray(scored, dtype=np.int64)


def step_batches(
    store: SequenceStore,
    plan: list[list[list[np.ndarray]]] | None = None,
    scored: np.ndarray | None = None,
    *,
    rank: int,
    world: int,
    skip: int = 0,
    videos: Iterator[dict[str, np.ndarray]] | None = None,
    accumulate: int = 1,
) -> Iterator[list[dict[str, np.ndarray]]]:
    """One worker's optimizer steps of an epoch, each a list of micro-batches read from
    ``store`` when reached (the first ``skip`` steps' micro-batches come without their
    ``embedding``, reading nothing: :meth:`SequenceStore.batch` with ``embedding=False``).

    Token budgets: from ``plan`` / ``scored`` (:func:`token_epoch_plan`); each micro-batch
    carries its windows (``start``, ``end`` int64 ``[B]``) and ``denom``, the step's scored
    tokens over all workers divided by ``world``. Windows of videos: from ``videos``
    (:func:`epoch_batches`, whose ``skip`` counts micro-batches: pass ``skip * accumulate``),
    grouped ``accumulate`` micro-batches per step (an incomplete last step is dropped, as the
    batches themselves are).
    """
    if plan is not None:
        for k, per_rank in enumerate(plan):
            out = []
            for rows in per_rank[rank]:
                batch = store.batch(rows[:, 0], embedding=k >= skip)
                batch["start"], batch["end"] = rows[:, 1], rows[:, 2]
                batch["denom"] = float(scored[k]) / world
                out.append(batch)
            yield out
        return
    group: list = []
    for batch in videos or ():
        group.append(batch)
        if len(group) == accumulate:
            yield group
            group = []
