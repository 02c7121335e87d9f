"""The frozen short-span encoders (LV-MAE stage 1): a segment's frames → one embedding.

- :mod:`lvmae.encoders.specs`: what an encoder is, without torch (registry, sizes,
  :func:`~lvmae.encoders.specs.describe_encoder`), for processes that only plan work.
- :mod:`lvmae.encoders.models`: the torch side (:class:`~lvmae.encoders.models.FrozenEncoder`,
  :func:`~lvmae.encoders.models.build_encoder`, the text tower).

This package imports nothing, so ``lvmae.encoders.specs`` stays free of torch.
"""
