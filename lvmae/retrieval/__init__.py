"""Retrieval over segment embeddings, by cosine similarity.

- :mod:`lvmae.retrieval.index`: exact search and the saved HNSW index (``lvmae search``).
- :mod:`lvmae.retrieval.ranks`: the reconstruction monitor's ranks, recall@k and median rank.

Import the modules themselves; this package re-exports nothing. Pure numpy + usearch; no Ray.
"""
