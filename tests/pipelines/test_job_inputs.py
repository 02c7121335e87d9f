"""What the jobs after extraction read from an extraction's output: the encoder for text
queries is the one that made the embeddings."""

from __future__ import annotations

import pytest

from lvmae.encoders.models import build_encoder
from lvmae.storage import write_manifest
from pipelines.job_inputs import text_encoder


@pytest.mark.parametrize(("checkpoint", "seed"), [("tiny-seed3", 0), ("tiny-seed5", 5)])
def test_text_queries_use_the_tiny_encoder_that_made_the_embeddings(tmp_path, checkpoint, seed):
    """An extraction with ``--encoder-checkpoint tiny-seed3`` embeds with seed 3's weights:
    its text queries must too (the text and video towers of one model are aligned)."""
    write_manifest(str(tmp_path), {"encoder": {"name": "tiny", "checkpoint": checkpoint},
                                   "config": {"encoder_seed": seed}})  # fmt: skip
    made_it = build_encoder("tiny", checkpoint=checkpoint, device="cpu")
    assert text_encoder(str(tmp_path)).weights_sha1 == made_it.weights_sha1
    assert build_encoder("tiny", device="cpu").weights_sha1 != made_it.weights_sha1
