"""Video in: from a list of long videos to the clips the frozen encoder sees.

- :mod:`lvmae.video.inputs`: which videos a run takes, and their ``video_id``.
- :mod:`lvmae.video.decoding`: decord and PyAV readers behind one interface.
- :mod:`lvmae.video.segments`: segment plans (fixed 5 s, or shots) and the frames sampled
  from each segment.
- :mod:`lvmae.video.shots`: cut detectors for ``segmenter: shots``.
- :mod:`lvmae.video.clips`: one file → its stream of preprocessed clips and a video report.
- :mod:`lvmae.video.samples`: generated sample videos (demo, tests, benchmarks).
- :mod:`lvmae.video.ffmpeg`: the ffmpeg binary the samples are made with.

Import the modules themselves; this package re-exports nothing. No Ray.
"""
