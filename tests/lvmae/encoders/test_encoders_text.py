"""``encode_text``: the real LanguageBind text tower (tiny width, seeded weights), the tiny
encoder's hash tokenizer, and a real CLIP BPE tokenizer saved into a local checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers.models.clip.tokenization_clip import bytes_to_unicode

from lvmae.encoders.models import (
    TEXT_BATCH_SIZE,
    TINY_ARCH,
    TOKENIZER_FILES,
    EncoderUnavailableError,
    FrozenEncoder,
    HashWordTokenizer,
    build_encoder,
    load_languagebind_tokenizer,
    save_tiny_checkpoint,
)
from tests.lvmae.conftest import FRESH_TEXTS as TEXTS
from tests.lvmae.conftest import assert_unit_embeddings


@pytest.fixture(scope="module")
def tiny() -> FrozenEncoder:
    return build_encoder("tiny", device="cpu", seed=0)


def write_clip_tokenizer(directory: Path) -> None:
    """A small but real CLIP byte-level BPE tokenizer: every byte (alone and word-final), a
    few merges, and the special tokens last so that ``<|endoftext|>`` has the largest id —
    as in CLIP's own vocabulary, where the text transformer pools at ``argmax(input_ids)``."""
    chars = list(bytes_to_unicode().values())
    merges = ["t h", "th e</w>", "a n", "an d</w>", "o n</w>", "i n", "in g</w>"]
    tokens = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) <= TINY_ARCH.text_vocab_size
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


@pytest.fixture(scope="module")
def checkpoint_with_tokenizer(tmp_path_factory) -> str:
    path = save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-ckpt-tok"), seed=0)
    write_clip_tokenizer(path)
    return str(path)


def test_tiny_encode_text_shape_dtype_unit_norm(tiny):
    emb = tiny.encode_text(TEXTS)
    assert_unit_embeddings(emb, 3, tiny.embedding_dim)
    # same space as the video embeddings: same width, comparable by a dot product
    frames = np.zeros((1, 8, 224, 224, 3), dtype=np.uint8)
    assert (emb @ tiny.encode(frames).T).shape == (3, 1)


def test_tiny_encode_text_is_deterministic_and_discriminative(tiny):
    again = build_encoder("tiny", device="cpu", seed=0)
    np.testing.assert_array_equal(again.encode_text(TEXTS), tiny.encode_text(TEXTS))
    emb = tiny.encode_text(TEXTS)
    sims = emb @ emb.T
    assert np.all(sims[~np.eye(3, dtype=bool)] < 0.999)  # distinct texts, distinct vectors
    other_seed = build_encoder("tiny", device="cpu", seed=1).encode_text(TEXTS)
    assert not np.allclose(other_seed, emb)
    # normalisation: case and spacing do not matter, word order does
    a, b, c = tiny.encode_text(["A Dog  runs", "a dog runs", "runs dog a"])
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert a @ c < 0.999


@pytest.mark.slow
def test_tiny_encode_text_is_the_same_in_a_fresh_process(tiny, fresh_tiny):
    np.testing.assert_array_equal(fresh_tiny["text"], tiny.encode_text(TEXTS))


def test_encode_text_rejects_empty_queries_and_bare_strings(tiny):
    with pytest.raises(ValueError, match=r"empty query.*texts\[1\]"):
        tiny.encode_text(["a cat", ""])
    with pytest.raises(ValueError, match="empty query"):
        tiny.encode_text(["  \t\n"])
    with pytest.raises(ValueError, match="wrap it in a list"):
        tiny.encode_text("a cat")
    with pytest.raises(ValueError, match="must be a string"):
        tiny.encode_text(["a cat", 3])


def test_encode_text_of_no_texts_is_empty(tiny):
    emb = tiny.encode_text([])
    assert emb.shape == (0, 64) and emb.dtype == np.float32


def test_batched_equals_one_by_one(tiny):
    rng = np.random.default_rng(0)
    words = ["cook", "pan", "egg", "run", "car", "red", "sea", "talk", "film", "cut"]
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 12))) for _ in range(100)]
    assert len(texts) > TEXT_BATCH_SIZE  # crosses a batch boundary
    batched = tiny.encode_text(texts)
    single = np.concatenate([tiny.encode_text([t]) for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_long_text_is_truncated_to_the_context_length(tiny):
    max_len = TINY_ARCH.text_max_position_embeddings
    words = [f"w{i}" for i in range(200)]
    long, cut = tiny.encode_text([" ".join(words), " ".join(words[: max_len - 2])])
    np.testing.assert_allclose(long, cut, atol=1e-6)


def test_hash_tokenizer_pools_at_eos():
    tok = HashWordTokenizer(vocab_size=1000, max_length=77)
    out = tok(["Hello, world", "one"])
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.dtype == torch.long and ids.shape == mask.shape == (2, 5)
    assert ids[:, 0].tolist() == [998, 998]  # BOS
    assert ids.argmax(-1).tolist() == [4, 2]  # EOS, the last real token
    assert mask.sum(-1).tolist() == [5, 3]
    assert tok.words("Hello, world") == ["hello", ",", "world"]
    assert tok.token_id("hello") == HashWordTokenizer(1000, 77).token_id("hello")
    assert all(1 <= tok.token_id(w) < 998 for w in ["a", "b", "naïve", "日本"])


def test_languagebind_checkpoint_tokenizer_is_used(checkpoint_with_tokenizer, tiny):
    loaded = build_encoder(
        "languagebind-video-ft", checkpoint=checkpoint_with_tokenizer, device="cpu"
    )
    emb = loaded.encode_text(TEXTS)
    assert emb.shape == (3, 64) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert loaded.identity()["text_weights_sha1"] == tiny.identity()["text_weights_sha1"]
    # equals LanguageBind's own get_text_features on its own tokenizer's output
    tok = load_languagebind_tokenizer(checkpoint_with_tokenizer)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = loaded.model.get_text_features(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        )
    ref = torch.nn.functional.normalize(ref, dim=-1).numpy()
    np.testing.assert_allclose(emb, ref, atol=1e-5)
    # padded to the longest in the batch, masked: each text's vector is its own
    single = np.concatenate([loaded.encode_text([t]) for t in TEXTS])
    np.testing.assert_allclose(emb, single, atol=1e-5)


def test_checkpoint_without_tokenizer_fails_on_encode_text(checkpoint_with_tokenizer, tmp_path):
    bare = tmp_path / "no-tokenizer"
    shutil.copytree(checkpoint_with_tokenizer, bare)
    for name in TOKENIZER_FILES:
        (bare / name).unlink()
    enc = build_encoder("languagebind-video-ft", checkpoint=str(bare), device="cpu")  # lazy
    assert enc.encode(np.zeros((1, 8, 224, 224, 3), dtype=np.uint8)).shape == (1, 64)
    with pytest.raises(EncoderUnavailableError, match=r"no-tokenizer.*tokenizer.*vocab\.json"):
        enc.encode_text(["a cat"])
    assert enc.encode_text([]).shape == (0, 64)


def test_hub_tokenizer_offline_without_cache_is_unavailable(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(EncoderUnavailableError, match="LanguageBind/LanguageBind_Video_FT") as err:
        load_languagebind_tokenizer("LanguageBind/LanguageBind_Video_FT")
    assert "HF_HOME" in str(err.value)  # says how to provide it
