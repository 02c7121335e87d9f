"""Text / example search over a real extraction with the tiny encoder (exact and usearch
index), and the reconstruction monitor on a real checkpoint, tracked in real MLflow."""

from __future__ import annotations

import json

import pytest

from lvmae.checkpoints import save_checkpoint
from lvmae.config import ExtractConfig
from lvmae.model import LVMAE, model_config
from lvmae.storage import StorageError
from pipelines.extract import run_extraction
from pipelines.monitor import run_monitor
from pipelines.search import INDEX_DIR, SearchError, search


@pytest.fixture(scope="module")
def archive(tmp_path_factory, ray_local):
    from lvmae.samples import make_samples

    root = tmp_path_factory.mktemp("search")
    make_samples(root / "videos", videos_per_recipe=1, min_seconds=10, max_seconds=20, seed=2)
    out = root / "extract"
    run_extraction(str(root / "videos"), str(out), ExtractConfig(segment_s=2.0), progress=False)
    return root, str(out)


def test_text_search_ranks_segments_exactly_and_with_the_index(archive):
    _, emb = archive
    exact = search(emb, query="a colourful fractal zoom", top_k=5, exact=True)
    assert [r["rank"] for r in exact] == [1, 2, 3, 4, 5]
    scores = [r["score"] for r in exact]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)
    assert {"video_id", "segment_index", "start_s", "end_s"} <= set(exact[0])
    approx = search(emb, query="a colourful fractal zoom", top_k=5, exact=False)
    # the best match's score (segments of a static scene can tie, so not its identity)
    assert approx[0]["score"] == pytest.approx(exact[0]["score"], abs=1e-4)


def test_index_is_saved_reloaded_and_rebuilt_when_embeddings_change(archive):
    from pathlib import Path

    import numpy as np
    import pyarrow as pa

    from lvmae.storage import segment_schema, write_table_atomic

    _, emb = archive
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
    try:
        rows = search(emb, example=("extra.mp4", 1.0), exact=False, top_k=3)
        assert meta.stat().st_mtime_ns != stamp  # the embeddings changed: rebuilt
        assert all(r["video_id"] != "extra.mp4" for r in rows)  # the example itself is out
    finally:
        for f in Path(emb, "segments").glob("*.parquet"):
            if (
                "extra.mp4"
                in pa.parquet.read_table(f, columns=["video_id"])["video_id"].to_pylist()
            ):
                f.unlink()


def test_search_by_example_leaves_the_example_out(archive):
    _, emb = archive
    rows = search(emb, example=("order_abcd/order_abcd_000.mp4", 3.0), top_k=4, exact=True)
    assert len(rows) == 4
    assert ("order_abcd/order_abcd_000.mp4", 1) not in {
        (r["video_id"], r["segment_index"]) for r in rows
    }


def test_bad_queries_are_clear_errors(archive, tmp_path):
    _, emb = archive
    with pytest.raises(SearchError, match="empty query"):
        search(emb, query="   ")
    with pytest.raises(SearchError, match="covers"):
        search(emb, example=("order_abcd/order_abcd_000.mp4", 9999.0))
    with pytest.raises(StorageError, match="lvmae extract"):
        search(str(tmp_path / "none"), query="bars")


def test_monitor_reports_recall_and_captions_and_logs_to_mlflow(archive, tmp_path):
    from mlflow.tracking import MlflowClient

    _, emb = archive
    cfg = model_config("tiny", input_dim=64, max_tokens=16)
    ckpt = save_checkpoint(
        tmp_path / "pre" / "runs" / "lvmae" / "checkpoint_1",
        model_state=LVMAE(cfg).state_dict(),
        model_config=cfg.to_dict(),
        train_config={"val_fraction": 0.0, "mask_ratio": 0.5, "masking": "semantic",
                      "segment_s": 2.0, "experiment": "lvmae-pretrain", "run_name": "lvmae"},
        step=7,
    )  # fmt: skip
    (tmp_path / "pre" / "mlflow.db").touch()  # the pre-training store sits above the run
    captions = tmp_path / "captions.txt"
    captions.write_text("colour bars\na fractal zoom\ncellular life\nsoft gradients\n")
    metrics = run_monitor(str(ckpt), emb, str(tmp_path / "mon"), captions=str(captions))
    assert {"R@1", "R@5", "R@10", "median_rank"} <= set(metrics)
    assert 0 <= metrics["R@1"] <= metrics["R@5"] <= metrics["R@10"] <= 1
    assert metrics["candidates"] > metrics["queries"] > 0
    page = (tmp_path / "mon" / "monitor.html").read_text()
    assert "masked" in page and any(c in page for c in ("bars", "fractal", "life", "gradients"))
    saved = json.loads((tmp_path / "mon" / "monitor.json").read_text())
    assert saved["R@1"] == metrics["R@1"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'pre' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("lvmae-pretrain")
    (run,) = client.search_runs([exp.experiment_id])
    history = client.get_metric_history(run.info.run_id, "monitor/R_at_1")
    assert [(m.step, m.value) for m in history] == [(7, metrics["R@1"])]


def test_an_index_built_for_another_encoder_is_a_clear_error(archive):
    from pathlib import Path

    _, emb = archive
    search(emb, query="bars", exact=False)
    meta = Path(emb) / INDEX_DIR / "meta.json"
    saved = meta.read_text()
    data = json.loads(saved)
    data["fingerprint"]["embedding_dim"] = 1024
    data["fingerprint"]["encoder"] = "languagebind-video-huge"
    meta.write_text(json.dumps(data))
    try:
        with pytest.raises(SearchError, match="rebuild-index"):
            search(emb, query="bars", exact=False)
        assert search(emb, query="bars", exact=False, rebuild_index=True)
    finally:
        meta.write_text(saved)
