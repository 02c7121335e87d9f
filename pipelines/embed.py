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

import pyarrow as pa

from pipelines.job_inputs import encoded_videos, resolve_checkpoint

log = logging.getLogger(__name__)

REPRESENTATIONS_DIR = "representations"


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
