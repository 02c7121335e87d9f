"""``extract.decoder: auto / nvdec`` and ``decode_resources`` through the extraction: on this
machine (no GPU) ``auto`` decodes on the CPU and the videos table says why, ``nvdec`` with a CPU
encoder stops before Ray starts, and a decode task reserves the custom resources it is given
(their placement on a multi-node cluster: tests/cluster_jobs/test_multinode.py)."""

from __future__ import annotations

import pytest

from lvmae.config import ExtractConfig
from lvmae.storage import read_segments, read_videos
from pipelines.cli import main
from pipelines.extract import extract_reservations, run_extraction


def test_auto_decoder_falls_back_on_a_cpu_machine_and_records_why(tmp_path, scene_video, ray_local):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{scene_video}\n")
    config = ExtractConfig(decoder="auto", batch_size=4)
    summary = run_extraction(str(listing), str(tmp_path / "out"), config, progress=False,
                             track=False)  # fmt: skip
    assert summary.videos_ok == 1
    (row,) = read_videos(str(tmp_path / "out")).to_pylist()
    assert row["status"] == "ok" and row["decoder"] == "pyav"
    assert row["decoder_reason"] == (
        "the encoder runs on CPU (gpus_per_actor 0); NVDEC decodes in GPU encoder actors"
    )
    assert read_segments(str(tmp_path / "out")).num_rows == row["segments_planned"] == 3


def test_nvdec_with_the_cpu_encoder_stops_before_any_work(tmp_path, scene_video, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", str(scene_video), "--out", str(tmp_path / "o"),
              "--set", "extract.decoder=nvdec"])  # fmt: skip
    err = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert "decoder nvdec" in err and "gpus_per_actor" in err and "decoder: auto" in err
    assert not (tmp_path / "o").exists()


def test_decode_tasks_reserve_the_custom_resources_given():
    plain = extract_reservations(ExtractConfig())["decode"]
    assert dict(plain.resources) == {} and "resources" not in plain.as_dict()
    config = ExtractConfig(decode_resources={"lvmae_decode": 1}, encoder="languagebind-video-ft")
    reserved = extract_reservations(config)
    assert reserved["decode"].as_dict()["resources"] == {"lvmae_decode": 1.0}
    assert reserved["encode"].gpus == 1.0 and not reserved["encode"].resources
