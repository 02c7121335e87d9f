"""``extract.decoder: auto / nvdec`` resolved per video (lvmae.video.nvdec): the CPU decoder
with the reason wherever NVDEC cannot decode, a recorded failure where ``nvdec`` was asked
for, and the real reading path on a real mp4 (this machine has no GPU)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lvmae.config import ExtractConfig
from lvmae.video.clips import Clip, VideoReport, read_clips
from lvmae.video.decoding import DecodeError
from lvmae.video.nvdec import choose_decoder, nvdec_blocker, video_codec


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
        (("0",), never, {**READY, "has_package": lambda n: False},
         "neither torchcodec nor PyNvVideoCodec is installed"),
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
    # everything in place: the NVDEC reader is not built yet, and the choice says so
    ready = choose_decoder("auto", ("0",), lambda: "h264", **READY)
    assert ready.decoder == "pyav" and "not build" in ready.reason


def test_nvdec_where_it_cannot_decode_is_a_decode_error():
    with pytest.raises(DecodeError, match="decoder nvdec cannot decode here: no GPU"):
        choose_decoder("nvdec", (), never)


def test_video_codec_reads_the_stream(scene_video, tmp_path):
    assert video_codec(str(scene_video)) == "h264"
    (tmp_path / "x.mp4").write_text("not a video")
    assert video_codec(str(tmp_path / "x.mp4")) is None


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
