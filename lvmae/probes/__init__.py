"""Probes on frozen long-video features (LV-MAE §8), Ray-free.

After pre-training, the LV-MAE encoder is frozen and its outputs are cached once per video
(:meth:`lvmae.mae.model.LVMAE.encode`): the token sequence ``[L, W]`` with its [CLS] ``[W]``,
and the mean of the tokens over the real positions ``[W]``. Probes are small heads trained on
those cached features, so the encoder never runs inside the probe's epochs.

- :mod:`lvmae.probes.kinds`: the registry of probe kinds (name → head module and the paper's
  recipe), plain data that :mod:`lvmae.config` reads without torch.
- :mod:`lvmae.probes.heads`: :func:`~lvmae.probes.heads.build_probe` and one module per head
  (``linear``, ``attentive``, ``pooler``), plus the transformer baseline trained from scratch
  on raw segment embeddings (``baseline``).
- :mod:`lvmae.probes.train`: :func:`~lvmae.probes.train.train_probe`, the paper's protocol
  (Adam, per-epoch validation, test scores at the best validation epoch).
- :mod:`lvmae.probes.features`: cached per-video features, labels → splits, and
  :func:`~lvmae.probes.features.evaluate` (one probe on one labels set).
- :mod:`lvmae.probes.seeds`: one seed of a results row (what a Ray task runs,
  :func:`~lvmae.probes.seeds.fit_seed`).
- :mod:`lvmae.probes.results`: the typed results row
  :class:`~lvmae.probes.results.ProbeResult` (mean ± std over seeds).
- :mod:`lvmae.probes.metrics`: probe scores (top-k, confusion matrices, regression).

The recipes (:class:`~lvmae.config.ProbeConfig`) live in :mod:`lvmae.config`, which takes the
kinds and the paper's values from :mod:`lvmae.probes.kinds`. This package's ``__init__``
imports nothing, so that registry stays free of torch. Adding a probe kind: one module under
``heads/`` and one entry in :data:`lvmae.probes.kinds.KINDS` (docs/design.md "Plug-ins").

Sources: Naiman et al., "LV-MAE", ICCV 2025, §8 and Tables 6–8; Bardes et al., "V-JEPA",
2024 (attentive pooler); docs/design.md "Reference facts".
"""
