"""The registry of frozen encoders: each name's default checkpoint and where its code lives,
as plain data (docs/design.md "Plug-ins").

Nothing here imports torch or any project module but :mod:`lvmae.errors`, so
:mod:`lvmae.config` takes the encoder names it accepts from :data:`ENCODERS`, and the
extraction driver can look an encoder up without loading a model. Each entry names two
functions by ``"module:function"``:

- ``describe(name, checkpoint, seed) -> dict``: what the encoder would produce
  (``name``, ``checkpoint``, ``embedding_dim``, ``frames_per_segment``, ``image_size``)
  without its weights; its module must import without torch (the driver calls it);
- ``build(name, checkpoint, *, device, seed, precision) -> FrozenEncoder``: the model
  (:class:`lvmae.encoders.models.FrozenEncoder`), loaded on ``device``.

``checkpoint`` is None when the caller gives none (the entry's ``checkpoint`` is the
default). Adding an encoder: a module under ``lvmae/encoders/`` with those two functions,
and one entry here; another LanguageBind checkpoint is an entry alone.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from lvmae.errors import UnknownNameError

__all__ = ["ENCODERS", "ENCODER_NAMES", "EncoderSpec", "encoder_spec", "resolve"]


@dataclass(frozen=True)
class EncoderSpec:
    """One frozen encoder.

    Attributes:
        checkpoint: the default checkpoint (a Hugging Face hub id, or ``tiny-seed0``).
        describe: ``"module:function"`` of its torch-free description.
        build: ``"module:function"`` of its builder (torch).
    """

    checkpoint: str
    describe: str
    build: str


_LANGUAGEBIND = {
    "describe": "lvmae.encoders.specs:describe_languagebind",
    "build": "lvmae.encoders.models:build_languagebind",
}

ENCODERS: Mapping[str, EncoderSpec] = MappingProxyType(
    {
        # LanguageBind's architecture at toy width, weights from a seed: tests, demos, offline.
        "tiny": EncoderSpec(
            "tiny-seed0",
            describe="lvmae.encoders.specs:describe_tiny",
            build="lvmae.encoders.models:build_tiny",
        ),
        # ViT-L/14 video tower, 768-d.
        "languagebind-video-ft": EncoderSpec("LanguageBind/LanguageBind_Video_FT", **_LANGUAGEBIND),
        # ViT-H/14, 1024-d: the paper's encoder.
        "languagebind-video-huge": EncoderSpec(
            "LanguageBind/LanguageBind_Video_Huge_V1.5_FT", **_LANGUAGEBIND
        ),
    }
)
"""Encoder name → :class:`EncoderSpec`."""

ENCODER_NAMES: tuple[str, ...] = tuple(ENCODERS)
"""The known encoders' names."""


def encoder_spec(name: str) -> EncoderSpec:
    """The registry entry of ``name``.

    Raises:
        UnknownNameError (a ``ValueError``): an unknown name; the message lists the known
            ones.
    """
    if name not in ENCODERS:
        raise UnknownNameError("encoder", name, ENCODER_NAMES)
    return ENCODERS[name]


def resolve(path: str) -> Callable[..., Any]:
    """The function a ``"module:function"`` path names, its module imported on first use."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)
