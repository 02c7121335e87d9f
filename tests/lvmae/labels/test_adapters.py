"""The LVU / COIN / Breakfast adapters, and :func:`lvmae.labels.from_source` over them."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from lvmae.labels import DATASETS, LabelsError, from_source
from lvmae.labels.breakfast import BREAKFAST_ACTIVITIES, breakfast_labels
from lvmae.labels.coin import coin_labels
from lvmae.labels.format import LabelSet, unknown_video_ids
from lvmae.labels.lvu import LVU_CLASSIFICATION_TASKS, LVU_REGRESSION_TASKS, lvu_labels

YT = ["aaaaaaaaaa1", "bbbbbbbbbb2", "c-c_ccccc03", "dddddddddd4", "eeeeeeeeee5", "ffffffffff6"]


# --------------------------------------------------------------------------- LVU


def write_lvu(root: Path) -> Path:
    lvu = root / "lvu_1.0"
    director = {
        "train": [
            "0 Alfred Hitchcock aaaaaaaaaa1 tt0052357",
            "0 Alfred Hitchcock bbbbbbbbbb2 tt0054215",
            "3 Spielberg c-c_ccccc03 tt0082971",
        ],
        "val": ["3 Spielberg dddddddddd4 tt0083866"],
        # a name that looks like a YouTube id must not be taken for one
        "test": ["5 Documentary eeeeeeeeee5 tt0000005", "", "3 Spielberg ffffffffff6 tt0000006"],
    }
    view_count = {
        "train": ["1000 aaaaaaaaaa1 tt1", "54.6 bbbbbbbbbb2 tt2"],
        "val": ["20 c-c_ccccc03 tt3"],
        "test": ["7 dddddddddd4 tt4"],
    }
    like_ratio = {
        "train": ["90 10 aaaaaaaaaa1 tt1"],
        "val": ["1 1 bbbbbbbbbb2 tt2"],
        "test": ["0 5 c-c_ccccc03 tt3"],
    }
    headers = {
        "director": "director_id director_name youtube_id imdb_id",
        "view_count": "view_count youtube_id imdb_id",
        "like_ratio": "like dislike youtube_id imdb_id",
    }
    for task, splits in (
        ("director", director),
        ("view_count", view_count),
        ("like_ratio", like_ratio),
    ):
        (lvu / task).mkdir(parents=True)
        for split, lines in splits.items():
            (lvu / task / f"{split}.csv").write_text("\n".join([headers[task], *lines]) + "\n")
    return lvu


def test_lvu_classification(tmp_path):
    lvu = write_lvu(tmp_path)
    table = lvu_labels(lvu, "director")
    assert table.column_names == ["video_id", "label", "split"]
    assert table["video_id"].to_pylist() == [f"{y}.mp4" for y in YT]
    assert table["label"].to_pylist() == [
        "Alfred Hitchcock",
        "Alfred Hitchcock",
        "Spielberg",
        "Spielberg",
        "Documentary",
        "Spielberg",
    ]
    assert table["split"].to_pylist() == ["train"] * 3 + ["val"] + ["test"] * 2
    by_index = lvu_labels(tmp_path, "director", label_from="index")  # the parent dir works too
    assert by_index["label"].to_pylist() == ["0", "0", "3", "3", "5", "3"]
    labels = LabelSet.from_table(by_index, min_examples_per_class=1)
    assert labels.classes == ["0", "3", "5"]


def test_lvu_regression_and_known_ids(tmp_path, caplog):
    lvu = write_lvu(tmp_path)
    assert set(LVU_REGRESSION_TASKS) == {"like_ratio", "view_count"}
    assert len(LVU_CLASSIFICATION_TASKS) == 7
    views = lvu_labels(lvu, "view_count")
    assert views.schema.field("label").type == pa.float64()
    assert views["label"].to_pylist() == pytest.approx([math.log(v) for v in (1000, 54.6, 20, 7)])
    likes = lvu_labels(lvu, "like_ratio")
    assert likes["label"].to_pylist() == pytest.approx([9.0, 5.0, 0.0])
    known = ["movies/aaaaaaaaaa1.mkv", "movies/c-c_ccccc03.webm", "movies/other.mp4"]
    with caplog.at_level(logging.WARNING, logger="lvmae.labels"):
        kept = lvu_labels(lvu, "like_ratio", video_ids=known)
    assert kept["video_id"].to_pylist() == ["movies/aaaaaaaaaa1.mkv", "movies/c-c_ccccc03.webm"]
    assert unknown_video_ids(kept) == ["bbbbbbbbbb2"]
    assert "1 of 3 labelled videos" in caplog.text
    labels = LabelSet.from_table(views, task="regression")
    assert labels.task == "regression"


def test_lvu_bad_input(tmp_path):
    lvu = write_lvu(tmp_path)
    with pytest.raises(LabelsError, match=r"unknown LVU task 'plot'.*way_speaking"):
        lvu_labels(lvu, "plot")
    with pytest.raises(LabelsError, match="no LVU task directory 'genre'"):
        lvu_labels(lvu, "genre")
    (lvu / "view_count" / "val.csv").write_text(
        "view_count youtube_id imdb_id\nmany c-c_ccccc03 tt3\n"
    )
    with pytest.raises(LabelsError, match=r"val.csv:2: LVU view_count needs a view count"):
        lvu_labels(lvu, "view_count")
    (lvu / "director" / "val.csv").write_text("h\n3 Spielberg short tt1\n")
    with pytest.raises(LabelsError, match=r"val.csv:2: no YouTube id"):
        lvu_labels(lvu, "director")
    (lvu / "director" / "val.csv").write_text("h\n3 Lucas dddddddddd4 tt1\n")
    with pytest.raises(LabelsError, match=r"several names.*Lucas / Spielberg.*label_from='index'"):
        lvu_labels(lvu, "director")
    (lvu / "director" / "val.csv").unlink()
    with pytest.raises(LabelsError, match="missing LVU split file"):
        lvu_labels(lvu, "director")


# --------------------------------------------------------------------------- COIN


def write_coin(path: Path) -> Path:
    database = {}
    for k in range(12):
        task = ["MakeCoffee", "ChangeTire", "PlantTree"][k % 3]
        database[f"coin{k:07d}"] = {
            "recipe_type": k % 3,
            "class": task,
            "subset": "testing" if k >= 9 else "training",
            "duration": 120.0 + k,
            "annotation": [{"id": "1", "segment": [1.0, 5.0], "label": "step"}],
        }
    path.write_text(json.dumps({"version": "1.0", "database": database}))
    return path


def test_coin(tmp_path):
    path = write_coin(tmp_path / "COIN.json")
    table = coin_labels(path)
    assert table.num_rows == 12
    assert table["video_id"].to_pylist()[0] == "coin0000000.mp4"
    assert Counter(table["split"].to_pylist()) == {"train": 9, "test": 3}
    assert set(table["label"].to_pylist()) == {"MakeCoffee", "ChangeTire", "PlantTree"}
    carved = coin_labels(path, val_fraction=0.34, seed=1)
    assert Counter(carved["split"].to_pylist()) == {"train": 6, "val": 3, "test": 3}
    assert carved.equals(coin_labels(path, val_fraction=0.34, seed=1))
    labels = LabelSet.from_table(carved)
    assert labels.classes == ["ChangeTire", "MakeCoffee", "PlantTree"]
    assert set(labels.split("val")["label"].to_pylist()) == set(labels.classes)

    known = [f"coin/coin{k:07d}.mp4" for k in range(0, 12, 2)]
    some = coin_labels(path, video_ids=known)
    assert some["video_id"].to_pylist() == known
    assert len(unknown_video_ids(some)) == 6


def test_coin_bad_input(tmp_path):
    with pytest.raises(LabelsError, match="cannot read COIN"):
        coin_labels(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"taxonomy": {}}))
    with pytest.raises(LabelsError, match="no 'database' object"):
        coin_labels(bad)
    bad.write_text(json.dumps({"database": {"x": {"class": "A", "subset": "holdout"}}}))
    with pytest.raises(LabelsError, match="subset other than training/testing: x"):
        coin_labels(bad)


# --------------------------------------------------------------------------- Breakfast


BREAKFAST_FILES = [
    "P03/cam01/P03_cereals.avi",
    "P03/stereo/P03_cereals_ch1.avi",
    "P16/webcam01/P16_friedegg.avi",
    "P20_stereo01_P20_scrambledegg.avi",
    "P42/cam02/P42_salat.avi",
    "P60/cam01/P60_tea.avi",
    "P03/README.txt",
]


def write_breakfast(root: Path) -> Path:
    for rel in BREAKFAST_FILES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    return root


def test_breakfast_from_root(tmp_path):
    root = write_breakfast(tmp_path / "breakfast")
    files = BREAKFAST_FILES
    table = breakfast_labels(root)
    assert table["video_id"].to_pylist() == sorted(f for f in files if f.endswith(".avi"))
    got = dict(zip(table["video_id"].to_pylist(), table["label"].to_pylist(), strict=True))
    assert got["P03/stereo/P03_cereals_ch1.avi"] == "cereals"
    assert got["P20_stereo01_P20_scrambledegg.avi"] == "scrambledegg"
    splits = dict(zip(table["video_id"].to_pylist(), table["split"].to_pylist(), strict=True))
    assert (
        splits["P03/cam01/P03_cereals.avi"] == "test"
        and splits["P42/cam02/P42_salat.avi"] == "train"
    )
    s2 = breakfast_labels(root, split="s2")
    test = s2.filter(pc.equal(s2["split"], "test"))
    assert test["label"].to_pylist() == ["friedegg", "scrambledegg"]
    assert "split" not in breakfast_labels(root, split=None).column_names
    assert set(table["label"].to_pylist()) <= set(BREAKFAST_ACTIVITIES)


def test_breakfast_val_holds_whole_participants():
    """Every camera's file of a recording, and every recording of a person, on one side."""
    paths = [
        f"P{p:02d}/{cam}/P{p:02d}_{act}.avi"
        for p in range(3, 40)
        for cam in ("cam01", "cam02", "webcam01")
        for act in ("coffee", "tea", "juice")
    ]
    table = breakfast_labels(paths, split="s1", val_fraction=0.15, seed=1)
    side: dict[str, set[str]] = {}
    for v, s in zip(table["video_id"].to_pylist(), table["split"].to_pylist(), strict=True):
        side.setdefault(v.split("/")[0], set()).add(s)
    assert all(len(s) == 1 for s in side.values())
    assert sum(s == {"val"} for s in side.values()) == round(0.15 * (39 - 15))


def test_breakfast_from_paths_and_known_ids():
    paths = ["P03/cam01/P03_tea.avi", "P17/cam01/P17_coffee.avi", "P30/cam01/P30_juice.avi"]
    assert (
        breakfast_labels(paths, suffix=".mp4")["video_id"].to_pylist()[0] == "P03/cam01/P03_tea.mp4"
    )
    known = ["kitchen/P03/cam01/P03_tea.mp4", "kitchen/P17/cam01/P17_coffee.mp4"]
    table = breakfast_labels(paths, split="s3", video_ids=known)
    assert table["video_id"].to_pylist() == known
    assert table["split"].to_pylist() == ["train", "train"]
    assert unknown_video_ids(table) == ["P30/cam01/P30_juice.avi"]
    # the project's own lower-case sample ids parse too
    assert breakfast_labels(["cooking/p03_cereals.mp4"])["label"].to_pylist() == ["cereals"]


def test_breakfast_bad_input(tmp_path):
    with pytest.raises(LabelsError, match=r"outside the scheme.*P03/cam01/P03_brunch.avi"):
        breakfast_labels(["P03/cam01/P03_brunch.avi", "P03/cam01/P03_tea.avi"])
    with pytest.raises(LabelsError, match="unknown Breakfast split 's5'"):
        breakfast_labels(["P03/cam01/P03_tea.avi"], split="s5")
    with pytest.raises(LabelsError, match="not a directory"):
        breakfast_labels(tmp_path / "nowhere")
    with pytest.raises(LabelsError, match="no videos"):
        breakfast_labels(tmp_path)


# --------------------------------------------------------------------------- from_source


def test_from_source_lvu(tmp_path):
    lvu = write_lvu(tmp_path)
    for task in ("director", "view_count", "like_ratio"):
        assert from_source("lvu", lvu, task=task).equals(lvu_labels(lvu, task))
    known = ["movies/aaaaaaaaaa1.mkv", "movies/c-c_ccccc03.webm"]
    got = from_source("lvu", str(lvu), task="like_ratio", video_ids=known, val_fraction=0.5)
    assert got.equals(lvu_labels(lvu, "like_ratio", video_ids=known))
    assert unknown_video_ids(got) == ["bbbbbbbbbb2"]


def test_from_source_coin(tmp_path):
    path = write_coin(tmp_path / "COIN.json")
    assert from_source("coin", path).equals(coin_labels(path, val_fraction=0.15))
    assert from_source("coin", path, val_fraction=0.0).equals(coin_labels(path))
    known = [f"coin/coin{k:07d}.mp4" for k in range(0, 12, 2)]
    got = from_source("coin", str(path), video_ids=known, val_fraction=0.34, task="ignored")
    assert got.equals(coin_labels(path, video_ids=known, val_fraction=0.34))


def test_from_source_breakfast(tmp_path):
    root = write_breakfast(tmp_path / "breakfast")
    assert from_source("breakfast", root).equals(breakfast_labels(root, val_fraction=0.15))
    got = from_source("breakfast", root, split="s2", val_fraction=0.0)
    assert got.equals(breakfast_labels(root, split="s2"))
    known = ["kitchen/P03/cam01/P03_cereals.mp4", "kitchen/P42/cam02/P42_salat.mp4"]
    got = from_source("breakfast", str(root), split="s4", video_ids=known)
    assert got.equals(breakfast_labels(root, split="s4", video_ids=known, val_fraction=0.15))
    assert got["video_id"].to_pylist() == known


def test_from_source_bad_input(tmp_path):
    assert DATASETS == ("lvu", "coin", "breakfast")
    with pytest.raises(LabelsError, match=r"unknown labels dataset 'kinetics'.*lvu, coin"):
        from_source("kinetics", tmp_path)
    lvu = write_lvu(tmp_path)
    for task in (None, ""):
        with pytest.raises(LabelsError, match="an LVU labels source needs a task: one of"):
            from_source("lvu", lvu, task=task)
    with pytest.raises(LabelsError, match="unknown LVU task 'plot'"):
        from_source("lvu", lvu, task="plot")
    with pytest.raises(LabelsError, match="unknown Breakfast split 's5'"):
        from_source("breakfast", tmp_path, split="s5")
