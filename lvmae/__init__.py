"""lvmae: long-video representations with LV-MAE (Naiman et al., ICCV 2025, arXiv 2504.03501).

The core library, grouped by what flows through it: :mod:`lvmae.video` (video in: inputs,
decoding, segment plans, clips, sample videos), :mod:`lvmae.encoders` (the frozen short-span
encoders), :mod:`lvmae.mae` (the LV-MAE method), :mod:`lvmae.probes`, :mod:`lvmae.retrieval`
and :mod:`lvmae.labels`; at this level only the support layer (config, tracking, storage,
progress, errors). Pure Python + PyTorch; nothing here imports Ray.
"""

__version__ = "0.1.0"
