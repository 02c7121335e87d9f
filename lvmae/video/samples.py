"""Sample long videos: real H.264 mp4 files made by ffmpeg for the demo, tests and benchmarks.

The sample library is a toy classification task that needs a model of *time*: each class
("recipe") is a sequence of visual scenes, and the :data:`ORDER_RECIPES` share the same
four scenes in different orders, so the mean of segment embeddings over a video cannot
tell them apart while their order can — the long-range structure LV-MAE's long-span model
is meant to capture (Naiman et al., ICCV 2025). Two more recipes use other scenes, as
classes any baseline separates. Scenes are ffmpeg ``lavfi`` generators (fractals, cellular
automata, colour bars, gradients...), so nothing is downloaded.

The module also writes the damaged inputs an extraction pipeline must survive (empty,
truncated, text-as-mp4, audio-only, unreadable, partly decodable, cut short) and a
variable-frame-rate video. Files are made with the ffmpeg binary of
:func:`lvmae.video.ffmpeg.ffmpeg_exe`; ffmpeg failures raise ``RuntimeError`` carrying ffmpeg's
stderr. No Ray here.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import random
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import av
import ffmpeg

from lvmae.config import SAMPLE_LIBRARY, SAMPLE_RECIPES
from lvmae.labels import SPLITS
from lvmae.video.ffmpeg import ffmpeg_exe

__all__ = [
    "BROKEN_KINDS",
    "DEFAULT_RECIPES",
    "HARD_ORDER_RECIPES",
    "ORDER_RECIPES",
    "PALETTE",
    "RECIPES",
    "RECIPE_JITTER",
    "SPLITS",
    "RenderSpec",
    "SampleVideo",
    "Scene",
    "Source",
    "make_samples",
    "make_vfr_video",
    "make_video",
    "plan_samples",
    "write_broken_videos",
]

_FFMPEG_TIMEOUT_S = 1800.0
# "lvmae.samples" in the comment tag and in the random seeds below is this module's name
# before it moved to lvmae/video/; kept so the files, splits and cache tags stay the same.
_COMMENT_PREFIX = "lvmae.samples "


# --------------------------------------------------------------------------- palette


class RenderSpec(NamedTuple):
    """What a :class:`Source` renders: frame size, rate, length and variation seed."""

    width: int  # pixels
    height: int  # pixels
    fps: float  # frames per second
    frames: int  # frames in the scene
    seed: int  # variation, 0..2**31-1

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def rate(self) -> str:
        return f"{self.fps:g}"


@dataclass(frozen=True)
class Source:
    """One visual scene type: an ffmpeg ``lavfi`` generator graph renderable at any size.

    Attributes:
        description: what the scene looks like, for people.
        render: ``RenderSpec -> str``, the lavfi graph producing an endless (or at least
            ``frames``-long) stream at the spec's rate (frames per second) and, except for
            fixed-size generators that get scaled afterwards, its size (pixels); the spec's
            ``seed`` picks a variation where the generator has one.
        seeded: whether ``seed`` changes the pictures.
    """

    description: str
    render: Callable[[RenderSpec], str]
    seeded: bool = True


# Famous Mandelbrot zoom targets (x, y); the seed picks one.
_MANDELBROT_POINTS = (
    (-0.743644, -0.131826),
    (-0.745300, 0.112700),
    (-0.160000, 1.040500),
    (-1.250660, 0.020120),
    (0.001643721971153, -0.822467633298876),
)


def _mandelbrot(g: RenderSpec) -> str:
    x, y = _MANDELBROT_POINTS[g.seed % len(_MANDELBROT_POINTS)]
    # end_pts is in frames: one full zoom per scene, whatever its length.
    return (
        f"mandelbrot=s={g.size}:r={g.rate}:maxiter=256:start_x={x}:start_y={y}"
        f":end_pts={max(g.frames, 1)}"
    )


def _gradients(g: RenderSpec) -> str:
    # ffmpeg's gradients source seeds only its line points: its default colours are
    # "random", drawn anew in every process. The seed picks the 4 colours here.
    rng = random.Random(f"lvmae.samples gradients {g.seed}")
    colours = ":".join(f"c{i}=0x{rng.randrange(1 << 24):06x}" for i in range(4))
    return f"gradients=s={g.size}:r={g.rate}:seed={g.seed}:n=4:speed=0.02:{colours}"


PALETTE: dict[str, Source] = {
    "smptebars": Source(
        "static SMPTE colour bars", lambda g: f"smptebars=s={g.size}:r={g.rate}", seeded=False
    ),
    "mandelbrot": Source("colourful Mandelbrot zoom, one full zoom per scene", _mandelbrot),
    "life": Source(
        "Conway's Game of Life: yellow cells leaving green mould on dark blue",
        lambda g: (
            f"life=s={g.size}:r={g.rate}:seed={g.seed}:mold=10:life_color=yellow"
            ":death_color=darkblue:mold_color=darkgreen"
        ),
    ),
    "gradients": Source("slowly rotating smooth 4-colour gradient", _gradients),
    "testsrc2": Source(
        "ffmpeg test card with moving shapes and a running timecode",
        lambda g: f"testsrc2=s={g.size}:r={g.rate}",
        seeded=False,
    ),
    "zoneplate": Source(
        "pulsing green/magenta zone plate (concentric rings)",
        lambda g: f"zoneplate=s={g.size}:r={g.rate}:kx2=256:ky2=256:kt=2",
        seeded=False,
    ),
    "colorchart": Source(
        "static colour-checker chart (24 patches)",
        lambda g: f"colorchart=r={g.rate}",
        seeded=False,
    ),
    "cellauto": Source(
        "black-and-white rule-110 cellular automaton scrolling down",
        lambda g: f"cellauto=s={g.size}:r={g.rate}:seed={g.seed}:rule=110",
    ),
    "perlin": Source(
        "drifting orange Perlin-noise clouds",
        lambda g: (
            f"perlin=s={g.size}:r={g.rate}:random_mode=seed:seed={g.seed}:octaves=3:tscale=0.5,"
            "format=rgb24,colorchannelmixer=rr=1:gg=0.55:bb=0.15"
        ),
    ),
    "sierpinski": Source(
        "red Sierpinski carpet sliding around",
        lambda g: (
            f"sierpinski=s={g.size}:r={g.rate}:seed={g.seed}:jump=20,"
            "format=rgb24,colorchannelmixer=gg=0.2:bb=0.2"
        ),
    ),
    "ocean": Source(
        "flickering blue noise (a dark-blue field with temporal grain)",
        lambda g: (
            f"color=c=0x1f4f8f:s={g.size}:r={g.rate},format=yuv420p,"
            f"noise=alls=12:allf=t:all_seed={g.seed}"
        ),
    ),
}
"""Scene types by name; :class:`Scene` ``.source`` is one of these keys."""

# a, b, c, d of the order recipes.
_ORDER_BASE = ("smptebars", "mandelbrot", "life", "gradients")


def _order(letters: str) -> tuple[str, ...]:
    return tuple(_ORDER_BASE["abcd".index(ch)] for ch in letters)


RECIPES: dict[str, tuple[str, ...]] = {
    # A Latin square over the same four scenes (a=smptebars, b=mandelbrot, c=life,
    # d=gradients): every class has the same scenes for the same share of time, so only
    # the order separates them; every position and every scene transition differs.
    "order_abcd": _order("abcd"),
    "order_badc": _order("badc"),
    "order_cdab": _order("cdab"),
    "order_dcba": _order("dcba"),
    # The harder variant: six scenes per video over the same multiset {a, a, b, b, c, d}
    # in every class (so the mean still carries nothing), scenes repeat within a video,
    # and durations are noisier (RECIPE_JITTER): order must be read over more, shorter and
    # more uneven scenes.
    "hard_abcadb": _order("abcadb"),
    "hard_badbca": _order("badbca"),
    "hard_cdabab": _order("cdabab"),
    "hard_dbacba": _order("dbacba"),
    # Different scenes: classes a time-blind baseline (mean pooling) separates too.
    "testcard": ("testsrc2", "zoneplate", "colorchart"),
    "textures": ("perlin", "cellauto", "ocean", "sierpinski"),
}
"""Classes of the sample library: recipe name -> the :data:`PALETTE` scenes, in order."""
if tuple(RECIPES) != SAMPLE_RECIPES:  # config validates recipe names against its copy
    raise ImportError(
        f"lvmae.config.SAMPLE_RECIPES {SAMPLE_RECIPES} must list the keys of RECIPES in order, "
        f"got {tuple(RECIPES)}"
    )

ORDER_RECIPES: tuple[str, ...] = ("order_abcd", "order_badc", "order_cdab", "order_dcba")
"""The recipes that share the same scenes and differ only in their order."""

HARD_ORDER_RECIPES: tuple[str, ...] = ("hard_abcadb", "hard_badbca", "hard_cdabab", "hard_dbacba")
"""The harder variant of :data:`ORDER_RECIPES`: six scenes per video (the same multiset in
every class, scenes repeating), durations jittered by :data:`RECIPE_JITTER`."""

DEFAULT_RECIPES: tuple[str, ...] = tuple(r for r in RECIPES if r not in HARD_ORDER_RECIPES)
"""The recipes written when none are named: all but the harder variant."""

RECIPE_JITTER: dict[str, float] = dict.fromkeys(HARD_ORDER_RECIPES, 0.75)
"""Per-recipe scene-duration jitter that overrides a smaller ``jitter`` of
:func:`plan_samples` (scene weights drawn from [1 - j, 1 + j])."""


@dataclass(frozen=True)
class Scene:
    """A stretch of one :data:`PALETTE` source lasting ``seconds`` seconds."""

    source: str
    seconds: float


# --------------------------------------------------------------------------- ffmpeg


def _run_ffmpeg(stream: ffmpeg.nodes.Node, *, what: str) -> None:
    """Run an ffmpeg-python graph quietly; raise RuntimeError with ffmpeg's stderr."""
    args = ffmpeg.compile(stream, cmd=ffmpeg_exe(), overwrite_output=True)
    _run_args([args[0], "-nostdin", "-hide_banner", "-loglevel", "error", *args[1:]], what=what)


def _run_args(args: list[str], *, what: str) -> None:
    try:
        proc = subprocess.run(
            args, capture_output=True, text=True, timeout=_FFMPEG_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"ffmpeg timed out after {exc.timeout} s making {what}") from exc
    if proc.returncode != 0:
        raise RuntimeError(
            f"ffmpeg failed (exit {proc.returncode}) making {what}: {proc.stderr.strip()}\n"
            f"command: {' '.join(args)}"
        )


def _check_geometry(width: int, height: int, fps: float) -> None:
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise ValueError(f"width and height must be even and >= 16 pixels, got {width}x{height}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")


def _scene_frames(scenes: Sequence[Scene], fps: float) -> list[int]:
    """Frames per scene: cumulative scene ends rounded to frames, so the total is
    ``round(sum(seconds) * fps)`` (within half a frame of the requested duration)."""
    ends, total = [], 0.0
    for scene in scenes:
        total += scene.seconds
        ends.append(round(total * fps))
    return [b - a for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def _derive_seed(*parts: object) -> int:
    digest = hashlib.sha256(json.dumps(parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _fingerprint(
    scenes: Sequence[Scene],
    *,
    width: int,
    height: int,
    fps: float,
    seed: int,
    crf: int,
    keyint_s: float,
    **extra: int,
) -> str:
    """What :func:`make_video` was asked for, hashed; stored in the mp4's comment tag."""
    spec = {
        **extra,
        "scenes": [[s.source, float(s.seconds)] for s in scenes],
        "size": [int(width), int(height)],
        "fps": float(fps),
        "seed": int(seed),
        "crf": int(crf),
        "keyint_s": float(keyint_s),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _part_path(path: Path) -> Path:
    """A unique hidden sibling of ``path`` to write into before renaming."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")


def _encode_h264(
    video: ffmpeg.nodes.Node, path: Path, *, crf: int, preset: str = "ultrafast", **options: Any
) -> Path:
    """Encode ``video`` to ``path`` as H.264 mp4 (``preset``, yuv420p, faststart, no audio),
    through a temporary file renamed into place. ``options`` are extra ffmpeg options."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _part_path(path)
    out = video.output(
        str(tmp),
        format="mp4",
        vcodec="libx264",
        preset=preset,
        crf=crf,
        pix_fmt="yuv420p",
        movflags="+faststart",
        an=None,
        **options,
    )
    try:
        _run_ffmpeg(out, what=str(path))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def make_video(
    path: str | os.PathLike[str],
    scenes: Sequence[Scene],
    *,
    width: int = 160,
    height: int = 120,
    fps: float = 10,
    seed: int = 0,
    crf: int = 30,
    keyint_s: float = 2.0,
    bframes: int = 0,
) -> Path:
    """Encode ``scenes`` one after another into one H.264 mp4.

    The file is libx264 (``ultrafast`` preset; ``veryfast``, with its deblocking filter and
    ``bframes`` B-frames in a pyramid, when ``bframes > 0``, as camera and web files are),
    yuv420p, constant frame rate, with the moov
    atom at the front (``+faststart``) and no audio. Scene ``i`` is ``PALETTE[source]``
    rendered with a variation seed derived from (``seed``, ``i``). Scene boundaries are
    rounded to whole frames cumulatively, so the video has ``round(sum(seconds) * fps)``
    frames: its duration is within half a frame of ``sum(seconds)``. The file is written
    to a temporary name and renamed, so ``path`` is never a half-written mp4. Its
    ``comment`` tag fingerprints the inputs (used by :func:`make_samples` to reuse files).

    Args:
        path: the output ``.mp4`` (parent directories are created).
        scenes: the scenes in order; each at least one frame long after rounding.
        width, height: frame size in pixels (even, >= 16).
        fps: frames per second.
        seed: variation seed for the seeded sources (Game of Life, gradients, ...).
        crf: x264 constant rate factor (higher = smaller, blurrier).
        keyint_s: maximum seconds between key frames (x264 also cuts at scene changes).
        bframes: most consecutive B-frames (0: none).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: no scenes, an unknown source, a scene shorter than one frame, or a bad
            size / rate.
        RuntimeError: ffmpeg failed (its stderr is in the message).
    """
    path = Path(path)
    _check_geometry(width, height, fps)
    if not scenes:
        raise ValueError("make_video needs at least one scene")
    unknown = sorted({s.source for s in scenes} - PALETTE.keys())
    if unknown:
        raise ValueError(f"unknown scene sources {unknown}; known: {sorted(PALETTE)}")
    frames = _scene_frames(scenes, fps)
    if min(frames) < 1:
        raise ValueError(f"every scene must last at least one frame (1/{fps:g} s): {scenes}")

    streams = []
    for i, (scene, n) in enumerate(zip(scenes, frames, strict=True)):
        spec = RenderSpec(width, height, fps, n, _derive_seed(seed, i))
        graph = (
            f"{PALETTE[scene.source].render(spec)},scale={width}:{height},setsar=1,"
            f"format=yuv420p,trim=end_frame={n},setpts=PTS-STARTPTS"
        )
        streams.append(ffmpeg.input(graph, f="lavfi"))
    video = streams[0] if len(streams) == 1 else ffmpeg.concat(*streams, v=1, a=0)
    extra = {"bframes": bframes} if bframes else {}  # files made before bframes keep their hash
    fingerprint = _fingerprint(
        scenes, width=width, height=height, fps=fps, seed=seed, crf=crf, keyint_s=keyint_s, **extra
    )
    return _encode_h264(
        video,
        path,
        crf=crf,
        g=max(1, round(keyint_s * fps)),
        metadata=f"comment={_COMMENT_PREFIX}{fingerprint}",
        **({"preset": "veryfast", "bf": bframes} if bframes else {}),
    )


def _has_fingerprint(path: Path, fingerprint: str, frames: int) -> bool:
    """Whether ``path`` is an mp4 this module wrote from the same inputs."""
    try:
        with av.open(str(path)) as container:
            comment = container.metadata.get("comment", "")
            streams = container.streams.video
            return (
                comment == f"{_COMMENT_PREFIX}{fingerprint}"
                and len(streams) == 1
                and streams[0].frames == frames
            )
    except (OSError, av.FFmpegError):
        return False


# --------------------------------------------------------------------------- sample library


@dataclass(frozen=True)
class SampleVideo:
    """One planned video of the sample library.

    Attributes:
        video_id: path relative to the library root (POSIX), ``<recipe>/<recipe>_<k>.mp4``.
        label: the recipe name (the class).
        split: ``train``, ``val`` or ``test``.
        scenes: the recipe's scenes with their jittered durations (seconds).
        seed: the variation seed passed to :func:`make_video`.
    """

    video_id: str
    label: str
    split: str
    scenes: tuple[Scene, ...]
    seed: int

    @property
    def seconds(self) -> float:
        """Total duration in seconds."""
        return sum(s.seconds for s in self.scenes)


def _split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    n_val = math.floor(n * val_fraction + 0.5)
    n_test = math.floor(n * test_fraction + 0.5)
    while n - n_val - n_test < 1:  # at least one training video
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n - n_val - n_test, n_val, n_test


def plan_samples(
    *,
    videos_per_recipe: int = SAMPLE_LIBRARY.videos_per_recipe,
    min_seconds: float = SAMPLE_LIBRARY.min_seconds,
    max_seconds: float = SAMPLE_LIBRARY.max_seconds,
    seed: int = SAMPLE_LIBRARY.seed,
    recipes: Sequence[str] | None = None,
    jitter: float = 0.4,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
) -> list[SampleVideo]:
    """The videos :func:`make_samples` writes, without writing them (deterministic in ``seed``).

    Each video lasts a duration drawn uniformly from [``min_seconds``, ``max_seconds``]
    seconds, shared among its recipe's scenes in proportion to weights drawn from
    [1 - ``jitter``, 1 + ``jitter``] (or the recipe's larger :data:`RECIPE_JITTER`: the
    :data:`HARD_ORDER_RECIPES`). Splits are stratified per recipe: ``round(n *
    val_fraction)`` val and ``round(n * test_fraction)`` test videos, the rest (at least
    one) train, assigned by a seeded shuffle.

    Returns:
        The videos, by recipe (in ``recipes`` order) then index ``k``.

    Raises:
        ValueError: an unknown or repeated recipe, ``videos_per_recipe < 1``, durations not
            ``0 < min_seconds <= max_seconds``, ``jitter`` outside [0, 1), or fractions
            outside [0, 1).
    """
    names = DEFAULT_RECIPES if recipes is None else tuple(recipes)
    unknown = sorted(set(names) - RECIPES.keys())
    if unknown or not names or len(set(names)) < len(names):
        raise ValueError(
            f"recipes must be distinct names from {sorted(RECIPES)}, got {list(names)}"
        )
    if videos_per_recipe < 1:
        raise ValueError(f"videos_per_recipe must be >= 1, got {videos_per_recipe}")
    if not 0 < min_seconds <= max_seconds:
        raise ValueError(f"need 0 < min_seconds <= max_seconds, got {min_seconds}, {max_seconds}")
    if not 0 <= jitter < 1:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1):
        raise ValueError(f"split fractions must be in [0, 1), got {val_fraction}, {test_fraction}")

    plan = []
    for recipe in names:
        sources = RECIPES[recipe]
        n_train, n_val, _ = _split_counts(videos_per_recipe, val_fraction, test_fraction)
        order = list(range(videos_per_recipe))
        random.Random(f"lvmae.samples split {seed} {recipe}").shuffle(order)
        split_of = {}
        for rank, k in enumerate(order):
            split_of[k] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
        for k in range(videos_per_recipe):
            rng = random.Random(f"lvmae.samples video {seed} {recipe} {k}")
            total = rng.uniform(min_seconds, max_seconds)
            j = max(jitter, RECIPE_JITTER.get(recipe, 0.0))
            weights = [rng.uniform(1 - j, 1 + j) for _ in sources]
            scenes = tuple(
                Scene(src, round(total * w / sum(weights), 3))
                for src, w in zip(sources, weights, strict=True)
            )
            plan.append(
                SampleVideo(
                    video_id=f"{recipe}/{recipe}_{k:03d}.mp4",
                    label=recipe,
                    split=split_of[k],
                    scenes=scenes,
                    seed=rng.randrange(2**31),
                )
            )
    return plan


def make_samples(
    out_dir: str | os.PathLike[str],
    *,
    width: int = SAMPLE_LIBRARY.width,
    height: int = SAMPLE_LIBRARY.height,
    fps: float = SAMPLE_LIBRARY.fps,
    workers: int = 2,
    crf: int = 30,
    keyint_s: float = 2.0,
    **plan_args: Any,
) -> Path:
    """Write the sample library: labelled long videos whose classes differ in scene order.

    Layout: ``<out_dir>/<recipe>/<recipe>_<k:03d>.mp4`` for every recipe of ``recipes``
    (default: :data:`DEFAULT_RECIPES`) and ``k < videos_per_recipe``, plus
    ``<out_dir>/labels.csv`` with header ``video_id,label,split``: ``video_id`` is the
    video's path relative to ``out_dir`` (POSIX), ``label`` the recipe, ``split`` one of
    ``train`` / ``val`` / ``test`` (see :func:`plan_samples`). Durations are drawn in
    [``min_seconds``, ``max_seconds``] seconds.

    The default recipes include two whose scenes differ (``testcard``, ``textures``);
    pass ``recipes=ORDER_RECIPES`` for classes that differ *only* in scene order, or
    ``recipes=HARD_ORDER_RECIPES`` for the harder variant (six scenes per video, noisier
    durations). Default: every recipe but the hard ones.

    Idempotent: a video whose file already exists with the same inputs (fingerprint in its
    mp4 ``comment`` tag, and the expected frame count) is kept as is; others are (re)encoded,
    ``workers`` at a time, each written under a temporary name and renamed. On a 2-core
    machine the default library (18 videos, ~1.9 h of video, ~90 MB) takes 15–20 s with
    two workers (~28 s with one), a 10–20 s library ~1.5 s, and a rerun ~0.1 s.

    Args:
        out_dir: the library root (created if missing).
        width, height: frame size in pixels (even, >= 16).
        fps: frames per second.
        workers: ffmpeg processes run at once (>= 1).
        crf: x264 constant rate factor.
        keyint_s: maximum seconds between key frames.
        **plan_args: :func:`plan_samples`'s keywords, with its defaults: ``videos_per_recipe``
            (videos per class), ``min_seconds`` / ``max_seconds`` (range of durations, in
            seconds), ``seed`` (durations, scene lengths, variations and splits),
            ``recipes`` (names from :data:`RECIPES`, default :data:`DEFAULT_RECIPES`).

    Returns:
        The path of ``labels.csv``.

    Raises:
        ValueError: bad arguments (see :func:`plan_samples` and :func:`make_video`), or a
            duration too short to give every scene a frame.
        RuntimeError: ffmpeg failed on a video.
    """
    out = Path(out_dir)
    _check_geometry(width, height, fps)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    plan = plan_samples(**plan_args)
    for video in plan:
        if min(_scene_frames(video.scenes, fps)) < 1:
            raise ValueError(f"{video.video_id}: a scene is shorter than one frame: {video}")

    def ensure(video: SampleVideo) -> None:
        path = out / video.video_id
        settings = {"width": width, "height": height, "fps": fps, "seed": video.seed}
        settings |= {"crf": crf, "keyint_s": keyint_s}
        fingerprint = _fingerprint(video.scenes, **settings)
        frames = sum(_scene_frames(video.scenes, fps))
        if path.is_file() and _has_fingerprint(path, fingerprint, frames):
            return
        make_video(path, video.scenes, **settings)

    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lvmae-samples") as pool:
        # list() re-raises the first failure.
        list(pool.map(ensure, plan))

    labels = out / "labels.csv"
    tmp = _part_path(labels)
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["video_id", "label", "split"])
        writer.writerows([v.video_id, v.label, v.split] for v in plan)
    tmp.replace(labels)
    return labels


# --------------------------------------------------------------------------- VFR


def make_vfr_video(
    path: str | os.PathLike[str],
    *,
    segments: Sequence[tuple[float, float]] = ((10, 3.0), (30, 3.0)),
    width: int = 160,
    height: int = 120,
    seed: int = 0,
    crf: int = 30,
) -> Path:
    """Write a variable-frame-rate H.264 mp4: consecutive parts at different frame rates.

    Part ``i`` is ``round(fps_i * seconds_i)`` frames of ``testsrc2`` (which prints its own
    timestamp) with temporal grain seeded from (``seed``, ``i``), timestamped ``1 / fps_i``
    seconds apart; timestamps pass through to the file unchanged (``-fps_mode
    passthrough``), in a time base exact for every integer rate. For testing that
    segmenting and frame sampling work on timestamps, not frame counts.

    Args:
        path: the output ``.mp4``.
        segments: ``(fps, seconds)`` per part, in order (frames per second, seconds).
        width, height: frame size in pixels.
        seed: variation seed for the grain.
        crf: x264 constant rate factor.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: no parts, or a part with a non-positive rate or under one frame.
        RuntimeError: ffmpeg failed.
    """
    path = Path(path)
    if not segments:
        raise ValueError("make_vfr_video needs at least one (fps, seconds) part")
    for fps, seconds in segments:
        _check_geometry(width, height, fps)
        if round(fps * seconds) < 1:
            raise ValueError(f"part ({fps}, {seconds}) is shorter than one frame")
    # A common time base in which every part's frame duration is a whole number of ticks.
    tick = math.lcm(*(round(fps) for fps, _ in segments if float(fps).is_integer())) or 1
    time_base = f"1/{tick}" if all(float(fps).is_integer() for fps, _ in segments) else "AVTB"
    streams = []
    for i, (fps, seconds) in enumerate(segments):
        n = round(fps * seconds)
        graph = (
            f"testsrc2=s={width}x{height}:r={fps:g},format=yuv420p,"
            f"noise=alls=6:allf=t:all_seed={_derive_seed(seed, i)},"
            f"trim=end_frame={n},setpts=PTS-STARTPTS"
        )
        streams.append(ffmpeg.input(graph, f="lavfi"))
    video = streams[0] if len(streams) == 1 else ffmpeg.concat(*streams, v=1, a=0)
    video = video.filter("settb", time_base)  # concat itself outputs in microseconds
    return _encode_h264(video, path, crf=crf, fps_mode="passthrough")


# --------------------------------------------------------------------------- broken inputs


def _top_level_boxes(data: bytes) -> dict[str, tuple[int, int]]:
    """ISO-BMFF top-level boxes: type -> (offset, size in bytes) of its first occurrence."""
    boxes: dict[str, tuple[int, int]] = {}
    offset = 0
    while offset + 8 <= len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        kind = data[offset + 4 : offset + 8].decode("latin-1")
        header = 8
        if size == 1:  # 64-bit size
            size = int.from_bytes(data[offset + 8 : offset + 16], "big")
            header = 16
        elif size == 0:  # to the end of the file
            size = len(data) - offset
        if size < header:
            break
        boxes.setdefault(kind, (offset, size))
        offset += size
    return boxes


def _remux(src: Path, dst: Path, *, faststart: bool) -> None:
    """Copy ``src``'s video stream into a new mp4, moov at the front or (default) the end."""
    flags = {"movflags": "+faststart"} if faststart else {}
    out = ffmpeg.input(str(src)).output(
        str(dst), format="mp4", c="copy", map="0:v:0", an=None, **flags
    )
    _run_ffmpeg(out, what=str(dst))


BROKEN_KINDS = (
    "zero_byte",
    "truncated",
    "text",
    "audio_only",
    "unreadable",
    "partial",
    "interrupted",
)
"""The kinds of :func:`write_broken_videos`, each a file ``<kind>.mp4``."""


def write_broken_videos(
    out_dir: str | os.PathLike[str], *, good_video: str | os.PathLike[str] | None = None
) -> dict[str, Path]:
    """Write the bad inputs a video pipeline must survive, one file per kind, ``<kind>.mp4``.

    - ``zero_byte``: an empty file.
    - ``truncated``: the first 30 % of the good video remuxed *without* faststart, so the
      moov atom (the index) is missing: no demuxer can open it.
    - ``text``: a UTF-8 text file named ``.mp4``.
    - ``audio_only``: a valid 2 s mp4 with one AAC audio stream and no video stream.
    - ``unreadable``: a dangling symbolic link named ``unreadable.mp4`` (its target does not
      exist), so opening it fails with ``FileNotFoundError`` even as root (``chmod 000``
      does not stop root). ``Path.exists()`` is False for it; directory listings and
      globs still return it.
    - ``partial``: the good video remuxed *with* faststart (moov at the front, complete
      index, full frame count and duration) with the second half of its ``mdat`` box (the
      coded frames) overwritten by seeded random bytes, file size unchanged: it opens (with
      PyAV and decord alike), about the first half of the frames decode, and decoding the
      later ones raises.
    - ``interrupted``: the same faststart remux cut off in the middle of its ``mdat`` box,
      like an interrupted download: the index promises every frame but only about half
      of the data is there. PyAV opens it and decodes the first half; decord's
      ``VideoReader`` reads every packet when it opens a file, so it raises at open.

    Args:
        out_dir: where to write (created if missing); existing files of these names are
            replaced.
        good_video: an mp4 with a video stream to damage for ``truncated``, ``partial`` and
            ``interrupted`` (left untouched); by default a 20 s 160x120 10 fps ``testsrc2``
            video made here.

    Returns:
        kind -> path, for the kinds in :data:`BROKEN_KINDS`.

    Raises:
        RuntimeError: ffmpeg failed, or the damaged file came out with an unexpected layout.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / f"{kind}.mp4" for kind in BROKEN_KINDS}
    for p in paths.values():
        if p.is_symlink() or p.is_file():
            p.unlink()

    paths["zero_byte"].write_bytes(b"")
    paths["text"].write_text(
        "This is not a video. It is a text file whose name ends in .mp4.\n", encoding="utf-8"
    )
    paths["unreadable"].symlink_to(out / "missing-target-of-unreadable.mp4")
    audio = ffmpeg.input("sine=frequency=440:sample_rate=16000:duration=2", f="lavfi")
    _run_ffmpeg(
        audio.output(str(paths["audio_only"]), format="mp4", acodec="aac", vn=None),
        what=str(paths["audio_only"]),
    )

    with tempfile.TemporaryDirectory(dir=out, prefix=".broken-") as tmp_dir:
        tmp = Path(tmp_dir)
        if good_video is None:
            good = make_video(tmp / "good.mp4", [Scene("testsrc2", 20.0)], keyint_s=2.0)
        else:
            good = Path(good_video)

        _remux(good, tmp / "moov_at_end.mp4", faststart=False)
        data = (tmp / "moov_at_end.mp4").read_bytes()
        boxes = _top_level_boxes(data)
        if "moov" not in boxes or boxes["moov"][0] < boxes.get("mdat", (len(data), 0))[0]:
            raise RuntimeError(f"remux of {good} did not put the moov atom after the media")
        paths["truncated"].write_bytes(data[: min(int(len(data) * 0.3), boxes["moov"][0])])

        _remux(good, tmp / "faststart.mp4", faststart=True)
        data = (tmp / "faststart.mp4").read_bytes()
        boxes = _top_level_boxes(data)
        if "mdat" not in boxes or boxes["moov"][0] > boxes["mdat"][0]:
            raise RuntimeError(f"faststart remux of {good} did not put the moov atom first")
        mdat_offset, mdat_size = boxes["mdat"]
        half, end = mdat_offset + mdat_size // 2, mdat_offset + mdat_size
        paths["interrupted"].write_bytes(data[:half])
        garbage = random.Random(f"lvmae.samples partial {good.name}").randbytes(end - half)
        paths["partial"].write_bytes(data[:half] + garbage + data[end:])
    return paths
