"""``extract.decoder: auto / nvdec`` resolved per video (lvmae.video.nvdec): the CPU decoder
with the reason wherever NVDEC cannot decode, a recorded failure where ``nvdec`` was asked
for, and the real reading path on a real mp4 (this machine has no GPU).

The NVDEC reader (:class:`NvdecReader`) past its decoder: under ``LVMAE_NVDEC_EMULATE`` it
decodes with PyAV at full size on the host, and everything after (the CPU readers'
timestamps, the resize on the device, frames kept as tensors, the embeddings) is checked
against the CPU reader here; NVDEC itself only on a GPU (``gpu`` tests)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from pydantic import ValidationError

from lvmae.config import ExtractConfig
from lvmae.video.clips import Clip, VideoReport, read_clips
from lvmae.video.decoding import DecodeError, PyAVReader
from lvmae.video.nvdec import (
    EMULATE_ENV,
    NvdecReader,
    choose_decoder,
    nvdec_blocker,
    resize_frames,
    video_codec,
)


def never() -> str:
    raise AssertionError("the codec was read although an earlier condition decided")


# what a GPU machine with every piece in place answers, piece by piece replaced below
READY = {
    "has_package": lambda name: name == "PyNvVideoCodec",
    "has_libnvcuvid": lambda: True,
    "capability": lambda gpu: (9, 0),  # Hopper (H100, H200)
}


@pytest.mark.parametrize(
    ("gpus", "codec", "probes", "reason"),
    [
        ((), never, READY, "no GPU in this worker"),
        (("0",), never, {**READY, "has_package": lambda n: n == "torchcodec"},
         "PyNvVideoCodec is not installed"),
        (("0",), never, {**READY, "has_libnvcuvid": lambda: False},
         "no libnvcuvid in the NVIDIA driver (NVDEC not exposed to this container)"),
        (("0",), lambda: "prores", READY, "codec prores is not decoded by NVDEC"),
        (("0",), lambda: None, READY, "codec unknown is not decoded by NVDEC"),
        (("0",), lambda: "av1", READY, "AV1 is not decoded by NVDEC on Hopper"),
        (("0",), lambda: "av1", {**READY, "capability": lambda gpu: (7, 5)},
         "AV1 is not decoded by NVDEC on compute capability 7.5"),
        (("0",), lambda: "av1", {**READY, "capability": lambda gpu: (8, 9)}, None),
        (("0",), lambda: "h264", READY, None),
        (("0",), lambda: "hevc", READY, None),
        (("0",), None, READY, None),  # the worker's conditions only: no codec looked at
    ],
)  # fmt: skip
def test_nvdec_blocker_names_the_first_missing_condition(gpus, codec, probes, reason):
    assert nvdec_blocker(gpus, codec, **probes) == reason


def test_cpu_decoders_are_used_as_configured():
    for name in ("decord", "pyav"):
        assert choose_decoder(name, ("0",), never).decoder == name
        assert choose_decoder(name, (), never).reason is None


def test_auto_falls_back_to_pyav_with_the_reason():
    choice = choose_decoder("auto", (), never)
    assert (choice.decoder, choice.reason) == ("pyav", "no GPU in this worker")
    # everything in place: NVDEC
    ready = choose_decoder("auto", ("0",), lambda: "h264", **READY)
    assert (ready.decoder, ready.reason) == ("nvdec", None)
    # this machine, with a GPU id but no PyNvVideoCodec
    here = choose_decoder("auto", ("0",), never)
    assert (here.decoder, here.reason) == ("pyav", "PyNvVideoCodec is not installed")


def test_nvdec_where_it_cannot_decode_is_a_decode_error():
    with pytest.raises(DecodeError, match="decoder nvdec cannot decode here: no GPU"):
        choose_decoder("nvdec", (), never)


def test_video_codec_reads_the_stream(scene_video, tmp_path):
    assert video_codec(str(scene_video)) == "h264"
    (tmp_path / "x.mp4").write_text("not a video")
    assert video_codec(str(tmp_path / "x.mp4")) is None


def test_an_av1_file_is_named_av1_and_falls_back_on_hopper(scene_video, tmp_path):
    """The codec's name, not the decoder PyAV picks for it (libdav1d): the AV1 rule fires."""
    import ffmpeg

    from lvmae.video.ffmpeg import ffmpeg_exe

    path = tmp_path / "av1.mp4"
    out = ffmpeg.input(str(scene_video), t=2).output(
        str(path), vcodec="libsvtav1", preset=12, crf=50, an=None
    )
    out.run(cmd=ffmpeg_exe(), quiet=True, overwrite_output=True)
    assert video_codec(path) == "av1"
    choice = choose_decoder("auto", ("0",), lambda: video_codec(path), **READY)
    assert (choice.decoder, choice.reason) == ("pyav", "AV1 is not decoded by NVDEC on Hopper")
    ampere = {**READY, "capability": lambda gpu: (8, 0)}
    assert choose_decoder("auto", ("0",), lambda: video_codec(path), **ampere).decoder == "nvdec"


def test_auto_reads_a_real_video_on_this_cpu_machine_and_says_why(scene_video):
    items = list(read_clips(scene_video, ExtractConfig(decoder="auto")))
    report = items[-1]
    assert isinstance(report, VideoReport) and report.status == "ok", report
    assert report.info.decoder == "pyav"
    assert report.decoder_reason == "no GPU in this worker"
    assert sum(isinstance(i, Clip) for i in items) == report.num_segments == 3
    plain = list(read_clips(scene_video, ExtractConfig()))[-1]
    assert plain.decoder_reason is None and plain.info.decoder == "pyav"  # the default
    chosen = list(read_clips(scene_video, ExtractConfig(decoder="decord")))[-1]
    assert chosen.decoder_reason is None and chosen.info.decoder == "decord"


def test_nvdec_requested_where_impossible_is_a_recorded_failure(scene_video):
    config = ExtractConfig(decoder="nvdec", encoder="languagebind-video-ft")
    (report,) = list(read_clips(scene_video, config))
    assert report.status == "failed" and report.num_clips == 0
    assert report.error == "decoder nvdec cannot decode here: no GPU in this worker"


def test_nvdec_with_a_cpu_encoder_is_a_config_error():
    with pytest.raises(ValidationError, match="decoder nvdec decodes on the encoder actor's GPU"):
        ExtractConfig(decoder="nvdec")  # tiny: gpus_per_actor 0
    with pytest.raises(ValidationError, match="decoder nvdec"):
        ExtractConfig(decoder="nvdec", encoder="languagebind-video-ft", gpus_per_actor=0)
    ExtractConfig(decoder="auto")  # auto is fine anywhere


def test_decode_resources_are_custom_resources_only():
    assert ExtractConfig(decode_resources={"lvmae_decode": 1}).decode_resources
    for bad in ({"GPU": 1}, {"CPU": 2}, {"lvmae_decode": 0}):
        with pytest.raises(ValidationError, match="decode_resources"):
            ExtractConfig(decode_resources=bad)


@pytest.fixture
def emulate(monkeypatch):
    monkeypatch.setenv(EMULATE_ENV, "1")


@pytest.fixture(scope="module")
def hd_video(tmp_path_factory):
    """3 s of 640x360 @ 25 fps: frames downscaled to 224 px, as 720p ones are."""
    from lvmae.video.samples import Scene, make_video

    path = tmp_path_factory.mktemp("nvdec") / "hd.mp4"
    return make_video(path, [Scene("testsrc2", 3.0)], width=640, height=360, fps=25)


def test_resize_frames_matches_the_size_and_keeps_flat_images_flat():
    import torch

    flat = torch.full((2, 90, 160, 3), 77, dtype=torch.uint8)
    out = resize_frames(flat, (56, 32))
    assert out.shape == (2, 32, 56, 3) and out.dtype == torch.uint8
    assert bool((out == 77).all())
    assert resize_frames(flat, (160, 90)) is flat  # already that size


@pytest.mark.parametrize("video", ["hd_video", "wide_video"])
def test_emulated_nvdec_reader_has_the_cpu_readers_timestamps_and_frames(video, request, emulate):
    import torch

    path = request.getfixturevalue(video)
    with PyAVReader(path, short_side=224) as cpu, NvdecReader(path, short_side=224) as gpu:
        np.testing.assert_array_equal(gpu.frame_times_s, cpu.frame_times_s)
        assert gpu.out_size == cpu.out_size and gpu.missing_frames == cpu.missing_frames
        assert gpu.info == dataclasses.replace(cpu.info, decoder="nvdec")
        idx = np.array([0, 30, 30, 7, len(cpu.frame_times_s) - 1])  # repeats, any order
        got = gpu.device_frames(idx)
        assert isinstance(got, torch.Tensor) and got.dtype == torch.uint8
        width, height = cpu.out_size
        assert got.shape == (5, height, width, 3)
        assert torch.equal(got[1], got[2])
        ref = cpu.get_frames(idx).astype(np.int16)
        diff = np.abs(got.numpy().astype(np.int16) - ref)
        # torch's bilinear resize against libswscale's: a few levels on average
        assert diff.mean() < 4.0, diff.mean()
        # a wrong frame (0.4 s away) differs far more on these moving sources
        shifted = cpu.get_frames((idx + 10) % len(cpu.frame_times_s)).astype(np.int16)
        assert np.abs(ref - shifted).mean() > 2 * diff.mean()
        np.testing.assert_array_equal(gpu.get_frames(idx[:1]), got[:1].numpy())


def test_emulated_nvdec_clips_embed_as_the_cpu_clips_do(hd_video, emulate):
    import torch

    from lvmae.encoders.models import build_encoder

    config = ExtractConfig(decoder="auto", gpus_per_actor=1, segment_s=1.0)
    items = list(read_clips(hd_video, config, gpus=("0",)))
    report, clips = items[-1], items[:-1]
    assert report.status == "ok" and report.info.decoder == "nvdec", report
    assert report.decoder_reason is None
    assert all(isinstance(c.frames, torch.Tensor) for c in clips)  # never on the host
    cpu = list(read_clips(hd_video, config.model_copy(update={"decoder": "pyav"})))
    assert len(cpu) - 1 == len(clips) == report.num_segments == 3
    for a, b in zip(clips, cpu[:-1], strict=True):
        assert a.segment == b.segment
        np.testing.assert_array_equal(a.frame_indices, b.frame_indices)
        np.testing.assert_array_equal(a.frame_times_s, b.frame_times_s)
    encoder = build_encoder("tiny")
    on_gpu = encoder.encode(torch.stack([c.frames for c in clips]))
    on_cpu = encoder.encode(np.stack([c.frames for c in cpu[:-1]]))
    cosine = (
        (on_gpu * on_cpu).sum(1) / np.linalg.norm(on_gpu, axis=1) / np.linalg.norm(on_cpu, axis=1)
    )
    assert cosine.min() >= 0.999, cosine


def test_cpu_reason_decided_for_the_run_is_not_checked_again(scene_video, emulate):
    config = ExtractConfig(decoder="auto", gpus_per_actor=1)
    report = list(read_clips(scene_video, config, gpus=("0",), cpu_reason="decided"))[-1]
    assert report.status == "ok" and report.info.decoder == "pyav"
    assert report.decoder_reason == "decided"


def test_nvdec_in_fast_mode_is_a_config_error():
    with pytest.raises(ValidationError, match="decode_mode: exact"):
        ExtractConfig(decoder="nvdec", gpus_per_actor=1, decode_mode="fast")
    ExtractConfig(decoder="auto", decode_mode="fast")  # auto decodes on the CPU then


def test_emulated_nvdec_records_broken_videos_as_the_cpu_reader_does(broken_videos, emulate):
    config = ExtractConfig(decoder="auto", gpus_per_actor=1)
    for kind, path in broken_videos.items():
        nvdec = list(read_clips(path, config, gpus=("0",)))[-1]
        cpu = list(read_clips(path, config.model_copy(update={"decoder": "pyav"})))[-1]
        assert isinstance(nvdec, VideoReport) and nvdec.error, kind
        assert (nvdec.status, nvdec.num_clips) == (cpu.status, cpu.num_clips), kind
