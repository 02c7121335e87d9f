"""Which decoder reads a video (``extract.decoder`` resolved where the video is decoded), and
the NVDEC reader.

``decord`` and ``pyav`` are CPU decoders and are used as asked. ``nvdec`` is the GPU's video
decoding engine (NVIDIA NVDEC, through PyNvVideoCodec); it can only decode where the process
holds a GPU, the driver exposes ``libnvcuvid``, PyNvVideoCodec is installed and the GPU decodes
the video's codec. ``auto`` takes NVDEC when all of that holds and the CPU decoder otherwise,
with the reason, which the videos table records per video (``decoder_reason``; docs/design.md
"Decoding on the GPU").

Why PyNvVideoCodec and not torchcodec (both on PyPI): PyNvVideoCodec's wheel carries its own
FFmpeg demuxer and needs only the driver's ``libcuda``/``libnvcuvid``; torchcodec's PyPI wheel
(0.17) links the CUDA 13 build of torch and the system's FFmpeg shared libraries, which a
CUDA 12 image or a machine without FFmpeg packages lacks. Neither was measured on a GPU yet.

Hardware facts (NVIDIA's Video Codec SDK support matrix): NVDEC decodes H.264, HEVC, VP8, VP9,
MPEG-1/2/4 and VC-1 on every data-centre GPU since Pascal; AV1 on Ampere and Ada
(compute capability 8.x) and Blackwell (10.x, 12.x), but not on Hopper (9.0: H100, H200),
which has no AV1 decoder.

Importing this module imports neither torch nor Ray: the GPUs a worker holds are passed in
(Ray's accounting: ``ray.get_runtime_context().get_accelerator_ids()["GPU"]``), the compute
capability is read through PyTorch only when every cheaper condition holds, and the reader
imports torch when it opens a video.

``LVMAE_NVDEC_EMULATE=1`` (tests, and debugging on machines without NVDEC): every NVDEC
condition but the GPU held counts as met, and :class:`NvdecReader` decodes each frame at its
full size with PyAV on the host instead of NVDEC; everything after the decoder (the CPU
readers' timestamps, the resize on the device, the encoder actors reading videos) runs as with
NVDEC.
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

import numpy as np

from lvmae.video.decoding import DecodeError, PyAVReader, VideoInfo, VideoReader

CPU_FALLBACK = "pyav"
"""The decoder ``auto`` uses when NVDEC cannot decode a video (``decode_mode: fast``
still reads with PyAV skipping frames, as for every decoder)."""

NVDEC_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "mpeg1video", "mpeg2video", "mpeg4",
                          "vc1", "av1"})  # fmt: skip
"""Codecs (FFmpeg names) that some NVDEC generation decodes; AV1 needs a newer GPU than
Turing and is missing on Hopper (:func:`nvdec_blocker`)."""

NVDEC_PACKAGES = ("PyNvVideoCodec",)
"""Python packages that drive NVDEC (the reader uses PyNvVideoCodec)."""

EMULATE_ENV = "LVMAE_NVDEC_EMULATE"
"""Environment variable: when set (not ``0``), NVDEC is emulated on the host (module doc)."""


def emulated() -> bool:
    """Whether NVDEC is emulated on the host (:data:`EMULATE_ENV`)."""
    return os.environ.get(EMULATE_ENV, "0") not in ("", "0")


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
    codec: Callable[[], str | None] | None,
    *,
    has_package: Callable[[str], bool] = lambda name: importlib.util.find_spec(name) is not None,
    has_libnvcuvid: Callable[[], bool] = _has_libnvcuvid,
    capability: Callable[[int], tuple[int, int]] = _compute_capability,
) -> str | None:
    """Why NVDEC cannot decode this video here, in one line; None when it can.

    Checked from the cheapest: a GPU held (``gpus``: the GPU ids Ray gave this worker), a
    package that drives NVDEC (:data:`NVDEC_PACKAGES`), ``libnvcuvid`` in the driver, then the
    video's ``codec`` (FFmpeg name, read only now) against :data:`NVDEC_CODECS` and, for AV1,
    the GPU's compute capability (Hopper, 9.0, has no AV1 decoder); ``codec`` None checks
    the worker's conditions only. The keyword arguments replace the probes (tests on
    machines without GPU); :data:`EMULATE_ENV` passes the package and driver checks.
    """
    if not gpus:
        return "no GPU in this worker"
    if not emulated():
        if not any(has_package(p) for p in NVDEC_PACKAGES):
            return f"{' or '.join(NVDEC_PACKAGES)} is not installed"
        if not has_libnvcuvid():
            return "no libnvcuvid in the NVIDIA driver (NVDEC not exposed to this container)"
    return None if codec is None else _codec_blocker(codec(), capability)


def _codec_blocker(name: str | None, capability: Callable[[int], tuple[int, int]]) -> str | None:
    """Why NVDEC does not decode codec ``name`` (FFmpeg's) on this process's GPU 0."""
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
    this worker holds and the video's codec (a callable, read only when it matters):
    ``nvdec`` where :func:`nvdec_blocker` finds nothing missing, else the CPU fallback with
    the reason (``auto``). ``probes``: as :func:`nvdec_blocker`'s.

    Raises:
        DecodeError: ``nvdec`` was asked for where it cannot decode (the video becomes a
            recorded failure naming the reason).
    """
    if configured not in ("nvdec", "auto"):
        return DecoderChoice(configured)
    reason = nvdec_blocker(gpus, codec, **probes)
    if reason is None:
        return DecoderChoice("nvdec")
    if configured == "nvdec":
        raise DecodeError(f"decoder nvdec cannot decode here: {reason}")
    return DecoderChoice(CPU_FALLBACK, reason)


def video_codec(source: str | os.PathLike[str] | BinaryIO) -> str | None:
    """The FFmpeg name of the first video stream's codec (``h264``, ``av1``, ...) of a file
    path or a readable binary file object; None when there is no video stream or the
    container cannot be opened. The codec's canonical name, not the decoder's that PyAV
    picked (``libdav1d`` for AV1)."""
    import av  # the container is opened only when every other NVDEC condition holds

    try:
        with av.open(source if hasattr(source, "read") else os.fspath(source)) as container:
            streams = container.streams.video
            return streams[0].codec_context.codec.canonical_name if streams else None
    except (av.error.FFmpegError, OSError):
        return None


def resize_frames(frames, out_size: tuple[int, int]):
    """Frames resized on their own device, as the CPU readers resize at decode time.

    Args:
        frames: uint8 ``[N, H, W, 3]`` RGB torch tensor (any device).
        out_size: ``(width, height)`` in pixels (:func:`lvmae.video.decoding.resized_shape`).

    Returns:
        uint8 ``[N, height, width, 3]`` on the same device: bilinear with antialiasing (a
        triangle filter widened by the scale, as libswscale's bilinear downscaling), rounded.
    """
    import torch
    import torch.nn.functional as F

    width, height = out_size
    if tuple(frames.shape[1:3]) == (height, width):
        return frames
    x = frames.permute(0, 3, 1, 2).float()  # [N, 3, H, W]
    y = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


class NvdecReader(VideoReader):
    """A video decoded by the GPU's NVDEC engines (PyNvVideoCodec's ``SimpleDecoder``, frames
    left in device memory), resized on the GPU.

    The frame timestamps, ``info`` and ``missing_frames`` come from PyAV's reading of the
    container (:class:`~lvmae.video.decoding.PyAVReader`, packets only, no decoding), so the
    segments and the sampled frame indices are exactly the CPU readers'. Frames are indexed
    in presentation order, as there.

    Args:
        path: local file path (NVDEC reads files; a remote video's local copy).
        short_side: frames come back resized so their short side is this many pixels.
        device: the CUDA device (``"cuda"`` or ``"cuda:<ordinal>"`` in this process: under
            Ray the GPU it assigned is ordinal 0); default ``"cuda"``. Under
            :data:`EMULATE_ENV`, any torch device (default: the GPU if any, else the CPU),
            the frames being decoded with PyAV on the host.

    Raises:
        DecodeError: the container cannot be read, or NVDEC cannot open the stream.
    """

    def __init__(self, path, *, short_side: int, device: str | None = None) -> None:
        import torch

        if device is None:  # NVDEC: the GPU; emulated: the GPU when there is one
            use_gpu = not emulated() or torch.cuda.is_available()
            device = "cuda" if use_gpu else "cpu"
        self.device = torch.device(device)
        self._emulated = emulated()
        index = PyAVReader(path, short_side=short_side)
        full = None
        try:
            self.frame_times_s = index.frame_times_s
            self.missing_frames = index.missing_frames
            self.out_size = index.out_size
            self.info = VideoInfo(**{**index.info.to_dict(), "decoder": "nvdec"})
            if self._emulated:  # the full-size frames, decoded on the host
                width, height = index.info.width, index.info.height
                full = PyAVReader(path, short_side=min(width, height))
            else:
                full = self._open_nvdec(path)
        finally:
            index.close()
        self._decoder = full

    def _open_nvdec(self, path):
        try:
            import PyNvVideoCodec

            return PyNvVideoCodec.SimpleDecoder(
                str(path),
                gpu_id=self.device.index or 0,
                use_device_memory=True,
                output_color_type=PyNvVideoCodec.OutputColorType.RGB,
            )
        except Exception as exc:  # the library raises RuntimeError/ValueError with its reason
            raise DecodeError(f"NVDEC cannot open the video: {exc}") from exc

    def device_frames(self, indices: np.ndarray):
        """The frames at ``indices`` (``[N]`` ints in ``[0, F)``, repeats allowed), resized.

        Returns:
            uint8 ``[N, out_h, out_w, 3]`` RGB torch tensor on :attr:`device`.

        Raises:
            DecodeError: a frame cannot be decoded.
        """
        import torch

        wanted = [int(i) for i in np.asarray(indices).ravel()]
        unique = sorted(set(wanted))
        try:
            if self._emulated:
                host = self._decoder.get_frames(np.asarray(unique))
                decoded = torch.from_numpy(np.ascontiguousarray(host)).to(self.device)
            else:
                frames = self._decoder.get_batch_frames_by_index(unique)
                if len(frames) != len(unique):
                    raise DecodeError(
                        f"NVDEC returned {len(frames)} of the {len(unique)} frames asked for"
                    )
                # each frame is [H, W, 3] in the decoder's pool: stacked (copied) at once
                decoded = torch.stack([torch.from_dlpack(f) for f in frames])
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"NVDEC cannot decode frames {unique[:3]}...: {exc}") from exc
        at = {index: k for k, index in enumerate(unique)}
        order = torch.tensor([at[i] for i in wanted], device=decoded.device)
        return resize_frames(decoded.index_select(0, order), self.out_size)

    def get_frames(self, indices: np.ndarray) -> np.ndarray:
        """:meth:`device_frames` copied to the host (the :class:`VideoReader` contract)."""
        return self.device_frames(indices).cpu().numpy()

    def close(self) -> None:
        if isinstance(self._decoder, VideoReader):
            self._decoder.close()
        self._decoder = None
