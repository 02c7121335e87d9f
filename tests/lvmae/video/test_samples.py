"""Sample videos: real ffmpeg encodes checked with PyAV (no mocks)."""

from __future__ import annotations

import csv
import hashlib
import itertools
import subprocess
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from lvmae.video import samples
from lvmae.video.ffmpeg import ffmpeg_exe
from lvmae.video.samples import (
    BROKEN_KINDS,
    DEFAULT_RECIPES,
    HARD_ORDER_RECIPES,
    ORDER_RECIPES,
    PALETTE,
    RECIPES,
    RenderSpec,
    Scene,
    make_samples,
    make_vfr_video,
    make_video,
    plan_samples,
    write_broken_videos,
)


def _frames_rgb(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def _read_labels(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- make_video


def test_make_video_duration_size_fps_codec(tmp_path):
    scenes = [Scene("mandelbrot", 2.34), Scene("life", 1.5), Scene("colorchart", 1.27)]
    path = make_video(tmp_path / "sub" / "v.mp4", scenes, width=96, height=64, fps=12, seed=3)

    assert path == tmp_path / "sub" / "v.mp4"
    expected_frames = round(5.11 * 12)
    with av.open(str(path)) as container:
        assert len(container.streams.audio) == 0
        (stream,) = container.streams.video
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.width, stream.height) == (96, 64)
        assert stream.average_rate == 12
        assert stream.frames == expected_frames
        assert container.duration / 1e6 == pytest.approx(5.11, abs=1 / 12)
        decoded = [f.time for f in container.decode(stream)]
    assert len(decoded) == expected_frames
    assert np.allclose(np.diff(decoded), 1 / 12, atol=1e-3)
    # +faststart: the index (moov) precedes the media data (mdat).
    boxes = samples._top_level_boxes(path.read_bytes())
    assert boxes["moov"][0] < boxes["mdat"][0]
    assert not list(tmp_path.rglob("*.part"))


def test_make_video_puts_scenes_in_order_on_frame_boundaries(tmp_path):
    # smptebars is static and unseeded: every one of its frames is the same picture.
    bars = _frames_rgb(make_video(tmp_path / "bars.mp4", [Scene("smptebars", 1.0)]))
    mixed = _frames_rgb(
        make_video(tmp_path / "mixed.mp4", [Scene("smptebars", 1.04), Scene("life", 0.96)])
    )
    assert len(bars) == 10
    assert len(mixed) == 20
    ref = bars[5].astype(float)
    diffs = [np.abs(frame.astype(float) - ref).mean() for frame in mixed]
    assert max(diffs[:10]) < 5  # the bars, up to coding noise
    assert min(diffs[10:]) > 30  # then the Game of Life


def test_palette_sources_look_different(tmp_path):
    assert len(PALETTE) >= 8
    names = list(PALETTE)
    path = make_video(
        tmp_path / "palette.mp4", [Scene(n, 1.0) for n in names], width=64, height=48, fps=4
    )
    frames = _frames_rgb(path)
    assert len(frames) == 4 * len(names)
    middle = {n: frames[4 * i + 2].astype(float) for i, n in enumerate(names)}
    for a, b in itertools.combinations(names, 2):
        assert np.abs(middle[a] - middle[b]).mean() > 25, (a, b)


def test_seeded_sources_vary_with_the_seed():
    for name, source in PALETTE.items():
        graphs = {source.render(RenderSpec(160, 120, 10, 50, seed)) for seed in (0, 1)}
        assert len(graphs) == (2 if source.seeded else 1), name


def test_every_source_renders_the_same_pictures_for_the_same_seed(tmp_path):
    """A sample library is a function of its seed: two renders of the same spec give the
    same frames (ffmpeg's ``random`` colours, for one, would not)."""
    for name, source in PALETTE.items():
        spec = RenderSpec(64, 48, 5, 10, 7)
        raw = []
        for _ in range(2):
            proc = subprocess.run(
                [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                 f"{source.render(spec)},scale=64:48,format=rgb24", "-frames:v", "10",
                 "-f", "rawvideo", "-"],
                capture_output=True, check=True,
            )  # fmt: skip
            raw.append(proc.stdout)
        assert len(raw[0]) == 10 * 64 * 48 * 3, name
        assert raw[0] == raw[1], name


@pytest.mark.parametrize(
    ("scenes", "kwargs"),
    [
        ([], {}),
        ([Scene("no_such_source", 1.0)], {}),
        ([Scene("life", 1.0)], {"width": 161}),
        ([Scene("life", 1.0)], {"fps": 0}),
        ([Scene("life", 1.0), Scene("gradients", 0.01)], {}),
    ],
)
def test_make_video_rejects_bad_arguments(tmp_path, scenes, kwargs):
    with pytest.raises(ValueError):
        make_video(tmp_path / "v.mp4", scenes, **kwargs)
    assert not list(tmp_path.iterdir())


def test_make_video_reports_ffmpeg_failure(tmp_path):
    with pytest.raises(RuntimeError, match="ffmpeg failed") as info:
        make_video(tmp_path / "v.mp4", [Scene("life", 1.0)], crf=-5)  # x264: crf >= -1
    assert "crf" in str(info.value).lower()
    assert not list(tmp_path.iterdir())  # no half-written file left behind


# --------------------------------------------------------------------------- recipes / plan


def test_order_recipes_share_scenes_and_differ_only_in_order():
    assert len(RECIPES) >= 4
    assert all(src in PALETTE for scenes in RECIPES.values() for src in scenes)
    orders = [RECIPES[name] for name in ORDER_RECIPES]
    assert len(orders) >= 4
    assert len({tuple(sorted(o)) for o in orders}) == 1  # same scenes
    assert len(set(orders)) == len(orders)  # different orders
    for position in zip(*orders, strict=True):  # every position tells the classes apart
        assert len(set(position)) == len(orders)


def test_the_hard_variant_has_more_scenes_the_same_multiset_and_noisier_durations():
    hard = [RECIPES[name] for name in HARD_ORDER_RECIPES]
    assert all(len(h) == 6 for h in hard)  # more scenes per video than the 4 of ORDER_RECIPES
    assert len({tuple(sorted(h)) for h in hard}) == 1  # the mean cannot tell them apart
    assert set(hard[0]) == set(RECIPES[ORDER_RECIPES[0]])  # over the same four scenes
    assert len(set(hard)) == len(hard)
    assert not set(HARD_ORDER_RECIPES) & set(DEFAULT_RECIPES)

    def spread(recipes):
        plan = plan_samples(videos_per_recipe=20, min_seconds=60, max_seconds=60, seed=3,
                            recipes=recipes)  # fmt: skip
        return np.std([s.seconds / v.seconds * len(v.scenes) for v in plan for s in v.scenes])

    assert spread(HARD_ORDER_RECIPES) > 1.5 * spread(ORDER_RECIPES)  # noisier durations


def test_plan_durations_and_jitter():
    plan = plan_samples(videos_per_recipe=4, min_seconds=60, max_seconds=600, seed=7)
    assert len(plan) == 4 * len(DEFAULT_RECIPES)
    for video in plan:
        assert tuple(s.source for s in video.scenes) == RECIPES[video.label]
        assert 60 - 0.01 <= video.seconds <= 600 + 0.01
        assert video.video_id == f"{video.label}/{video.label}_{video.video_id[-7:-4]}.mp4"
    shares = [s.seconds / v.seconds for v in plan for s in v.scenes]
    assert np.std(shares) > 0.01  # scene lengths are jittered, not equal splits
    assert plan == plan_samples(videos_per_recipe=4, min_seconds=60, max_seconds=600, seed=7)
    other = plan_samples(videos_per_recipe=4, min_seconds=60, max_seconds=600, seed=8)
    assert [v.seconds for v in other] != [v.seconds for v in plan]


@pytest.mark.parametrize(
    ("n", "counts"), [(1, (1, 0, 0)), (2, (2, 0, 0)), (3, (1, 1, 1)), (10, (6, 2, 2))]
)
def test_plan_splits_are_stratified(n, counts):
    plan = plan_samples(videos_per_recipe=n, seed=0)
    for recipe in DEFAULT_RECIPES:
        got = Counter(v.split for v in plan if v.label == recipe)
        assert (got["train"], got["val"], got["test"]) == counts


@pytest.mark.parametrize(
    "kwargs",
    [
        {"recipes": ["no_such_recipe"]},
        {"recipes": ["order_abcd", "order_abcd"]},
        {"recipes": []},
        {"videos_per_recipe": 0},
        {"min_seconds": 0},
        {"min_seconds": 20, "max_seconds": 10},
    ],
)
def test_plan_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        plan_samples(**kwargs)


# --------------------------------------------------------------------------- make_samples


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("library")
    labels = make_samples(root, videos_per_recipe=3, min_seconds=10, max_seconds=20, seed=1)
    assert labels == root / "labels.csv"
    return root


def test_make_samples_layout_and_labels(library):
    rows = _read_labels(library / "labels.csv")
    assert (library / "labels.csv").read_text().splitlines()[0] == "video_id,label,split"
    assert len(rows) == 3 * len(DEFAULT_RECIPES)
    assert {r["label"] for r in rows} == set(DEFAULT_RECIPES)
    on_disk = sorted(p.relative_to(library).as_posix() for p in library.rglob("*.mp4"))
    assert sorted(r["video_id"] for r in rows) == on_disk
    for row in rows:
        recipe = row["label"]
        assert row["video_id"].startswith(f"{recipe}/{recipe}_")
        assert row["split"] in {"train", "val", "test"}
        with av.open(str(library / row["video_id"])) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            assert (stream.width, stream.height, stream.average_rate) == (160, 120, 10)
            assert 10 - 0.1 <= container.duration / 1e6 <= 20 + 0.1
    for recipe in DEFAULT_RECIPES:
        splits = sorted(r["split"] for r in rows if r["label"] == recipe)
        assert splits == ["test", "train", "val"]


def test_make_samples_durations_follow_the_plan(library):
    plan = plan_samples(videos_per_recipe=3, min_seconds=10, max_seconds=20, seed=1)
    rows = _read_labels(library / "labels.csv")
    assert [(v.video_id, v.label, v.split) for v in plan] == [
        (r["video_id"], r["label"], r["split"]) for r in rows
    ]
    for video in plan:
        with av.open(str(library / video.video_id)) as container:
            assert container.streams.video[0].frames == round(video.seconds * 10)


def test_make_samples_is_idempotent(tmp_path):
    kwargs = {
        "videos_per_recipe": 2,
        "min_seconds": 4,
        "max_seconds": 6,
        "recipes": ["order_abcd", "order_dcba"],
        "seed": 5,
    }
    labels = make_samples(tmp_path, **kwargs)
    videos = sorted(tmp_path.rglob("*.mp4"))
    assert len(videos) == 4
    before = {p: p.stat().st_mtime_ns for p in videos}
    text = labels.read_text()

    assert make_samples(tmp_path, **kwargs) == labels
    assert {p: p.stat().st_mtime_ns for p in videos} == before  # nothing re-encoded
    assert labels.read_text() == text

    # A damaged file and a missing file are redone; the others are kept.
    damaged, missing = videos[0], videos[1]
    damaged.write_bytes(damaged.read_bytes()[:100])
    missing.unlink()
    make_samples(tmp_path, **kwargs)
    after = {p: p.stat().st_mtime_ns for p in videos}
    assert after[damaged] != before[damaged]
    assert missing.exists()
    assert all(after[p] == before[p] for p in videos[2:])
    assert len(_frames_rgb(damaged)) > 0

    # Other encoding settings: everything is redone.
    make_samples(tmp_path, **kwargs, crf=35)
    assert all(p.stat().st_mtime_ns != after[p] for p in videos)
    assert not list(tmp_path.rglob("*.part"))


# --------------------------------------------------------------------------- VFR


def test_make_vfr_video_has_variable_frame_rate(tmp_path):
    path = make_vfr_video(tmp_path / "vfr.mp4", segments=((10, 3.0), (30, 2.0), (5, 2.0)))
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.frames == 30 + 60 + 10
        times = np.array([f.time for f in container.decode(stream)])
    assert len(times) == 100
    deltas = np.diff(times)
    assert np.allclose(deltas[:29], 1 / 10, atol=1e-4)
    assert np.allclose(deltas[30:89], 1 / 30, atol=1e-4)
    assert np.allclose(deltas[90:], 1 / 5, atol=1e-4)
    assert times[-1] + 1 / 5 == pytest.approx(7.0, abs=1e-3)


# --------------------------------------------------------------------------- broken inputs


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> dict[str, Path]:
    return write_broken_videos(tmp_path_factory.mktemp("broken"))


def test_broken_videos_are_all_there(broken):
    assert set(broken) == set(BROKEN_KINDS)
    for kind, path in broken.items():
        assert path.name == f"{kind}.mp4"
    assert broken["zero_byte"].stat().st_size == 0
    assert broken["text"].read_text().startswith("This is not a video")


@pytest.mark.parametrize("kind", ["zero_byte", "truncated", "text"])
def test_broken_files_cannot_be_opened(broken, kind):
    with pytest.raises(av.InvalidDataError):
        av.open(str(broken[kind]))


def test_unreadable_is_a_dangling_symlink(broken):
    path = broken["unreadable"]
    assert path.is_symlink()
    assert not path.exists()
    assert path in set(path.parent.glob("*.mp4"))  # listings still find it
    with pytest.raises(FileNotFoundError):
        av.open(str(path))
    with pytest.raises(FileNotFoundError):
        path.open("rb")


def test_audio_only_has_no_video_stream(broken):
    with av.open(str(broken["audio_only"])) as container:
        assert len(container.streams.video) == 0
        assert len(container.streams.audio) == 1
        assert container.duration / 1e6 == pytest.approx(2.0, abs=0.1)


def _decode_until_failure(path: Path) -> tuple[int, int, Exception | None]:
    """(frames the index promises, frames decoded, the error that stopped decoding)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        promised, decoded = stream.frames, 0
        try:
            for _ in container.decode(stream):
                decoded += 1
        except av.FFmpegError as exc:
            return promised, decoded, exc
    return promised, decoded, None


def test_partial_decodes_the_first_half_then_fails(broken):
    promised, decoded, error = _decode_until_failure(broken["partial"])
    assert promised == 200  # 20 s at 10 fps, as the index says
    assert 50 <= decoded < promised
    assert isinstance(error, av.InvalidDataError)


def test_interrupted_decodes_the_first_half_then_stops(broken):
    promised, decoded, _ = _decode_until_failure(broken["interrupted"])
    assert promised == 200
    assert 50 <= decoded < promised


def test_broken_videos_from_a_given_good_video(tmp_path):
    good = make_video(tmp_path / "good.mp4", [Scene("gradients", 4.0), Scene("life", 4.0)])
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    paths = write_broken_videos(tmp_path / "broken", good_video=good)
    assert hashlib.sha256(good.read_bytes()).hexdigest() == digest  # left untouched
    promised, decoded, _ = _decode_until_failure(paths["partial"])
    assert promised == 80
    assert 0 < decoded < promised
    with pytest.raises(av.InvalidDataError):
        av.open(str(paths["truncated"]))
    # Rewriting over an existing set works (the symlink included).
    assert write_broken_videos(tmp_path / "broken", good_video=good) == paths
