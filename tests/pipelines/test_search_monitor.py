"""Text / example search over a real extraction with the tiny encoder (exact and usearch
index), and the reconstruction monitor on a real checkpoint, tracked in real MLflow.

The extraction is the session's (``tests/pipelines/conftest.py``), never changed here: this
module searches its own copy (with the index built once), and a test that changes the
embeddings or the saved index gets a copy of its own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from lvmae.mae.checkpoints import save_checkpoint
from lvmae.mae.masking import make_mask
from lvmae.mae.model import LVMAE, model_config
from lvmae.mae.sequences import sequences_from_table
from lvmae.storage import StorageError, read_segments, segment_schema, write_table_atomic
from pipelines.job_inputs import text_encoder
from pipelines.monitor import run_monitor
from pipelines.search import INDEX_DIR, SearchError, search
from tests.pipelines.conftest import brute_force_ranks, copy_outputs, recall_summary

pytestmark = pytest.mark.slow  # the session's extraction

EXAMPLE = ("order_abcd/order_abcd_000.mp4", 3.0)  # its segment 1 (2-s segments)


@pytest.fixture(scope="module")
def archive(sample_extraction, tmp_path_factory) -> str:
    """This module's copy of the session's extraction, with the usearch index built."""
    emb = copy_outputs(sample_extraction, tmp_path_factory.mktemp("search") / "extract")
    search(str(emb), query="bars", exact=False, rebuild_index=True)
    return str(emb)


@pytest.fixture
def own_archive(sample_extraction, tmp_path) -> str:
    """A copy for one test that changes the embeddings or the saved index."""
    return str(copy_outputs(sample_extraction, tmp_path / "extract"))


def brute_force_scores(emb: str, vec: np.ndarray) -> dict[tuple[str, int], float]:
    """Cosine similarity of ``vec`` with every segment, one segment at a time."""
    table = read_segments(emb).to_pylist()
    v = np.asarray(vec, np.float64) / np.linalg.norm(vec)
    return {
        (r["video_id"], r["segment_index"]): float(
            np.dot(v, np.asarray(r["embedding"], np.float64) / np.linalg.norm(r["embedding"]))
        )
        for r in table
    }


def test_text_search_ranks_segments_exactly_and_with_the_index(archive):
    query = "a colourful fractal zoom"
    exact = search(archive, query=query, top_k=5, exact=True)
    brute = brute_force_scores(archive, text_encoder(archive).encode_text([query])[0])
    best = sorted(brute.values(), reverse=True)[:5]
    assert [r["rank"] for r in exact] == [1, 2, 3, 4, 5]
    assert [r["score"] for r in exact] == pytest.approx(best, abs=1e-5)
    for r in exact:  # each row is the segment it names, with that segment's own score
        assert brute[(r["video_id"], r["segment_index"])] == pytest.approx(r["score"], abs=1e-5)
    approx = search(archive, query=query, top_k=5, exact=False)
    # the best match's score (segments of a static scene can tie, so not its identity)
    assert approx[0]["score"] == pytest.approx(exact[0]["score"], abs=1e-4)


def test_index_is_saved_reloaded_and_rebuilt_when_embeddings_change(own_archive):
    emb = own_archive
    search(emb, query="bars", exact=False, rebuild_index=True)
    meta = Path(emb) / INDEX_DIR / "meta.json"
    stamp = meta.stat().st_mtime_ns
    search(emb, query="bars", exact=False)
    assert meta.stat().st_mtime_ns == stamp  # reloaded, not rebuilt
    extra = pa.table(
        {"video_id": ["extra.mp4"], "segment_index": pa.array([0], pa.int32()),
         "start_s": [0.0], "end_s": [2.0], "frame_indices": [[0]], "frame_times_s": [[0.0]],
         "embedding": pa.FixedSizeListArray.from_arrays(
             pa.array(np.full(64, 0.125, np.float32)), 64),
         "encoder": ["tiny"], "config_id": ["x"]},
        schema=segment_schema(64),
    )  # fmt: skip
    write_table_atomic(extra, emb, "segments")
    rows = search(emb, example=("extra.mp4", 1.0), exact=False, top_k=3)
    assert meta.stat().st_mtime_ns != stamp  # the embeddings changed: rebuilt
    assert all(r["video_id"] != "extra.mp4" for r in rows)  # the example itself is out


def test_search_by_example_leaves_the_example_out(archive):
    rows = search(archive, example=EXAMPLE, top_k=4, exact=True)
    table = read_segments(archive).to_pylist()
    (own,) = [r for r in table if (r["video_id"], r["segment_index"]) == (EXAMPLE[0], 1)]
    brute = brute_force_scores(archive, np.asarray(own["embedding"]))
    del brute[(EXAMPLE[0], 1)]
    assert [r["score"] for r in rows] == pytest.approx(
        sorted(brute.values(), reverse=True)[:4], abs=1e-5
    )
    assert (EXAMPLE[0], 1) not in {(r["video_id"], r["segment_index"]) for r in rows}


def test_bad_queries_are_clear_errors(archive, tmp_path):
    with pytest.raises(SearchError, match="empty query"):
        search(archive, query="   ")
    with pytest.raises(SearchError, match="covers"):
        search(archive, example=(EXAMPLE[0], 9999.0))
    with pytest.raises(StorageError, match="lvmae extract"):
        search(str(tmp_path / "none"), query="bars")


def brute_force_monitor(model: LVMAE, seqs: list[np.ndarray]) -> dict[str, float]:
    """The monitor by hand: mask each video's first max_tokens tokens (semantic masking at
    0.5, masks seed 0, one batch), reconstruct, and rank each masked token's true embedding
    among all the videos' real tokens by cosine to its reconstruction, counting the other
    tokens that score at least as high. The 12 videos fit in one batch (the monitor's 16)."""
    cap = model.config.max_tokens
    seqs = [s[:cap] for s in seqs]
    length = max(len(s) for s in seqs)
    x = torch.zeros(len(seqs), length, seqs[0].shape[1])
    real = torch.zeros(len(seqs), length, dtype=torch.bool)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = torch.as_tensor(np.array(s))  # a copy: the array is read-only
        real[i, : len(s)] = True
    mask = make_mask("semantic", x, real, 0.5, torch.Generator().manual_seed(0))
    with torch.no_grad():
        pred = model.eval()(x, real, mask).numpy()
    candidates = [t for s in seqs for t in s]
    offsets = np.cumsum([0] + [len(s) for s in seqs])
    b, t = np.nonzero(mask.numpy())
    ranks = brute_force_ranks(pred[b, t], candidates, offsets[b] + t)
    return {**recall_summary(ranks), "queries": len(ranks), "candidates": len(candidates)}


def test_monitor_reports_recall_and_captions_and_logs_to_mlflow(archive, tmp_path):
    from mlflow.tracking import MlflowClient

    cfg = model_config("tiny", input_dim=64, max_tokens=16)
    torch.manual_seed(0)
    model = LVMAE(cfg)
    ckpt = save_checkpoint(
        tmp_path / "pre" / "runs" / "lvmae" / "checkpoint_1",
        model_state=model.state_dict(),
        model_config=cfg.to_dict(),
        train_config={"val_fraction": 0.0, "mask_ratio": 0.5, "masking": "semantic",
                      "segment_s": 2.0, "experiment": "lvmae-pretrain", "run_name": "lvmae"},
        step=7,
    )  # fmt: skip
    (tmp_path / "pre" / "mlflow.db").touch()  # the pre-training store sits above the run
    captions = tmp_path / "captions.txt"
    captions.write_text("colour bars\na fractal zoom\ncellular life\nsoft gradients\n")
    metrics = run_monitor(str(ckpt), archive, str(tmp_path / "mon"), captions=str(captions))
    # no validation split in the checkpoint's config: every video (of >= 2 segments) is used
    seqs = [s for _, s in sequences_from_table(read_segments(archive)) if len(s) >= 2]
    expected = brute_force_monitor(model, seqs)
    assert {k: metrics[k] for k in expected} == pytest.approx(expected)
    page = (tmp_path / "mon" / "monitor.html").read_text()
    assert "masked" in page and any(c in page for c in ("bars", "fractal", "life", "gradients"))
    saved = json.loads((tmp_path / "mon" / "monitor.json").read_text())
    assert saved["R@1"] == metrics["R@1"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'pre' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("lvmae-pretrain")
    (run,) = client.search_runs([exp.experiment_id])
    history = client.get_metric_history(run.info.run_id, "monitor/R_at_1")
    assert [(m.step, m.value) for m in history] == [(7, metrics["R@1"])]


def test_an_index_built_for_another_encoder_is_a_clear_error(own_archive):
    emb = own_archive
    search(emb, query="bars", exact=False)
    meta = Path(emb) / INDEX_DIR / "meta.json"
    data = json.loads(meta.read_text())
    data["fingerprint"]["embedding_dim"] = 1024
    data["fingerprint"]["encoder"] = "languagebind-video-huge"
    meta.write_text(json.dumps(data))
    with pytest.raises(SearchError, match="rebuild-index"):
        search(emb, query="bars", exact=False)
    assert search(emb, query="bars", exact=False, rebuild_index=True)
