"""NVDEC itself on a real GPU (``gpu`` tests, NOT emulated): :class:`NvdecReader` against
:class:`PyAVReader` on a real ffmpeg-made 720p H.264 mp4 (timestamps, frames), the embeddings
of NVDEC clips against PyAV clips of the same segments through the real-size LanguageBind
video tower (random weights; the acceptance figure: cosine >= 0.999), and ``decoder: auto``
on an AV1 file (Hopper, compute capability 9.0, has no AV1 decoder: PyAV, with the reason).

Self-contained for a GPU machine without the suite's set-up: no conftest fixture is used
(``python3 -m pytest -q --noconftest -p no:cacheprovider -o addopts="" <this file>``), the
videos are made here in a temporary directory, and every test skips itself without CUDA
(besides the ``gpu`` mark that tests/conftest.py skips) or where NVDEC cannot decode
(:func:`lvmae.video.nvdec.nvdec_blocker`: PyNvVideoCodec, the driver's ``libnvcuvid``), the
reason in the skip message (``pytest -rs``). Run by ``benchmarks/gpu_session.sh``.
"""

from __future__ import annotations

import dataclasses
import subprocess

import numpy as np
import pytest
import torch

from lvmae.config import ExtractConfig
from lvmae.video.clips import Clip, VideoReport, read_clips
from lvmae.video.decoding import PyAVReader
from lvmae.video.nvdec import (
    EMULATE_ENV,
    DecoderChoice,
    NvdecReader,
    choose_decoder,
    nvdec_blocker,
    video_codec,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

CAPABILITY = torch.cuda.get_device_capability(0) if torch.cuda.is_available() else None
HOPPER = (9, 0)


@pytest.fixture(autouse=True)
def real_nvdec(monkeypatch):
    """NVDEC, never its emulation; skip (with the reason) where it cannot decode."""
    monkeypatch.delenv(EMULATE_ENV, raising=False)
    reason = nvdec_blocker(("0",), None)
    if reason is not None:
        pytest.skip(f"NVDEC cannot decode here: {reason}")


@pytest.fixture(scope="module")
def hd_video(tmp_path_factory):
    """4 s of 1280x720 @ 25 fps H.264 with B-frames (presentation order differs from
    decoding order, as in camera and web files), two scenes."""
    from lvmae.video.samples import Scene, make_video

    path = tmp_path_factory.mktemp("nvdec_gpu") / "hd.mp4"
    scenes = [Scene("testsrc2", 2.0), Scene("mandelbrot", 2.0)]
    return make_video(path, scenes, width=1280, height=720, fps=25, keyint_s=2.0, bframes=3)


def _av1_encoder() -> tuple[str, dict] | None:
    """An AV1 encoder of the project's ffmpeg binary and its fast settings, or None."""
    from lvmae.video.ffmpeg import ffmpeg_exe

    listed = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-encoders"], capture_output=True, text=True, check=True
    ).stdout
    if " libsvtav1 " in listed:
        return "libsvtav1", {"preset": 12, "crf": 45}
    if " libaom-av1 " in listed:
        return "libaom-av1", {"cpu-used": 8, "crf": 45, "b:v": 0, "row-mt": 1}
    return None


@pytest.fixture(scope="module")
def av1_video(tmp_path_factory):
    """3 s of 320x180 @ 10 fps AV1 in mp4, transcoded from an H.264 file by ffmpeg."""
    import ffmpeg

    from lvmae.video.ffmpeg import ffmpeg_exe
    from lvmae.video.samples import Scene, make_video

    found = _av1_encoder()
    if found is None:
        pytest.skip("the ffmpeg binary has no AV1 encoder (libsvtav1, libaom-av1)")
    codec, options = found
    folder = tmp_path_factory.mktemp("nvdec_av1")
    source = make_video(folder / "src.mp4", [Scene("testsrc2", 3.0)], width=320, height=180)
    path = folder / "av1.mp4"
    stream = ffmpeg.input(str(source)).output(str(path), vcodec=codec, an=None, **options)
    stream.run(cmd=ffmpeg_exe(), quiet=True, overwrite_output=True)
    return path


@pytest.fixture(scope="module")
def vit_l14():
    """The real-size ``LanguageBind_Video_FT`` video tower (ViT-L/14) with random weights on
    the GPU, bf16 autocast as in extraction."""
    from lvmae.encoders.models import VIT_L14_ARCH, LanguageBindEncoder, build_languagebind_random

    model = build_languagebind_random(VIT_L14_ARCH, seed=0)
    return LanguageBindEncoder(model, name="random-vit-l14", checkpoint="random", device="cuda")


def test_nvdec_reader_has_pyavs_timestamps_and_close_frames(hd_video):
    with PyAVReader(hd_video, short_side=224) as cpu, NvdecReader(hd_video, short_side=224) as gpu:
        assert len(cpu.frame_times_s) == 100
        np.testing.assert_array_equal(gpu.frame_times_s, cpu.frame_times_s)
        assert gpu.out_size == cpu.out_size == (398, 224)
        assert gpu.missing_frames == cpu.missing_frames == 0
        assert gpu.info == dataclasses.replace(cpu.info, decoder="nvdec")
        idx = np.array([0, 1, 37, 37, 5, 50, 99, 62])  # repeats, any order, both scenes
        got = gpu.device_frames(idx)
        assert got.device.type == "cuda" and got.dtype == torch.uint8
        assert got.shape == (8, 224, 398, 3)
        assert torch.equal(got[2], got[3])
        ref = cpu.get_frames(idx).astype(np.int16)
        diff = np.abs(got.cpu().numpy().astype(np.int16) - ref)
        # NVDEC's colour conversion and torch's resize against libswscale's: a few levels
        assert diff.mean() < 5.0, diff.mean()
        # the frame 0.4 s away differs far more on these moving sources: the right frames
        shifted = cpu.get_frames((idx + 10) % 100).astype(np.int16)
        assert np.abs(ref - shifted).mean() > 2 * diff.mean()


def test_nvdec_clips_embed_as_pyav_clips(hd_video, vit_l14):
    config = ExtractConfig(decoder="auto", encoder="languagebind-video-ft", segment_s=1.0)
    items = list(read_clips(hd_video, config, gpus=("0",)))
    report, clips = items[-1], items[:-1]
    assert isinstance(report, VideoReport) and report.status == "ok", report
    assert (report.info.decoder, report.decoder_reason) == ("nvdec", None)
    assert all(isinstance(c, Clip) and c.frames.device.type == "cuda" for c in clips)
    cpu = list(read_clips(hd_video, config.model_copy(update={"decoder": "pyav"})))
    assert cpu[-1].status == "ok" and cpu[-1].info.decoder == "pyav"
    assert len(cpu) - 1 == len(clips) == report.num_segments == 4
    for a, b in zip(clips, cpu[:-1], strict=True):
        assert a.segment == b.segment
        np.testing.assert_array_equal(a.frame_indices, b.frame_indices)
        np.testing.assert_array_equal(a.frame_times_s, b.frame_times_s)
    on_gpu = vit_l14.encode(torch.stack([c.frames for c in clips]))  # no host copy
    on_cpu = vit_l14.encode(np.stack([c.frames for c in cpu[:-1]]))
    cosine = (on_gpu * on_cpu).sum(1) / (
        np.linalg.norm(on_gpu, axis=1) * np.linalg.norm(on_cpu, axis=1)
    )
    assert cosine.min() >= 0.999, cosine
    # different segments are told apart: the figure above is not a constant
    across = (on_gpu[0] * on_cpu[-1]).sum() / np.linalg.norm(on_gpu[0]) / np.linalg.norm(on_cpu[-1])
    assert across < cosine.min(), (across, cosine)


@pytest.mark.skipif(CAPABILITY != HOPPER, reason="needs a Hopper GPU (compute capability 9.0)")
def test_av1_falls_back_to_pyav_on_hopper(av1_video):
    assert video_codec(av1_video) == "av1"
    reason = "AV1 is not decoded by NVDEC on Hopper"
    assert choose_decoder("auto", ("0",), lambda: video_codec(av1_video)) == DecoderChoice(
        "pyav", reason
    )
    config = ExtractConfig(decoder="auto", encoder="languagebind-video-ft", segment_s=1.0)
    report = list(read_clips(av1_video, config, gpus=("0",)))[-1]
    assert report.status == "ok" and report.num_clips == 3, report
    assert (report.info.decoder, report.decoder_reason) == ("pyav", reason)


@pytest.mark.skipif(
    CAPABILITY is None or CAPABILITY == HOPPER or CAPABILITY[0] < 8,
    reason="NVDEC decodes AV1 on compute capability 8.x and 10.x+ only",
)
def test_av1_is_decoded_by_nvdec_where_the_gpu_has_an_av1_decoder(av1_video):
    choice = choose_decoder("auto", ("0",), lambda: video_codec(av1_video))
    assert choice == DecoderChoice("nvdec")
    config = ExtractConfig(decoder="auto", encoder="languagebind-video-ft", segment_s=1.0)
    report = list(read_clips(av1_video, config, gpus=("0",)))[-1]
    assert report.status == "ok" and report.num_clips == 3, report
    assert report.info.decoder == "nvdec"
