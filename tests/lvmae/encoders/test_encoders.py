"""Frozen encoders: the real LanguageBindVideo model (tiny width, seeded weights), real
``save_pretrained`` / ``from_pretrained`` round trips, the real hub client offline."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch

from lvmae.config import EncoderName
from lvmae.encoders.models import (
    CLIP_MEAN,
    CLIP_STD,
    DEFAULT_CHECKPOINTS,
    ENCODER_NAMES,
    TINY_ARCH,
    EncoderUnavailableError,
    FrozenEncoder,
    build_encoder,
    build_languagebind_random,
    describe_encoder,
    normalize_frames,
    save_tiny_checkpoint,
)
from lvmae.encoders.registry import ENCODERS, encoder_spec, resolve
from tests.fresh import fresh_python
from tests.lvmae.conftest import assert_unit_embeddings


def random_frames(batch: int, *, seed: int = 0, frames: int = 8, size: int = 224) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(batch, frames, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny() -> FrozenEncoder:
    return build_encoder("tiny", device="cpu", seed=0)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return random_frames(4)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    return str(save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-ckpt"), seed=0))


def test_tiny_encode_shape_dtype_unit_norm(tiny, frames):
    assert tiny.embedding_dim == 64
    assert_unit_embeddings(tiny.encode(frames), 4, 64)
    assert (tiny.frames_per_segment, tiny.image_size) == (8, 224)
    assert tiny.device == torch.device("cpu")


def test_tiny_accepts_torch_and_read_only_numpy(tiny, frames):
    emb = tiny.encode(frames)
    np.testing.assert_array_equal(tiny.encode(torch.from_numpy(frames.copy())), emb)
    read_only = frames.copy()
    read_only.flags.writeable = False  # Arrow-backed batches arrive like this
    np.testing.assert_array_equal(tiny.encode(read_only), emb)


def test_tiny_rows_do_not_depend_on_the_rest_of_the_batch(tiny, frames):
    emb = tiny.encode(frames)
    np.testing.assert_allclose(tiny.encode(frames[2:3])[0], emb[2], atol=1e-5)


def test_tiny_different_inputs_give_different_embeddings(tiny, frames):
    emb = tiny.encode(frames)
    cos = emb @ emb.T
    off_diagonal = cos[~np.eye(len(emb), dtype=bool)]
    assert np.all(off_diagonal < 1 - 1e-4)
    # a constant grey segment is far from noise too
    grey = np.full((1, 8, 224, 224, 3), 128, dtype=np.uint8)
    assert float(tiny.encode(grey)[0] @ emb[0]) < 1 - 1e-4


def test_tiny_same_seed_is_identical_other_seed_differs(tiny, frames):
    again = build_encoder("tiny", device="cpu", seed=0)
    np.testing.assert_array_equal(again.encode(frames), tiny.encode(frames))
    assert again.identity() == tiny.identity()

    other = build_encoder("tiny", device="cpu", seed=1)
    assert not np.allclose(other.encode(frames), tiny.encode(frames), atol=1e-3)
    assert other.identity()["weights_sha1"] != tiny.identity()["weights_sha1"]
    assert other.identity()["checkpoint"] == "tiny-seed1"


def test_tiny_build_leaves_the_global_rng_alone():
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    build_languagebind_random(TINY_ARCH, seed=7)
    np.testing.assert_array_equal(torch.rand(3).numpy(), expected.numpy())


@pytest.mark.slow
def test_tiny_is_bit_identical_across_processes(tiny, fresh_tiny):
    """A fresh interpreter gets the same embeddings (and importing the module is cheap: it
    does not import languagebind until an encoder is built)."""
    assert fresh_tiny["eager_imports"] == [], "eager import"
    np.testing.assert_array_equal(fresh_tiny["video"], tiny.encode(fresh_tiny["frames"]))


def test_tiny_checkpoint_string_round_trips(tiny):
    ident = tiny.identity()
    rebuilt = build_encoder(ident["name"], checkpoint=ident["checkpoint"], device="cpu")
    assert rebuilt.identity() == ident
    assert (
        build_encoder("tiny", checkpoint="tiny-seed3", device="cpu").identity()["checkpoint"]
        == "tiny-seed3"
    )
    with pytest.raises(ValueError, match="tiny-seed"):
        build_encoder("tiny", checkpoint="/some/dir", device="cpu")
    with pytest.raises(ValueError, match="disagrees"):
        build_encoder("tiny", checkpoint="tiny-seed3", seed=4, device="cpu")


def test_identity_is_json_and_complete(tiny):
    ident = json.loads(json.dumps(tiny.identity()))
    assert ident["name"] == "tiny"
    assert ident["checkpoint"] == "tiny-seed0"
    assert ident["embedding_dim"] == 64
    assert ident["frames_per_segment"] == 8
    assert ident["image_size"] == 224
    assert ident["dtype"] == "float32"
    assert len(ident["weights_sha1"]) == 16


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((2, 4, 224, 224, 3), "8 frames per segment"),
        ((2, 8, 112, 224, 3), "224x224"),
        ((2, 8, 224, 256, 3), "224x224"),
        ((2, 8, 224, 224), r"\[B, T, H, W, 3\]"),
        ((2, 8, 224, 224, 1), r"\[B, T, H, W, 3\]"),
    ],
)
def test_encode_rejects_wrong_shapes(tiny, shape, match):
    with pytest.raises(ValueError, match=match):
        tiny.encode(np.zeros(shape, dtype=np.uint8))


def test_encode_rejects_non_uint8(tiny):
    with pytest.raises(ValueError, match="uint8"):
        tiny.encode(np.zeros((1, 8, 224, 224, 3), dtype=np.float32))


def test_encode_empty_batch(tiny):
    emb = tiny.encode(np.zeros((0, 8, 224, 224, 3), dtype=np.uint8))
    assert emb.shape == (0, 64)
    assert emb.dtype == np.float32


@pytest.mark.parametrize("look_up", [build_encoder, describe_encoder, encoder_spec])
def test_unknown_encoder_name_lists_the_valid_ones(look_up):
    with pytest.raises(ValueError, match="unknown encoder 'clip'") as info:
        look_up("clip")
    for name in ENCODER_NAMES:
        assert name in str(info.value)


def test_every_registry_entry_names_its_functions():
    """An encoder is one registry entry naming its ``describe`` (torch-free) and ``build``;
    config accepts exactly the registry's names."""
    assert ENCODER_NAMES == tuple(ENCODERS) == get_args(EncoderName)
    for name, spec in ENCODERS.items():
        assert callable(resolve(spec.describe)) and callable(resolve(spec.build)), name
        assert DEFAULT_CHECKPOINTS[name] == spec.checkpoint
    assert describe_encoder("tiny", seed=3)["checkpoint"] == "tiny-seed3"


def test_normalize_frames_known_pixel():
    frames = torch.zeros((2, 8, 4, 4, 3), dtype=torch.uint8)
    frames[1, 5, 2, 3] = torch.tensor([255, 0, 128], dtype=torch.uint8)
    x = normalize_frames(frames)
    assert x.shape == (2, 3, 8, 4, 4)
    assert x.dtype == torch.float32
    expected = [
        (1.0 - CLIP_MEAN[0]) / CLIP_STD[0],
        (0.0 - CLIP_MEAN[1]) / CLIP_STD[1],
        (128 / 255 - CLIP_MEAN[2]) / CLIP_STD[2],
    ]
    np.testing.assert_allclose(x[1, :, 5, 2, 3].numpy(), expected, rtol=1e-6)
    black = [-m / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)]
    np.testing.assert_allclose(x[0, :, 0, 0, 0].numpy(), black, rtol=1e-6)
    # deterministic: no flips or crops
    assert torch.equal(normalize_frames(frames), x)


def test_normalize_frames_rejects_non_uint8():
    with pytest.raises(ValueError, match="uint8"):
        normalize_frames(torch.zeros((1, 8, 4, 4, 3)))


def test_languagebind_path_loads_a_local_checkpoint(tiny, frames, tiny_checkpoint):
    loaded = build_encoder("languagebind-video-ft", checkpoint=tiny_checkpoint, device="cpu")
    assert loaded.embedding_dim == 64  # from the loaded config, not the preset's 768
    np.testing.assert_array_equal(loaded.encode(frames), tiny.encode(frames))
    ident = loaded.identity()
    assert ident["name"] == "languagebind-video-ft"
    assert ident["checkpoint"] == tiny_checkpoint
    assert ident["weights_sha1"] == tiny.identity()["weights_sha1"]


def test_checkpoint_with_other_frame_count_is_rejected(tmp_path):
    model = build_languagebind_random(dataclasses.replace(TINY_ARCH, num_frames=4))
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="4 frames per segment"):
        build_encoder("languagebind-video-huge", checkpoint=str(tmp_path), device="cpu")


def test_missing_local_directory_is_unavailable(tmp_path):
    with pytest.raises(EncoderUnavailableError, match="does not exist"):
        build_encoder("languagebind-video-ft", checkpoint=str(tmp_path / "nope"), device="cpu")
    with pytest.raises(EncoderUnavailableError, match=r"config\.json"):
        build_encoder("languagebind-video-ft", checkpoint=str(tmp_path), device="cpu")


@pytest.mark.parametrize("missing", ["everything", "weights", "config"])
def test_describe_refuses_a_local_directory_without_a_model(tmp_path, tiny_checkpoint, missing):
    """The driver's pre-flight (no weights read) refuses what the workers could not load:
    an empty directory (whose config class would otherwise read as the defaults, 768-d),
    one without weights, one without config.json."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    keep = {"everything": (), "weights": ("config.json",), "config": ("model.safetensors",)}
    for name in keep[missing]:
        shutil.copy(Path(tiny_checkpoint, name), ckpt / name)
    with pytest.raises(EncoderUnavailableError, match="holds no LanguageBindVideo model") as info:
        describe_encoder("languagebind-video-ft", str(ckpt))
    assert ("weights" in str(info.value)) == (missing != "config")
    assert ("config.json" in str(info.value)) == (missing != "weights")
    with pytest.raises(EncoderUnavailableError, match="holds no LanguageBindVideo model"):
        build_encoder("languagebind-video-ft", checkpoint=str(ckpt), device="cpu")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_unreadable_weights_are_unavailable(tmp_path, tiny_checkpoint, damage):
    ckpt = Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"))
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000] if damage == "truncated" else b"not weights")
    with pytest.raises(EncoderUnavailableError, match=r"weights unreadable.*re-download"):
        build_encoder("languagebind-video-ft", checkpoint=str(ckpt), device="cpu")


@pytest.mark.parametrize(("checkpoint", "seed"), [("bogus", 0), ("tiny-seed3", 5)])
def test_describe_tiny_refuses_what_build_tiny_refuses(checkpoint, seed):
    """The driver's pre-flight refuses a tiny checkpoint before any work starts."""
    expected = r"tiny-seed<N>|disagrees"
    with pytest.raises(ValueError, match=expected):
        build_encoder("tiny", checkpoint=checkpoint, seed=seed, device="cpu")
    with pytest.raises(ValueError, match=expected):
        describe_encoder("tiny", checkpoint, seed)
    assert describe_encoder("tiny", "tiny-seed3", 0)["checkpoint"] == "tiny-seed3"


def test_hub_checkpoint_offline_without_cache_is_unavailable(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(EncoderUnavailableError) as info:
        build_encoder("languagebind-video-ft", device="cpu")
    message = str(info.value)
    assert DEFAULT_CHECKPOINTS["languagebind-video-ft"] == "LanguageBind/LanguageBind_Video_FT"
    assert "LanguageBind/LanguageBind_Video_FT" in message
    assert "huggingface-cli download" in message
    assert "HF_HOME" in message


@pytest.mark.gpu
def test_tiny_on_cuda_bf16_matches_cpu_fp32(tiny, frames):
    gpu = build_encoder("tiny", device="cuda", seed=0)
    assert gpu.identity()["dtype"] == "bfloat16"
    assert gpu.identity()["weights_sha1"] == tiny.identity()["weights_sha1"]
    emb = gpu.encode(torch.from_numpy(frames).cuda())
    assert emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    cos = np.sum(emb * tiny.encode(frames), axis=1)
    assert np.all(cos > 0.98)


def test_a_worker_building_tiny_imports_no_unused_integrations():
    """What a new extraction worker imports to build and run the ``tiny`` encoder (as
    ``pipelines.extract`` does): LanguageBind's model code without scikit-learn, SciPy or
    peft, which transformers and peft would otherwise load (lvmae.encoders.specs
    .lean_model_imports). SymPy is not in the list: PyTorch's compiler brings it, which
    transformers' ``PreTrainedModel`` needs (docs/design.md "A lighter start")."""
    code = (
        "import sys, numpy as np\n"
        "from lvmae.encoders.models import build_encoder\n"
        "enc = build_encoder('tiny', device='cpu')\n"
        "assert type(enc.model).__module__ == 'languagebind.video.modeling_video'\n"
        "assert enc.encode(np.zeros((1, 8, 224, 224, 3), np.uint8)).shape == (1, 64)\n"
        "print(sorted(m for m in ('sklearn', 'scipy', 'peft') if m in sys.modules))\n"
    )
    assert fresh_python(code) == "[]"


def test_lean_imports_still_build_lora_checkpoints_and_leave_the_packages_importable():
    """A LoRA checkpoint (``lora_r > 0``) reaches the real peft through the deferred names,
    and scikit-learn and SciPy import normally after LanguageBind's code is loaded."""
    code = (
        "from lvmae.encoders.specs import TINY_ARCH, _languagebind_video\n"
        "model_cls, _ = _languagebind_video()\n"
        "config = TINY_ARCH.to_config(); config.vision_config.lora_r = 2\n"
        "model = model_cls(config)\n"
        "import peft, scipy.optimize, sklearn.metrics\n"
        "print(isinstance(model.vision_model.encoder, peft.PeftModel), "
        "sklearn.metrics.roc_curve.__name__)\n"
    )
    assert fresh_python(code) == "True roc_curve"
