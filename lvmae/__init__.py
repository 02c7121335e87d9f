"""lvmae: long-video representations with LV-MAE (Naiman et al., ICCV 2025, arXiv 2504.03501).

The core library: video decoding and segment plans, frozen encoders, the embedding storage
schema, sample videos. Pure Python + PyTorch; nothing here imports Ray.
"""

__version__ = "0.1.0"
