"""The LV-MAE method (Naiman et al., ICCV 2025): the masked-embedding autoencoder over a
video's sequence of segment embeddings, and how it is trained.

Read in this order:

- :mod:`lvmae.mae.model`: the encoder / decoder (:class:`~lvmae.mae.model.LVMAE`), presets,
  sin-cos positions.
- :mod:`lvmae.mae.masking`: random and semantic masking.
- :mod:`lvmae.mae.losses`: the reconstruction loss over masked, non-pad tokens.
- :mod:`lvmae.mae.packing`: fixed-shape packed batches, capacity buckets, token budgets, and
  the mask and loss of a packed batch computed on the device.
- :mod:`lvmae.mae.step`: the training step over packed batches (compiled and replayed as a
  CUDA graph on GPUs; one flat gradient buffer for accumulation and data parallelism).
- :mod:`lvmae.mae.sequences`: per-video sequences, training windows, batches, epoch order.
- :mod:`lvmae.mae.optim`: AdamW parameter groups and the warm-up + cosine schedule.
- :mod:`lvmae.mae.engine`: one pre-training epoch and evaluation, Ray-free.
- :mod:`lvmae.mae.checkpoints`: saving and loading checkpoints.
- :mod:`lvmae.mae.monitor`: reconstruction retrieval on held-out videos.
- :mod:`lvmae.mae.model_registry`: the trained encoder in the MLflow model registry.

Import the modules themselves; this package re-exports nothing. No Ray.
"""
