"""Which decoder reads a video: ``extract.decoder`` resolved where the video is decoded.

``decord`` and ``pyav`` are CPU decoders and are used as asked. ``nvdec`` is the GPU's video
decoding engine (NVIDIA NVDEC, through torchcodec on a CUDA device or PyNvVideoCodec); it can
only decode where the process holds a GPU, the driver exposes ``libnvcuvid``, one of those
packages is installed and the GPU decodes the video's codec. ``auto`` takes NVDEC when all of
that holds and the CPU decoder otherwise, with the reason, which the videos table records per
video (``decoder_reason``; docs/design.md "Decoding on the GPU").

Hardware facts (NVIDIA's Video Codec SDK support matrix): NVDEC decodes H.264, HEVC, VP8, VP9,
MPEG-1/2/4 and VC-1 on every data-centre GPU since Pascal; AV1 on Ampere and Ada
(compute capability 8.x) and Blackwell (10.x, 12.x), but not on Hopper (9.0: H100, H200),
which has no AV1 decoder.

Nothing here imports torch or Ray: the GPUs a worker holds are passed in (Ray's accounting:
``ray.get_runtime_context().get_accelerator_ids()["GPU"]``), and the compute capability is
read through PyTorch only when every cheaper condition holds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.util
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from lvmae.video.decoding import DecodeError

CPU_FALLBACK = "pyav"
"""The decoder ``auto`` uses when NVDEC cannot decode a video (``decode_mode: fast``
still reads with PyAV skipping frames, as for every decoder)."""

NVDEC_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "mpeg1video", "mpeg2video", "mpeg4",
                          "vc1", "av1"})  # fmt: skip
"""Codecs (FFmpeg names) that some NVDEC generation decodes; AV1 needs a newer GPU than
Turing and is missing on Hopper (:func:`nvdec_blocker`)."""

NVDEC_PACKAGES = ("torchcodec", "PyNvVideoCodec")
"""Python packages that drive NVDEC; either one is enough."""


@dataclass(frozen=True)
class DecoderChoice:
    """The decoder for one video (``decord``, ``pyav`` or ``nvdec``) and, when it is not the
    one configured, why (one line, e.g. ``"no GPU in this worker"``)."""

    decoder: str
    reason: str | None = None


@functools.cache
def _has_libnvcuvid() -> bool:
    """Whether the NVIDIA driver's video decoding library loads in this process."""
    for name in ("libnvcuvid.so.1", ctypes.util.find_library("nvcuvid")):
        if not name:
            continue
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def _compute_capability(gpu: int) -> tuple[int, int]:
    """``(major, minor)`` of the process's CUDA device ``gpu`` (imports torch)."""
    import torch  # heavy: reached only where a GPU is held

    return torch.cuda.get_device_capability(gpu)


def nvdec_blocker(
    gpus: Sequence[object],
    codec: Callable[[], str | None],
    *,
    has_package: Callable[[str], bool] = lambda name: importlib.util.find_spec(name) is not None,
    has_libnvcuvid: Callable[[], bool] = _has_libnvcuvid,
    capability: Callable[[int], tuple[int, int]] = _compute_capability,
) -> str | None:
    """Why NVDEC cannot decode this video here, in one line; None when it can.

    Checked from the cheapest: a GPU held (``gpus``: the GPU ids Ray gave this worker), a
    package that drives NVDEC (:data:`NVDEC_PACKAGES`), ``libnvcuvid`` in the driver, then the
    video's ``codec`` (FFmpeg name, read only now) against :data:`NVDEC_CODECS` and, for AV1,
    the GPU's compute capability (Hopper, 9.0, has no AV1 decoder). The keyword arguments
    replace the probes (tests on machines without GPU).
    """
    if not gpus:
        return "no GPU in this worker"
    if not any(has_package(p) for p in NVDEC_PACKAGES):
        return f"neither {' nor '.join(NVDEC_PACKAGES)} is installed"
    if not has_libnvcuvid():
        return "no libnvcuvid in the NVIDIA driver (NVDEC not exposed to this container)"
    name = codec()
    if name not in NVDEC_CODECS:
        return f"codec {name or 'unknown'} is not decoded by NVDEC"
    if name == "av1":
        major, minor = capability(0)
        if major < 8 or (major, minor) == (9, 0):
            gen = "Hopper" if major == 9 else f"compute capability {major}.{minor}"
            return f"AV1 is not decoded by NVDEC on {gen}"
    return None


def choose_decoder(
    configured: str, gpus: Sequence[object], codec: Callable[[], str | None], **probes
) -> DecoderChoice:
    """The decoder that reads one video, given ``extract.decoder`` (``configured``), the GPUs
    this worker holds and the video's codec (a callable, read only when it matters).
    ``probes``: as :func:`nvdec_blocker`'s.

    Raises:
        DecodeError: ``nvdec`` was asked for where it cannot decode (the video becomes a
            recorded failure naming the reason).
    """
    if configured not in ("nvdec", "auto"):
        return DecoderChoice(configured)
    reason = nvdec_blocker(gpus, codec, **probes)
    if reason is None:
        reason = "NVDEC decoding runs in encoder actors, which this version does not build yet"
    if configured == "nvdec":
        raise DecodeError(f"decoder nvdec cannot decode here: {reason}")
    return DecoderChoice(CPU_FALLBACK, reason)


def video_codec(source: str | os.PathLike[str] | BinaryIO) -> str | None:
    """The FFmpeg name of the first video stream's codec (``h264``, ``av1``, ...) of a file
    path or a readable binary file object; None when there is no video stream or the
    container cannot be opened."""
    import av  # the container is opened only when every other NVDEC condition holds

    try:
        with av.open(source if hasattr(source, "read") else os.fspath(source)) as container:
            streams = container.streams.video
            return streams[0].codec_context.name if streams else None
    except (av.error.FFmpegError, OSError):
        return None
