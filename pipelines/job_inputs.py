"""What several jobs read from an extraction, resolved one way for all of them:
its embedding width, its segments grouped into per-video sequences on the cluster, a
pre-trained LV-MAE checkpoint and the per-video encoder outputs it gives, and the frozen
encoder's text tower. The jobs (:mod:`pipelines.pretrain`, :mod:`pipelines.embed`,
:mod:`pipelines.probe`, :mod:`pipelines.search`, :mod:`pipelines.monitor`) import these from
here, never from each other."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from lvmae.encoders.models import build_encoder
from lvmae.mae.checkpoints import (
    MODEL_FILE,
    CheckpointError,
    load_checkpoint,
    read_checkpoint_config,
)
from lvmae.mae.model import LVMAE, LVMAEConfig
from lvmae.mae.sequences import collate, sequence_table, windows_for_inference
from lvmae.storage import (
    SEGMENTS_DIR,
    StorageError,
    arrow_fs,
    keep_last,
    read_manifest,
    segments_bytes,
)

log = logging.getLogger(__name__)


def embedding_dim_of(embeddings: str) -> int:
    """The embedding width D of the segments table under ``embeddings`` (a local path or
    an object-store URI, read with :func:`lvmae.storage.arrow_fs`: the process's endpoint
    and retries), read from every Parquet file's footer (no data read).

    Raises:
        StorageError: no segments, a file that is not a segments Parquet file, files with
            different embedding widths, or storage that cannot be read (the OS's or the
            object store's error, named).
    """
    seg_dir = f"{embeddings.rstrip('/')}/{SEGMENTS_DIR}"
    try:
        fs, path = arrow_fs(seg_dir)
        found = fs.get_file_info(path).type == pafs.FileType.Directory
    except (pa.ArrowException, OSError) as exc:
        raise StorageError(f"cannot read {seg_dir}/: {_first_line(exc)}") from exc
    if not found:
        raise StorageError(
            f"no segment embeddings under {embeddings!r}: expected Parquet files in {seg_dir}/ "
            f"(run `lvmae extract INPUT --out {embeddings}` first)"
        )
    try:
        dataset = pads.dataset(path, filesystem=fs, format="parquet")
    except OSError as exc:  # storage, not the files' content (pyarrow's ArrowIOError too)
        raise StorageError(f"cannot read {seg_dir}/: {_first_line(exc)}") from exc
    except pa.ArrowException as exc:
        raise StorageError(
            f"{seg_dir}/ holds a file that is not a segments Parquet file written by "
            f"`lvmae extract` ({_first_line(exc)}); remove it"
        ) from exc
    if not dataset.files:
        raise StorageError(f"{seg_dir}/ holds no Parquet files (an empty or failed extraction?)")
    dims: dict[int, str] = {}
    for fragment in dataset.get_fragments():
        try:
            field = fragment.physical_schema.field("embedding")
        except OSError as exc:
            raise StorageError(f"cannot read {fragment.path}: {_first_line(exc)}") from exc
        except (pa.ArrowException, KeyError) as exc:
            raise StorageError(
                f"{fragment.path}: not a segments Parquet file written by `lvmae extract` "
                f"({_first_line(exc)}); remove it"
            ) from exc
        dims.setdefault(field.type.list_size, fragment.path)
    if len(dims) > 1:
        listing = ", ".join(f"D={d} (e.g. {p})" for d, p in sorted(dims.items()))
        raise StorageError(
            f"{seg_dir}/ mixes embedding widths: {listing}. Pre-train on one encoder's "
            f"output: extract each encoder into its own --out directory."
        )
    return next(iter(dims))


def _first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (at most 300 characters), else its type."""
    return str(exc).splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


SORT_SHUFFLE_MAX_BYTES = 1 << 30  # segment Parquet below this: sort-based shuffle
PARTITION_BYTES = 256 << 20  # above it: one hash-shuffle partition per this many bytes


def video_sequences(embeddings: str):
    """The segments table under ``embeddings`` grouped into one row per video
    (:func:`lvmae.mae.sequences.sequence_table`: ``video_id``, ``length``, ``embedding``
    flattened), as a lazy Ray Dataset; the grouping runs on the cluster.

    The shuffle is sized to the table (its Parquet bytes): below
    :data:`SORT_SHUFFLE_MAX_BYTES` Ray Data's sort-based shuffle, on the task workers
    already running (its default, hash-partitioning shuffle starts new aggregator actors
    for every groupby: 9-11 s against 3-5 s for the sort on an 18-video table, 2 CPUs);
    above it the default shuffle with one partition per :data:`PARTITION_BYTES` (at most
    200, its default). Only this dataset's context is changed, not the session's. Before
    planning it reads only a file listing, and raises nothing itself: callers check the
    table first (:func:`embedding_dim_of`)."""
    import ray
    from ray.data.context import ShuffleStrategy

    # select_columns after the read (pushed down into it), not read_parquet(columns=...),
    # which Ray 2.60 deprecates; each row's file path orders rerun duplicates (write order)
    fs, path = arrow_fs(f"{embeddings.rstrip('/')}/{SEGMENTS_DIR}")
    ds = ray.data.read_parquet(path, filesystem=fs, include_paths=True).select_columns(
        ["video_id", "segment_index", "embedding", "path"]
    )
    size = segments_bytes(embeddings)
    partitions = None
    if size < SORT_SHUFFLE_MAX_BYTES:
        ds.context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    else:
        partitions = min(200, -(-size // PARTITION_BYTES))
    return ds.groupby("video_id", num_partitions=partitions).map_groups(
        _latest_sequences, batch_format="pyarrow"
    )


def _latest_sequences(group: pa.Table) -> pa.Table:
    """:func:`sequence_table` of ``group``'s segment rows, each ``(video_id,
    segment_index)`` from the last file written that holds it (files sort by ``path`` in
    write order, :func:`lvmae.storage.write_table_atomic`), as
    :func:`lvmae.storage.read_segments` keeps it after an ``--overwrite``."""
    group = keep_last(group.sort_by("path"), ["video_id", "segment_index"])
    return sequence_table(group.drop_columns(["path"]))


def resolve_checkpoint(path: str) -> Path:
    """A checkpoint directory from ``path``: the directory itself when it holds
    ``config.json``, else the newest ``checkpoint_*`` below it (a pre-training run
    directory, ``<out>/runs/<run_name>``).

    Raises:
        CheckpointError: nothing that looks like a checkpoint is there.
    """
    p = Path(path)
    if (p / "config.json").is_file():
        return p
    if p.is_dir():
        found = sorted(
            (c for c in p.rglob("checkpoint_*") if (c / "config.json").is_file()),
            key=lambda c: c.stat().st_mtime,
        )
        if found:
            return found[-1]
    raise CheckpointError(
        f"no LV-MAE checkpoint at {path!r}: give a checkpoint directory (with config.json, "
        f"model.pt, train_state.pt) or a pre-training run directory (<out>/runs/<run_name>)"
    )


def check_checkpoint_inputs(checkpoint: str, embeddings: str) -> Path:
    """What a job on a pre-trained checkpoint checks before any work (before Ray starts):
    the checkpoint resolves and its config reads, and the embeddings exist with the width
    it was trained on (no tensor is loaded). Returns the checkpoint directory.

    Raises:
        CheckpointError: no readable checkpoint at ``checkpoint`` (``--checkpoint``).
        StorageError: no segment embeddings under ``embeddings``, or another width.
    """
    ckpt = resolve_checkpoint(checkpoint)
    trained = read_checkpoint_config(ckpt)["model_config"].get("input_dim")
    dim = embedding_dim_of(embeddings)
    if trained is not None and dim != trained:
        raise StorageError(
            f"--embeddings {embeddings}: holds {dim}-d embeddings but the checkpoint "
            f"{str(ckpt)!r} was trained on {trained}-d ones: use the encoder it was trained on"
        )
    return ckpt


class EmbedVideos:
    """Ray Data actor: loads the checkpoint once; maps batches of sequences (``video_id``,
    ``length``, flattened ``embedding``) to ``cls``/``mean`` representations, and with
    ``with_tokens`` also every token's output (``tokens``: flattened ``[L * W]``, the
    windows' outputs concatenated in time order — the attentive probes' input)."""

    def __init__(
        self, checkpoint: str, device: str | None = None, with_tokens: bool = False
    ) -> None:
        import torch

        state = load_checkpoint(checkpoint)
        self.config = LVMAEConfig.from_dict(state["model_config"])
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = LVMAE(self.config)
        self.model.load_state_dict(state["model_state"])
        self.model.eval().to(self.device)
        self.with_tokens = with_tokens

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        import torch

        dim, cap = self.config.input_dim, self.config.max_tokens
        windows, owners = [], []
        for i, (flat, length) in enumerate(zip(batch["embedding"], batch["length"], strict=True)):
            seq = np.asarray(flat, dtype=np.float32).reshape(int(length), dim)
            for start, end in windows_for_inference(len(seq), cap):
                windows.append(seq[start:end])
                owners.append(i)
        n = len(batch["length"])
        width = self.config.width
        cls_sum = np.zeros((n, width), np.float64)
        tok_sum = np.zeros((n, width), np.float64)
        counts = np.zeros(n, np.float64)
        n_windows = np.zeros(n, np.int32)
        owners_arr = np.asarray(owners)
        token_parts: list[list[np.ndarray]] = [[] for _ in range(n)]
        for s in range(0, len(windows), 32):
            x, real = collate(windows[s : s + 32], cap)
            with torch.no_grad():
                cls, tokens = self.model.encode(
                    torch.from_numpy(x).to(self.device), torch.from_numpy(real).to(self.device)
                )
            cls, tokens = cls.float().cpu().numpy(), tokens.float().cpu().numpy()
            lengths = real.sum(1).astype(np.float64)
            own = owners_arr[s : s + 32]
            np.add.at(cls_sum, own, cls * lengths[:, None])
            np.add.at(tok_sum, own, (tokens * real[..., None]).sum(1))
            np.add.at(counts, own, lengths)
            np.add.at(n_windows, own, 1)
            if self.with_tokens:
                for k, owner in enumerate(own):
                    token_parts[owner].append(tokens[k, : int(lengths[k])])

        def fixed(rows: np.ndarray) -> pa.FixedSizeListArray:
            return pa.FixedSizeListArray.from_arrays(pa.array(rows.ravel()), width)

        columns = {
            "video_id": pa.array([str(v) for v in batch["video_id"]], pa.string()),
            "num_tokens": pa.array(counts.astype(np.int32)),
            "num_windows": pa.array(n_windows),
            "cls": fixed((cls_sum / counts[:, None]).astype(np.float32)),
            "mean": fixed((tok_sum / counts[:, None]).astype(np.float32)),
        }
        if self.with_tokens:  # ragged: one flattened [L_i * W] list per video
            columns["tokens"] = pa.array(
                [np.concatenate(parts).astype(np.float32).ravel() for parts in token_parts],
                pa.list_(pa.float32()),
            )
        return pa.table(columns)


@functools.lru_cache(maxsize=2)
def _embedder(checkpoint: str, with_tokens: bool, stamp: int) -> EmbedVideos:
    """The :class:`EmbedVideos` of ``checkpoint`` for this process; ``stamp`` (the weights
    file's mtime) keys it to the weights' version."""
    return EmbedVideos(checkpoint, with_tokens=with_tokens)


def embed_videos(batch: dict[str, np.ndarray], *, checkpoint: str, with_tokens: bool) -> pa.Table:
    """Ray Data task function: :class:`EmbedVideos` of ``checkpoint`` (built once per worker
    process) on one batch of per-video sequences."""
    stamp = (Path(checkpoint) / MODEL_FILE).stat().st_mtime_ns
    return _embedder(checkpoint, with_tokens, stamp)(batch)


def encoded_videos(
    ckpt: Path,
    embeddings: str,
    *,
    with_tokens: bool = False,
    batch_size: int = 8,
    actors: int = 1,
    use_gpu: bool = False,
):
    """A lazy Ray Dataset of per-video encoder outputs (:class:`EmbedVideos`, through
    :func:`embed_videos`) for every video under ``embeddings``: sequences grouped on the
    cluster, encoded by Ray tasks, at most ``actors`` at once, each holding a GPU when
    ``use_gpu``.

    Tasks, not an actor pool: Ray Data hands its map function to every pool actor as an
    object-store argument and asks for endless restarts, and Ray logs an ERROR that such
    restarts can fail (ray-project/ray#53727) for every pool; turning the restarts off needs
    an argument Ray Data deprecates (docs/design.md, "A quiet console"). A task that fails
    is retried. The model is built once per worker process (a CPU worker serves many
    tasks; Ray gives every GPU task a fresh process by default).

    Raises:
        StorageError: missing embeddings, or a width the checkpoint was not trained on
            (checked before any work).
    """
    import ray
    from ray.data import DataContext, TaskPoolStrategy

    trained_dim = load_checkpoint(ckpt)["model_config"]["input_dim"]
    dim = embedding_dim_of(embeddings)
    if dim != trained_dim:
        raise StorageError(
            f"the checkpoint {str(ckpt)!r} was trained on {trained_dim}-d embeddings but "
            f"{embeddings!r} holds {dim}-d ones: use the encoder it was trained on"
        )
    if not ray.is_initialized():
        ray.init(configure_logging=True, logging_level=logging.WARNING)
    DataContext.get_current().enable_progress_bars = False
    seqs = video_sequences(embeddings)
    return seqs.map_batches(
        embed_videos,
        fn_kwargs={"checkpoint": str(ckpt), "with_tokens": with_tokens},
        batch_size=batch_size,
        compute=TaskPoolStrategy(size=actors),
        num_gpus=1 if use_gpu else 0,
    )


def text_encoder(embeddings: str):
    """The frozen encoder that made ``embeddings`` (from its manifest), for text queries."""

    manifest = read_manifest(embeddings)
    if not manifest or "encoder" not in manifest:
        raise StorageError(
            f"{embeddings!r} has no manifest.json naming its encoder: was it written by "
            f"`lvmae extract`?"
        )
    enc = manifest["encoder"]
    cfg = manifest.get("config", {})
    # the checkpoint the manifest names, tiny's included (tiny-seed<N> names its weights)
    return build_encoder(enc["name"], checkpoint=enc.get("checkpoint"),
                         seed=cfg.get("encoder_seed", 0))  # fmt: skip
