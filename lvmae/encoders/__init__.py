"""The frozen short-span encoders (LV-MAE stage 1): a segment's frames → one embedding.

- :mod:`lvmae.encoders.registry`: the registry, plain data (name → default checkpoint,
  ``describe`` and ``build`` functions); :mod:`lvmae.config` reads its names.
- :mod:`lvmae.encoders.specs`: what an encoder is, without torch (sizes,
  :func:`~lvmae.encoders.specs.describe_encoder`), for processes that only plan work.
- :mod:`lvmae.encoders.models`: the torch side (:class:`~lvmae.encoders.models.FrozenEncoder`,
  :func:`~lvmae.encoders.models.build_encoder`, the text tower).

This package imports nothing, so ``lvmae.encoders.registry`` and ``lvmae.encoders.specs``
stay free of torch. Adding an encoder: one module with its ``describe`` and ``build``, and
one registry entry (docs/design.md "Plug-ins").
"""
