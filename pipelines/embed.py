"""Per-video representations from a pre-trained LV-MAE encoder, for whole videos of any
length (Naiman et al., ICCV 2025, §3.4: the frozen encoder's outputs feed the probes).

A video longer than the token cap is split into consecutive windows of at most
``max_tokens`` tokens; each window is encoded without masking. Per video:

- ``cls``: the windows' [CLS] outputs averaged, weighted by window length, ``[W]``;
- ``mean``: the mean of the encoder outputs over all real tokens, ``[W]`` (the linear
  probe's input).

Written as Parquet under ``<out>/representations/``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from lvmae.mae.checkpoints import CheckpointError, load_checkpoint
from lvmae.mae.model import LVMAE, LVMAEConfig
from lvmae.mae.sequences import collate, windows_for_inference
from lvmae.storage import StorageError
from pipelines.pretrain import embedding_dim_of, video_sequences

log = logging.getLogger(__name__)

REPRESENTATIONS_DIR = "representations"


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


def encoded_videos(
    ckpt: Path,
    embeddings: str,
    *,
    with_tokens: bool = False,
    batch_size: int = 8,
    actors: int = 1,
    use_gpu: bool = False,
):
    """A lazy Ray Dataset of per-video encoder outputs (:class:`EmbedVideos`) for every video
    under ``embeddings``: sequences grouped on the cluster, encoded on an actor pool.

    Raises:
        StorageError: missing embeddings, or a width the checkpoint was not trained on
            (checked before any work).
    """
    import ray
    from ray.data import ActorPoolStrategy, DataContext

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
        EmbedVideos,
        fn_constructor_kwargs={"checkpoint": str(ckpt), "with_tokens": with_tokens},
        batch_size=batch_size,
        compute=ActorPoolStrategy(size=actors),
        num_gpus=1 if use_gpu else 0,
    )


@dataclass
class EmbedResult:
    """Where the representations went and how many videos they cover."""

    path: str
    videos: int


def run_embed(
    checkpoint: str,
    embeddings: str,
    out: str,
    *,
    batch_size: int = 8,
    actors: int = 1,
    use_gpu: bool = False,
) -> EmbedResult:
    """Encode every video under ``embeddings`` with the checkpoint's encoder into
    ``<out>/representations/*.parquet`` (``video_id``, ``num_tokens``, ``num_windows``,
    ``cls`` ``[W]``, ``mean`` ``[W]`` float32).

    Raises:
        CheckpointError: unreadable checkpoint.
        StorageError: missing embeddings, or an embedding width the checkpoint was not
            trained on (checked before any work).
    """
    ckpt = resolve_checkpoint(checkpoint)
    reps = encoded_videos(ckpt, embeddings, batch_size=batch_size, actors=actors, use_gpu=use_gpu)
    target = f"{out.rstrip('/')}/{REPRESENTATIONS_DIR}"
    reps.write_parquet(target)
    count = pa.dataset.dataset(target, format="parquet").count_rows()
    return EmbedResult(target, count)
