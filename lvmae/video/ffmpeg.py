"""The ffmpeg binary: the one shipped in the ``imageio-ffmpeg`` wheel, so no system package
is needed. ``LVMAE_FFMPEG`` (or ``IMAGEIO_FFMPEG_EXE``) points at another binary."""

from __future__ import annotations

import functools
import os


@functools.cache
def ffmpeg_exe() -> str:
    """Path of the ffmpeg executable.

    Raises:
        RuntimeError: no ffmpeg binary can be found.
    """
    override = os.environ.get("LVMAE_FFMPEG")
    if override:
        return override
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:  # imageio-ffmpeg raises RuntimeError with its own reasons
        raise RuntimeError(
            "no ffmpeg binary found: reinstall the project (`make install`, which brings the "
            "imageio-ffmpeg wheel) or set LVMAE_FFMPEG to an ffmpeg executable"
        ) from exc
