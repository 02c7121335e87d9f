"""Frozen multimodal video encoders: a short segment of frames → one L2-normalised embedding.

Stage 1 of LV-MAE (Naiman et al., ICCV 2025, §3 and §4 "Implementation details"): every
short segment of a long video is embedded by a frozen, off-the-shelf multimodal video
encoder — LanguageBind's video tower, 8 frames sampled uniformly per segment, 224 px,
CLIP mean/std. The paper uses ``LanguageBind/LanguageBind_Video_Huge_V1.5_FT`` (1024-d).

Three registry names (:mod:`lvmae.encoders.registry`: each entry names its ``describe`` and
``build`` functions; :func:`build_tiny` and :func:`build_languagebind` here), one interface
(:class:`FrozenEncoder`): ``encode`` (segments of frames →
``[B, D]``) and ``encode_text`` (strings → ``[N, D]`` in the same, aligned video–text space;
LanguageBind, Zhu et al., ICLR 2024). LV-MAE §4.4 uses that aligned text space to monitor
reconstructions (the captions nearest to a reconstructed embedding); ``lvmae search`` uses it
for text queries.

- ``tiny``: the same ``LanguageBindVideo`` architecture at toy width with weights drawn
  from a seed — no download, fast on CPU; for tests, demos and offline runs. Its text side
  is the model's own seeded text tower behind :class:`HashWordTokenizer` (offline, no vocab
  files).
- ``languagebind-video-ft``: ``LanguageBind/LanguageBind_Video_FT`` (ViT-L/14, 768-d).
- ``languagebind-video-huge``: ``LanguageBind/LanguageBind_Video_Huge_V1.5_FT``
  (ViT-H/14, 1024-d; the paper's encoder).

``import languagebind`` fails in modern environments (its package ``__init__`` pulls in
torchvision, torchaudio and pytorchvideo), so its video model files are imported under a
stand-in package module, lazily (:mod:`lvmae.encoders.specs`, which holds what the driver
needs without torch: the registry, the architectures and :func:`describe_encoder`; every
name is re-exported here). LanguageBind's own
processor is not used (it flips frames at random even at inference);
:func:`normalize_frames` is the deterministic replacement. Nothing here imports Ray.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import hashlib
import os
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lvmae.encoders.registry import ENCODER_NAMES, encoder_spec, resolve
from lvmae.encoders.specs import (
    DEFAULT_CHECKPOINTS,
    FRAMES_PER_SEGMENT,
    IMAGE_SIZE,
    TINY_ARCH,
    TINY_CHECKPOINT,
    VIT_H14_ARCH,
    VIT_L14_ARCH,
    EncoderUnavailableError,
    LanguageBindArch,
    _from_pretrained,
    _languagebind_video,
    check_model_dir,
    describe_encoder,
    tiny_seed,
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

PRECISIONS = ("bf16", "fp32")


__all__ = [
    "CLIP_MEAN", "CLIP_STD", "DEFAULT_CHECKPOINTS", "ENCODER_NAMES", "FRAMES_PER_SEGMENT",
    "IMAGE_SIZE", "PRECISIONS", "TINY_ARCH", "VIT_H14_ARCH", "VIT_L14_ARCH",
    "EncoderUnavailableError", "FrozenEncoder", "HashWordTokenizer", "LanguageBindArch",
    "LanguageBindEncoder", "build_encoder", "build_languagebind", "build_languagebind_random",
    "build_tiny", "default_device",
    "describe_encoder", "load_languagebind", "load_languagebind_tokenizer",
    "normalize_frames", "save_tiny_checkpoint",
]  # fmt: skip


def build_languagebind_random(arch: LanguageBindArch, *, seed: int = 0) -> nn.Module:
    """A ``LanguageBindVideo`` model of the given sizes with weights drawn from ``seed``.

    The weights come from LanguageBind's own initialiser under a forked RNG, so the global
    torch RNG is untouched and the same ``(arch, seed)`` gives bit-identical weights in every
    process. Built on CPU in float32, in train mode (wrap it in :class:`LanguageBindEncoder`).
    """
    model_cls, _ = _languagebind_video()
    config = arch.to_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_cls(config)


def save_tiny_checkpoint(directory: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Write the ``tiny`` model for ``seed`` as a Hugging Face checkpoint directory
    (``config.json`` + ``model.safetensors``), loadable like the hub checkpoints:
    ``build_encoder("languagebind-video-ft", checkpoint=directory)``.

    Returns:
        The directory, created if needed.
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    build_languagebind_random(TINY_ARCH, seed=seed).save_pretrained(path)
    return path


def load_languagebind(checkpoint: str) -> nn.Module:
    """Load a ``LanguageBindVideo`` checkpoint: a hub id (from the local hub cache, or
    downloaded when there is network) or a local directory written by ``save_pretrained``.

    Returns the model on CPU in float32.

    Raises:
        EncoderUnavailableError: the checkpoint cannot be found or read (a local directory
            without ``config.json`` or weights, unreadable weights); the message says how to
            provide it.
    """
    check_model_dir(checkpoint)
    model_cls, _ = _languagebind_video()
    # "sdpa" here raises on this model class; the sub-configs get it in LanguageBindEncoder.
    return _from_pretrained(model_cls, checkpoint, attn_implementation="eager")


TOKENIZER_FILES = ("vocab.json", "merges.txt")
"""The files a LanguageBind checkpoint's (CLIP BPE) tokenizer is read from."""


@functools.cache
def _languagebind_tokenizer_cls() -> type:
    """``LanguageBindVideoTokenizer`` (a slow ``CLIPTokenizer`` whose pad token is
    ``<|endoftext|>``), imported like :func:`_languagebind_video`."""
    _languagebind_video()  # installs the stand-in package module
    from languagebind.video.tokenization_video import LanguageBindVideoTokenizer

    return LanguageBindVideoTokenizer


def load_languagebind_tokenizer(checkpoint: str) -> Any:
    """Load the text tokenizer saved with a LanguageBind checkpoint (hub id or local
    directory; same cache / offline rules as :func:`load_languagebind`): a CLIP byte-level BPE
    tokenizer read from ``vocab.json`` + ``merges.txt``.

    Raises:
        EncoderUnavailableError: the checkpoint has no tokenizer files (the message names the
            checkpoint and the missing files) or cannot be found.
    """
    local = Path(checkpoint).expanduser()
    if local.is_dir():
        missing = [f for f in TOKENIZER_FILES if not (local / f).is_file()]
        if missing:
            raise EncoderUnavailableError(
                f"encoder checkpoint {checkpoint!r} has no text tokenizer: missing "
                f"{', '.join(missing)}; copy the tokenizer files of the checkpoint it was made "
                f"from into it (e.g. `tokenizer.save_pretrained(DIR)`)"
            )
    hint = f"the directory must hold the text tokenizer files ({', '.join(TOKENIZER_FILES)})"
    try:
        return _from_pretrained(_languagebind_tokenizer_cls(), checkpoint, local_hint=hint)
    except TypeError as exc:
        # the slow tokenizer is handed vocab_file=None when the files are neither in the repo
        # nor in the cache (transformers 4.5x raises no OSError for that, offline or not)
        raise EncoderUnavailableError(
            f"cannot load the text tokenizer of encoder checkpoint {checkpoint!r}: "
            f"{', '.join(TOKENIZER_FILES)} not found in the repository or the local Hugging "
            f"Face cache; download the checkpoint on a machine with network "
            f"(`huggingface-cli download {checkpoint} --local-dir DIR`) and pass DIR as the "
            f"checkpoint, or point HF_HOME at a cache that holds it ({exc})"
        ) from exc


class HashWordTokenizer:
    """The ``tiny`` encoder's offline tokenizer: no vocabulary files, stable in every process.

    NFKC-normalise and lower-case; split into words (runs of letters/digits) and single
    punctuation marks; map each to ``1 + sha1(word) mod (vocab_size - 3)``. A sequence is
    ``[BOS] words… [EOS]`` with ``BOS = vocab_size - 2`` and ``EOS = vocab_size - 1``, truncated
    to ``max_length`` (EOS kept) and right-padded with 0. EOS is the largest id, so the CLIP
    text transformer's pooling rule (the position of ``input_ids.argmax(-1)``) picks it, as
    it picks ``<|endoftext|>`` (the last id of the CLIP vocabulary) for real checkpoints.

    Args:
        vocab_size: the text tower's vocabulary size (at least 4).
        max_length: the text tower's ``max_position_embeddings`` (at least 2).
    """

    name = "hash-words-v1"
    _WORD = re.compile(r"[^\W_]+|[^\w\s]")

    def __init__(self, vocab_size: int, max_length: int) -> None:
        if vocab_size < 4 or max_length < 2:
            raise ValueError(
                f"need vocab_size >= 4 and max_length >= 2, got {vocab_size}, {max_length}"
            )
        self.vocab_size = int(vocab_size)
        self.max_length = int(max_length)
        self.pad_token_id = 0
        self.bos_token_id = self.vocab_size - 2
        self.eos_token_id = self.vocab_size - 1

    def words(self, text: str) -> list[str]:
        """The normalised words and punctuation marks of ``text``."""
        return self._WORD.findall(unicodedata.normalize("NFKC", text).lower())

    def token_id(self, word: str) -> int:
        """A word's id in ``[1, vocab_size - 2)``: the same in every process."""
        digest = hashlib.sha1(word.encode("utf-8")).digest()
        return 1 + int.from_bytes(digest[:8], "big") % (self.vocab_size - 3)

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{"input_ids", "attention_mask"}``: int64 ``[N, L]``, L the longest sequence."""
        keep = self.max_length - 2  # room for BOS and EOS
        bos, eos = self.bos_token_id, self.eos_token_id
        rows = [[bos, *[self.token_id(w) for w in self.words(t)][:keep], eos] for t in texts]
        width = max((len(r) for r in rows), default=2)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def __repr__(self) -> str:
        return f"HashWordTokenizer(vocab_size={self.vocab_size}, max_length={self.max_length})"


# ----------------------------------------------------------------------------------------
# frames


def normalize_frames(frames: torch.Tensor) -> torch.Tensor:
    """Pixels → encoder input: ``/255`` then CLIP mean/std, channels first.

    Deterministic: no flips, no crops — frames arrive already resized (short side 224) and
    centre-cropped by the decoder (paper §4: 224 px, CLIP normalisation).

    Args:
        frames: uint8 ``[B, T, H, W, 3]`` (RGB), on any device.

    Returns:
        float32 ``[B, 3, T, H, W]`` on the same device.

    Raises:
        ValueError: not uint8, or not ``[B, T, H, W, 3]``.
    """
    if frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
    if frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [B, T, H, W, 3], got shape {list(frames.shape)}")
    x = frames.permute(0, 4, 1, 2, 3).contiguous().to(torch.float32).div_(255.0)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32, device=x.device).view(1, 3, 1, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32, device=x.device).view(1, 3, 1, 1, 1)
    return x.sub_(mean).div_(std)


# ----------------------------------------------------------------------------------------
# encoders


TEXT_BATCH_SIZE = 64
"""Texts per forward pass of :meth:`FrozenEncoder.encode_text`."""


class FrozenEncoder(abc.ABC):
    """A frozen video encoder: segments of ``frames_per_segment`` RGB frames of
    ``image_size``² pixels → ``embedding_dim``-d L2-normalised embeddings (paper §3, stage 1),
    and strings → embeddings in the same aligned video–text space (:meth:`encode_text`).

    Attributes:
        name: registry name (one of :data:`ENCODER_NAMES`).
        checkpoint: hub id, local directory, or ``tiny-seed<N>``.
        embedding_dim: D.
        frames_per_segment: T (8 for every preset).
        image_size: H = W, pixels (224).
        device: where the model runs.
    """

    name: str
    checkpoint: str
    embedding_dim: int
    frames_per_segment: int
    image_size: int
    device: torch.device

    @abc.abstractmethod
    def encode(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        """Embed a batch of segments.

        Args:
            frames: uint8 ``[B, T, H, W, 3]`` RGB, numpy or torch (any device), with
                ``T == frames_per_segment`` and ``H == W == image_size``.

        Returns:
            float32 numpy ``[B, D]``, each row of unit L2 norm. No gradients.

        Raises:
            ValueError: wrong dtype, rank, channel count, T, H or W.
        """

    @abc.abstractmethod
    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Embed strings into the video embeddings' space (LanguageBind's text tower + text
        projection, aligned with the video tower by contrastive training; LanguageBind, Zhu et
        al., ICLR 2024). LV-MAE §4.4 retrieves the captions nearest to reconstructed segment
        embeddings in this space to monitor reconstructions.

        Args:
            texts: a sequence of N strings (not a bare ``str``); each is tokenized, truncated
                to the text tower's context length and embedded. Batched internally.

        Returns:
            float32 numpy ``[N, D]`` (D = :attr:`embedding_dim`, as :meth:`encode`), each row
            of unit L2 norm; ``[0, D]`` for no texts. No gradients.

        Raises:
            ValueError: ``texts`` is a bare string or holds a non-string, or an empty /
                whitespace-only string ("empty query", with its index).
            EncoderUnavailableError: the checkpoint's tokenizer cannot be loaded.
        """

    @abc.abstractmethod
    def identity(self) -> dict[str, Any]:
        """JSON-able description that tells whether two runs' embeddings are comparable:
        ``name``, ``checkpoint``, ``embedding_dim``, ``frames_per_segment``, ``image_size``,
        ``dtype``, ``weights_sha1`` (a fingerprint of a few video-tower weight tensors) and
        ``text_weights_sha1`` (the same for the text tower used by :meth:`encode_text`)."""

    @staticmethod
    def _check_texts(texts: Sequence[str]) -> list[str]:
        """``texts`` as a list of non-blank strings; ValueError otherwise."""
        if isinstance(texts, str):
            raise ValueError(
                f"texts must be a sequence of strings, got the string {texts[:40]!r}; "
                f"wrap it in a list"
            )
        out = list(texts)
        for i, t in enumerate(out):
            if not isinstance(t, str):
                raise ValueError(f"texts[{i}] must be a string, got {type(t).__name__}")
            if not t.strip():
                raise ValueError(f"empty query: texts[{i}] = {t!r} has no words to embed")
        return out

    def _check_frames(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``frames`` as a uint8 torch tensor ``[B, T, H, W, 3]``; ValueError if malformed."""
        if isinstance(frames, np.ndarray):
            if not frames.flags.writeable:  # e.g. Arrow-backed batches; torch wants writable
                frames = frames.copy()
            frames = torch.from_numpy(frames)
        elif not isinstance(frames, torch.Tensor):
            raise ValueError(f"frames must be a numpy array or torch tensor, got {type(frames)}")
        if frames.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
        if frames.ndim != 5 or frames.shape[-1] != 3:
            raise ValueError(
                f"frames must be [B, T, H, W, 3] (segments, frames, height, width, RGB), "
                f"got shape {list(frames.shape)}"
            )
        t, h, w = frames.shape[1:4]
        if t != self.frames_per_segment:
            raise ValueError(
                f"encoder {self.name!r} takes {self.frames_per_segment} frames per segment, "
                f"got T={t} (shape {list(frames.shape)}); set frames_per_segment to "
                f"{self.frames_per_segment}"
            )
        if h != self.image_size or w != self.image_size:
            raise ValueError(
                f"encoder {self.name!r} takes {self.image_size}x{self.image_size} frames, got "
                f"H={h}, W={w}; resize the short side to {self.image_size} and centre-crop"
            )
        return frames


class LanguageBindEncoder(FrozenEncoder):
    """A ``LanguageBindVideo`` model's video tower + visual projection and text tower + text
    projection, frozen.

    ``embedding = normalize(visual_projection(mean_t(post_layernorm(CLS_t))))`` — the pooled
    output LanguageBind's own ``get_image_features`` returns for video, then L2-normalised.
    ``text embedding = normalize(text_projection(final_layer_norm(h)[EOS]))`` — its
    ``get_text_features``, the EOS position being ``input_ids.argmax(-1)``.
    On CUDA it runs under bf16 autocast by default (``precision="bf16"``) and returns float32.

    Args:
        model: a ``LanguageBindVideo`` (see :func:`load_languagebind`,
            :func:`build_languagebind_random`); put in eval mode, frozen and moved to ``device``.
        name, checkpoint: reported by :meth:`identity`.
        device: torch device.
        precision: ``"bf16"`` (autocast) or ``"fp32"``; default bf16 on CUDA, fp32 elsewhere.
        tokenizer: callable for :meth:`encode_text`; default: a :class:`HashWordTokenizer`
            for a ``tiny-seed<N>`` checkpoint, else the checkpoint's own tokenizer
            (:func:`load_languagebind_tokenizer`), loaded on the first ``encode_text``.

    Raises:
        ValueError: the model is not a video model for ``FRAMES_PER_SEGMENT`` frames of
            ``IMAGE_SIZE`` px, or ``precision`` is unknown.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        checkpoint: str,
        device: str | torch.device = "cpu",
        precision: str | None = None,
        tokenizer: Any | None = None,
    ) -> None:
        vision = model.config.vision_config
        if not getattr(vision, "add_time_attn", False):
            raise ValueError(
                f"checkpoint {checkpoint!r} is not a LanguageBind video model "
                f"(vision_config.add_time_attn is not set)"
            )
        if vision.num_frames != FRAMES_PER_SEGMENT:
            raise ValueError(
                f"checkpoint {checkpoint!r} takes {vision.num_frames} frames per segment; "
                f"the {name!r} encoder samples {FRAMES_PER_SEGMENT} (paper §4)"
            )
        if vision.image_size != IMAGE_SIZE:
            raise ValueError(
                f"checkpoint {checkpoint!r} takes {vision.image_size} px frames; "
                f"the {name!r} encoder uses {IMAGE_SIZE} px (paper §4)"
            )
        self.device = torch.device(device)
        if precision is None:
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        # transformers 4.5x leaves the sub-configs' attention backend unset (KeyError: None in
        # forward); CLIP attention supports SDPA.
        for sub in (model.config.vision_config, model.config.text_config):
            sub._attn_implementation = "sdpa"
        model.eval().requires_grad_(False)
        self.weights_sha1 = _weights_sha1(model.vision_model, model.visual_projection)
        self.text_weights_sha1 = _weights_sha1(model.text_model, model.text_projection)
        self.model = model.to(self.device)
        text = model.config.text_config
        self.text_max_length = int(text.max_position_embeddings)
        if tokenizer is None and TINY_CHECKPOINT.fullmatch(checkpoint):
            tokenizer = HashWordTokenizer(int(text.vocab_size), self.text_max_length)
        self._tokenizer = tokenizer
        self.name = name
        self.checkpoint = checkpoint
        self.embedding_dim = int(model.visual_projection.out_features)
        self.frames_per_segment = int(vision.num_frames)
        self.image_size = int(vision.image_size)
        self.revision = getattr(model.config, "_commit_hash", None)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def encode(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        """Embed a batch of segments (see :meth:`FrozenEncoder.encode`): uint8
        ``[B, T, H, W, 3]`` → float32 numpy ``[B, D]``, unit rows."""
        x = self._check_frames(frames)
        if x.shape[0] == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        pixels = normalize_frames(x.to(self.device, non_blocking=True))  # [B, 3, T, H, W]
        with torch.inference_mode(), self._autocast():
            pooled = self.model.vision_model(pixel_values=pixels)[1]  # [B, hidden], mean over T
            emb = self.model.visual_projection(pooled)  # [B, D]
        emb = F.normalize(emb.float(), dim=-1)
        return emb.cpu().numpy()

    @property
    def tokenizer(self) -> Any:
        """The text tokenizer, loaded from the checkpoint on first use.

        Raises:
            EncoderUnavailableError: the checkpoint has no tokenizer files.
        """
        if self._tokenizer is None:
            self._tokenizer = load_languagebind_tokenizer(self.checkpoint)
        return self._tokenizer

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        if isinstance(tok, HashWordTokenizer):
            return tok(texts)
        out = tok(
            texts,
            padding="longest",
            truncation=True,
            max_length=self.text_max_length,
            return_tensors="pt",
        )
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Embed strings (see :meth:`FrozenEncoder.encode_text`): N strings → float32 numpy
        ``[N, D]``, unit rows, in the space of :meth:`encode`. Each batch of
        :data:`TEXT_BATCH_SIZE` is padded to its longest sequence; the attention mask is passed
        and the EOS position pooled, so a text's vector does not depend on its batch-mates."""
        items = self._check_texts(texts)
        if not items:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        out = []
        for start in range(0, len(items), TEXT_BATCH_SIZE):
            batch = self._tokenize(items[start : start + TEXT_BATCH_SIZE])
            ids = batch["input_ids"].to(self.device)
            mask = batch["attention_mask"].to(self.device)
            with torch.inference_mode(), self._autocast():
                pooled = self.model.text_model(input_ids=ids, attention_mask=mask)[1]  # [n, h]
                emb = self.model.text_projection(pooled)  # [n, D]
            out.append(F.normalize(emb.float(), dim=-1).cpu())
        return torch.cat(out).numpy()

    def identity(self) -> dict[str, Any]:
        """See :meth:`FrozenEncoder.identity`; adds ``revision`` (the hub commit, or None)."""
        return {
            "name": self.name,
            "checkpoint": self.checkpoint,
            "revision": self.revision,
            "embedding_dim": self.embedding_dim,
            "frames_per_segment": self.frames_per_segment,
            "image_size": self.image_size,
            "dtype": "bfloat16" if self.precision == "bf16" else "float32",
            "weights_sha1": self.weights_sha1,
            "text_weights_sha1": self.text_weights_sha1,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, checkpoint={self.checkpoint!r}, "
            f"D={self.embedding_dim}, device={self.device}, precision={self.precision})"
        )


def _weights_sha1(tower: nn.Module, projection: nn.Linear) -> str:
    """sha1 (first 16 hex digits) over the shapes and float32 bytes of a few of ``tower``'s
    tensors and ``projection``'s weight (the vision tower and visual projection, or the text
    tower and text projection): cheap, and different for any two real checkpoints."""
    params = list(tower.parameters())
    picked = [params[0], params[len(params) // 2], params[-1], projection.weight]
    digest = hashlib.sha1()
    for p in picked:
        t = p.detach().to("cpu", torch.float32).contiguous()
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()[:16]


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_encoder(
    name: str,
    *,
    checkpoint: str | None = None,
    device: str | None = None,
    seed: int = 0,
    precision: str | None = None,
) -> FrozenEncoder:
    """Build a frozen encoder by registry name (paper §3, stage 1; docs/design.md, "What
    LV-MAE does").

    Args:
        name: one of :data:`ENCODER_NAMES`.
        checkpoint: LanguageBind presets: a hub id or a local ``save_pretrained`` directory
            (default: the registry's, :data:`DEFAULT_CHECKPOINTS`); D comes from the loaded
            config. ``tiny``: ``tiny-seed<N>`` (sets the seed) or None.
        device: torch device; default ``"cuda"`` if available, else ``"cpu"``.
        seed: weights seed of ``tiny`` (same seed → bit-identical weights in every process);
            ignored by the LanguageBind presets.
        precision: ``"bf16"`` (autocast) or ``"fp32"``; default bf16 on CUDA, fp32 elsewhere.

    Raises:
        ValueError: unknown name (the message lists the valid ones), a ``tiny`` checkpoint
            that is not ``tiny-seed<N>`` or disagrees with ``seed``, or a checkpoint that is not
            an 8-frame, 224-px video model.
        EncoderUnavailableError: the checkpoint cannot be loaded (offline with no local copy,
            a bad directory); the message says how to provide it.
    """
    build = resolve(encoder_spec(name).build)  # imports the builder's module on first use
    device = device or default_device()
    return build(name, checkpoint, device=device, seed=seed, precision=precision)


def build_tiny(
    name: str, checkpoint: str | None, *, device: str, seed: int, precision: str | None
) -> FrozenEncoder:
    """The ``tiny`` encoder (registry builder): :data:`TINY_ARCH` with weights drawn from
    ``seed``; ``checkpoint`` is None or ``tiny-seed<N>`` (which sets the seed).

    Raises:
        ValueError: any other checkpoint, or one that disagrees with a non-zero ``seed``.
    """
    seed = tiny_seed(checkpoint, seed)
    model = build_languagebind_random(TINY_ARCH, seed=seed)
    return LanguageBindEncoder(
        model, name=name, checkpoint=f"tiny-seed{seed}", device=device, precision=precision
    )


def build_languagebind(
    name: str, checkpoint: str | None, *, device: str, seed: int, precision: str | None
) -> FrozenEncoder:
    """A LanguageBind preset (registry builder): ``checkpoint`` (default: the registry's for
    ``name``) loaded by :func:`load_languagebind`; ``seed`` is unused."""
    checkpoint = checkpoint or encoder_spec(name).checkpoint
    model = load_languagebind(checkpoint)
    return LanguageBindEncoder(
        model, name=name, checkpoint=checkpoint, device=device, precision=precision
    )
