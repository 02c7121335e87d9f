"""Reconstruction monitor (LV-MAE §4.4, Fig. 6): how recognisable are the reconstructed
masked segments?

For held-out videos, mask segments as in training, reconstruct them, and rank each masked
segment's true embedding among ALL real segment embeddings of the held-out set by cosine
similarity to its reconstruction: R@1 / R@5 / R@10 and the median rank
(:func:`lvmae.retrieval.ranks.retrieval_ranks`, which compares scores — the reference code's
helper once subtracted scores instead of indices). With a caption bank, the nearest caption
of each visible token and of each reconstruction, through the frozen encoder's aligned text
tower, shows what the model "thinks" the hidden segments are.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lvmae.mae.masking import make_mask
from lvmae.mae.sequences import collate
from lvmae.retrieval.index import normalize
from lvmae.retrieval.ranks import median_rank, recall_at_k, retrieval_ranks


@dataclass
class Reconstructions:
    """Masked-token reconstructions of a set of videos.

    Attributes:
        targets: ``[M, D]`` true embeddings of the masked tokens (L2-normalised).
        preds: ``[M, D]`` their reconstructions (L2-normalised).
        candidates: ``[N, D]`` every real token of the set (L2-normalised).
        target_index: ``[M]`` row of each masked token in ``candidates``.
        video: ``[M]`` video (position in the input list) of each masked token.
        position: ``[M]`` token index within its video.
        masks: per video, ``[L_i]`` bool, True where masked.
    """

    targets: np.ndarray
    preds: np.ndarray
    candidates: np.ndarray
    target_index: np.ndarray
    video: np.ndarray
    position: np.ndarray
    masks: list[np.ndarray]


@torch.no_grad()
def reconstruct(
    model,
    sequences: Sequence[np.ndarray],
    *,
    mask_ratio: float = 0.5,
    masking: str = "semantic",
    seed: int = 0,
    batch_size: int = 16,
) -> Reconstructions:
    """Mask and reconstruct each sequence (its first ``model.config.max_tokens`` tokens).

    Args:
        model: an :class:`lvmae.mae.model.LVMAE` (evaluated in eval mode, on its device).
        sequences: per video ``[L_i, D]`` segment embeddings, ``L_i >= 2``.
        mask_ratio, masking: as in pre-training (:func:`lvmae.mae.masking.make_mask`).
        seed: masking seed (the same masks every call).

    Raises:
        ValueError: no sequence with at least 2 tokens.
    """
    cap = model.config.max_tokens
    seqs = [np.asarray(s, np.float32)[:cap] for s in sequences]
    if not any(len(s) >= 2 for s in seqs):
        raise ValueError("the monitor needs videos of at least 2 segments")
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    targets, preds, vids, positions, masks = [], [], [], [], []
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start : start + batch_size]
        x_np, real_np = collate(chunk)
        x, real = torch.from_numpy(x_np), torch.from_numpy(real_np)
        mask = make_mask(masking, x, real, mask_ratio, gen)
        pred = model(x.to(device), real.to(device), mask.to(device)).float().cpu()
        b, t = torch.nonzero(mask, as_tuple=True)
        targets.append(x[b, t].numpy())
        preds.append(pred[b, t].numpy())
        vids.append(b.numpy() + start)
        positions.append(t.numpy())
        masks.extend(m[: len(s)].numpy() for m, s in zip(mask, chunk, strict=True))
    model.train(was_training)
    offsets = np.cumsum([0] + [len(s) for s in seqs])
    vid = np.concatenate(vids)
    pos = np.concatenate(positions)
    return Reconstructions(
        targets=normalize(np.concatenate(targets)),
        preds=normalize(np.concatenate(preds)),
        candidates=normalize(np.concatenate(seqs)),
        target_index=offsets[vid] + pos,
        video=vid,
        position=pos,
        masks=masks,
    )


def retrieval_metrics(rec: Reconstructions, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """R@k and median rank of the true segments among all candidates, by reconstruction;
    also the number of queries (masked tokens) and candidates."""
    ranks = retrieval_ranks(rec.preds, rec.candidates, rec.target_index)
    return {
        **recall_at_k(ranks, ks),
        "median_rank": median_rank(ranks),
        "queries": float(len(ranks)),
        "candidates": float(len(rec.candidates)),
    }


def caption_report_html(
    rec: Reconstructions,
    sequences: Sequence[np.ndarray],
    video_ids: Sequence[str],
    captions: Sequence[str],
    caption_embeddings: np.ndarray,
    *,
    videos: int = 3,
    segments: int = 16,
    segment_s: float = 5.0,
) -> str:
    """An HTML page in the spirit of the paper's Fig. 6: for the first ``segments``
    consecutive segments of ``videos`` videos, the nearest caption (cosine, aligned text
    space) of each visible token's embedding and of each masked token's reconstruction
    next to the caption nearest to its true embedding.

    Args:
        caption_embeddings: ``[C, D]`` ``encode_text(captions)``.
    """
    bank = normalize(caption_embeddings)

    def nearest(v: np.ndarray) -> str:
        return captions[int(np.argmax(bank @ normalize(v[None])[0]))]

    pairs = zip(rec.video.tolist(), rec.position.tolist(), strict=True)
    recon = {pair: rec.preds[i] for i, pair in enumerate(pairs)}
    parts = [
        "<html><head><meta charset='utf-8'><title>LV-MAE reconstruction monitor</title>",
        "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px}"
        ".m{background:#fde2e2}.v{background:#e2f0fd}</style></head><body>",
        "<h1>Nearest captions of visible and reconstructed segments</h1>",
        "<p>Blue: visible segment (caption of its embedding). Red: masked segment — caption "
        "of the reconstruction, and of the true embedding in brackets.</p>",
    ]
    for v in range(min(videos, len(sequences))):
        parts.append(f"<h2>{html.escape(video_ids[v])}</h2><table><tr><th>segment</th>"
                     "<th>time</th><th>caption</th></tr>")  # fmt: skip
        seq = np.asarray(sequences[v], np.float32)
        for t in range(min(segments, len(rec.masks[v]))):
            when = f"{t * segment_s:.0f}–{(t + 1) * segment_s:.0f} s"
            if rec.masks[v][t]:
                text = (f"{html.escape(nearest(recon[(v, t)]))} "
                        f"<i>[{html.escape(nearest(seq[t]))}]</i>")  # fmt: skip
                parts.append(f"<tr class='m'><td>{t} (masked)</td><td>{when}</td>"
                             f"<td>{text}</td></tr>")  # fmt: skip
            else:
                parts.append(f"<tr class='v'><td>{t}</td><td>{when}</td>"
                             f"<td>{html.escape(nearest(seq[t]))}</td></tr>")  # fmt: skip
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
