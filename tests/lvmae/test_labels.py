"""Labels: the one format, the LVU / COIN / Breakfast adapters, and bad input."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from lvmae.labels import (
    BREAKFAST_ACTIVITIES,
    LVU_CLASSIFICATION_TASKS,
    LVU_REGRESSION_TASKS,
    LabelsError,
    LabelSet,
    breakfast_labels,
    coin_labels,
    lvu_labels,
    match_video_ids,
    read_labels,
    stratified_split,
    unknown_video_ids,
    write_labels,
)

YT = ["aaaaaaaaaa1", "bbbbbbbbbb2", "c-c_ccccc03", "dddddddddd4", "eeeeeeeeee5", "ffffffffff6"]


def write_csv(path: Path, rows: list[list[str]], header=("video_id", "label", "split")) -> Path:
    lines = [",".join(header)] + [",".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def unsplit_rows(per_class: dict[str, int]) -> list[list[str]]:
    return [[f"{c}/{c}_{k:02d}.mp4", c] for c, n in per_class.items() for k in range(n)]


# --------------------------------------------------------------------------- the format


def test_read_labels_with_splits(tmp_path):
    path = write_csv(
        tmp_path / "labels.csv",
        [
            ["cooking/a.mp4", "pancake", "train"],
            ["cooking/b.mp4", "pancake", "Validation"],
            ["cooking/c.mp4", "pancake", "test"],
            ["cooking/d.mp4", "tea", "train"],
            ["cooking/e.mp4", "tea", "val"],
            ["cooking/f.mp4", "tea", " test "],
        ],
    )
    labels = read_labels(path)
    assert labels.task == "classification"
    assert labels.classes == ["pancake", "tea"]
    assert labels.table.column_names == ["video_id", "label", "split"]
    assert labels.split("val")["video_id"].to_pylist() == ["cooking/b.mp4", "cooking/e.mp4"]
    assert labels.split_sizes() == {"train": 2, "val": 2, "test": 2}
    assert labels.targets("test").tolist() == [0, 1]


def test_read_labels_without_split_is_stratified_and_deterministic(tmp_path):
    rows = unsplit_rows({"a": 10, "b": 6, "c": 3, "d": 1})
    path = write_csv(tmp_path / "labels.csv", rows, header=("video_id", "label"))
    one = read_labels(path, seed=3, min_examples_per_class=1)
    two = read_labels(path, seed=3, min_examples_per_class=1)
    assert one.table.equals(two.table)
    sizes = one.split_sizes()
    assert sizes == {"train": 14, "val": 3, "test": 3}  # round(20 · 0.15) = 3 each
    train = Counter(one.split("train")["label"].to_pylist())
    assert set(train) == {"a", "b", "c", "d"}  # every class keeps a train example
    val_test = Counter(
        one.table.filter(pc.not_equal(one.table["split"], "train"))["label"].to_pylist()
    )
    assert val_test["a"] >= 2  # the big class gets the biggest share
    other = read_labels(path, seed=4, min_examples_per_class=1)
    assert not other.table.equals(one.table)


def test_stratified_split_is_stable_per_class_and_keeps_train():
    labels = ["x"] * 7 + ["y"] * 5
    got = stratified_split(labels, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert got == stratified_split(labels, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert Counter(got) == {"train": 8, "val": 2, "test": 2}
    for c in "xy":
        assert "train" in [s for s, lab in zip(got, labels, strict=True) if lab == c]
    assert stratified_split(["only"], val_fraction=0.3, test_fraction=0.3, seed=0) == ["train"]
    with pytest.raises(LabelsError, match="< 1"):
        stratified_split(labels, val_fraction=0.5, test_fraction=0.5, seed=0)


def test_class_index_survives_a_class_missing_from_a_split(tmp_path):
    path = write_csv(
        tmp_path / "labels.csv",
        [
            ["a1.mp4", "apple", "train"],
            ["a2.mp4", "apple", "val"],
            ["a3.mp4", "apple", "test"],
            ["b1.mp4", "banana", "train"],
            ["b2.mp4", "banana", "test"],  # no banana in val
            ["c1.mp4", "cherry", "train"],
            ["c2.mp4", "cherry", "val"],
        ],
    )
    labels = read_labels(path)
    assert labels.class_index() == {"apple": 0, "banana": 1, "cherry": 2}
    assert labels.targets("val").tolist() == [0, 2]
    assert labels.targets("test").tolist() == [0, 1]
    restricted, unknown = labels.restrict_to(["a1.mp4", "a2.mp4", "a3.mp4", "c1.mp4", "c2.mp4"])
    assert unknown == ["b1.mp4", "b2.mp4"]
    assert restricted.classes == labels.classes  # indices stay comparable
    assert restricted.targets("val").tolist() == [0, 2]


def test_integer_classes_sort_numerically(tmp_path):
    rows = [[f"v{k}.mp4", str(k % 11)] for k in range(33)]
    labels = read_labels(write_csv(tmp_path / "l.csv", rows, header=("video_id", "label")))
    assert labels.task == "classification"
    assert labels.classes == [str(k) for k in range(11)]


def test_regression_is_inferred_and_forced(tmp_path):
    rows = [[f"v{k}.mp4", f"{k * 0.37:.2f}"] for k in range(20)]
    labels = read_labels(write_csv(tmp_path / "r.csv", rows, header=("video_id", "label")))
    assert labels.task == "regression" and labels.classes == [] and labels.class_index() == {}
    assert labels.table.schema.field("label").type == pa.float64()
    assert sum(labels.split_sizes().values()) == 20 and min(labels.split_sizes().values()) >= 1
    ints = [[f"v{k}.mp4", str(k)] for k in range(6)]
    forced = read_labels(
        write_csv(tmp_path / "i.csv", ints, header=("video_id", "label")), task="regression"
    )
    assert forced.task == "regression" and forced.targets("train").dtype.kind == "f"


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_round_trip(tmp_path, suffix):
    rows = [
        ["x/a b.mp4", "fried, egg", "train"],
        ["x/c.mp4", "fried, egg", "val"],
        ["x/d.mp4", "tea", "test"],
        ["x/e.mp4", "tea", "train"],
    ]
    table = pa.table(
        {k: [r[i] for r in rows] for i, k in enumerate(("video_id", "label", "split"))}
    )
    labels = LabelSet.from_table(table, required_splits=("train",))
    out = write_labels(labels, tmp_path / f"sub/labels{suffix}")
    assert out == tmp_path / f"sub/labels{suffix}" and out.is_file()
    again = read_labels(out, required_splits=("train",))
    assert again.table.equals(labels.table) and again.classes == labels.classes

    values = [1.0 / 3.0, 2.5, 1e-9, 7.0]
    reg = LabelSet.from_table(
        pa.table(
            {
                "video_id": ["a", "b", "c", "d"],
                "label": values,
                "split": ["train", "val", "test", "train"],
            }
        ),
    )
    assert reg.task == "regression"
    back = read_labels(write_labels(reg, tmp_path / f"reg{suffix}"), task="regression")
    assert back.table["label"].to_pylist() == values


def test_csv_header_matches_the_sample_library(tmp_path):
    table = pa.table({"video_id": ["a.mp4"], "label": ["x"], "split": ["train"], "extra": [1]})
    path = write_labels(table, tmp_path / "labels.csv")
    assert path.read_text() == "video_id,label,split\na.mp4,x,train\n"
    assert pq.read_table(write_labels(table, tmp_path / "l.pq")).column_names == [
        "video_id",
        "label",
        "split",
    ]


# --------------------------------------------------------------------------- bad input


def test_single_example_class_is_an_error_with_a_hint(tmp_path):
    rows = unsplit_rows({"a": 5, "b": 5, "lonely": 1})
    path = write_csv(tmp_path / "l.csv", rows, header=("video_id", "label"))
    with pytest.raises(LabelsError, match=r"'lonely' \(1\).*merge"):
        read_labels(path)


def test_empty_split_is_named(tmp_path):
    rows = [[f"{c}{k}.mp4", c, "train" if k < 2 else "test"] for c in "ab" for k in range(3)]
    path = write_csv(tmp_path / "l.csv", rows)
    with pytest.raises(LabelsError, match=r"split 'val' is empty \(train: 4, val: 0, test: 2\)"):
        read_labels(path)
    assert read_labels(path, required_splits=("train", "test")).split_sizes()["val"] == 0
    with pytest.raises(LabelsError, match="split 'val' has no labelled videos"):
        read_labels(path, required_splits=("train",)).split("val")
    tiny = write_csv(tmp_path / "t.csv", unsplit_rows({"a": 2}), header=("video_id", "label"))
    with pytest.raises(LabelsError, match=r"raise (val|test)_fraction"):
        read_labels(tiny)


def test_non_numeric_regression_target_names_rows(tmp_path):
    rows = [["a.mp4", "1.5"], ["b.mp4", "n/a"], ["c.mp4", "2.5"], ["d.mp4", "lots"]]
    path = write_csv(tmp_path / "l.csv", rows, header=("video_id", "label"))
    with pytest.raises(LabelsError, match=r"row 2 \('b.mp4'\): 'n/a', row 4 \('d.mp4'\)"):
        read_labels(path, task="regression")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty file"),
        ("video,label\na.mp4,x\n", "no video_id column"),
        ("video_id,label\n", "no labelled videos"),
        ("video_id,label\na.mp4,x,extra\n", "do not have the header's 2 fields"),
        ("video_id,label\na.mp4,\nb.mp4,x\n", r"row 1 \('a.mp4'\) lack"),
        ("video_id,label,split\na.mp4,x,train\nb.mp4,x,\n", "have no split"),
        ("video_id,label,split\na.mp4,x,train\nb.mp4,x,holdout\n", "'holdout'"),
        ("video_id,label\na.mp4,x\na.mp4,y\nb.mp4,x\n", "labelled twice.*a.mp4"),
    ],
)
def test_bad_files(tmp_path, text, match):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(LabelsError, match=match):
        read_labels(path)


def test_bad_paths_and_arguments(tmp_path):
    with pytest.raises(LabelsError, match="no labels file"):
        read_labels(tmp_path / "missing.csv")
    with pytest.raises(LabelsError, match=r"use a .csv or .parquet"):
        read_labels(tmp_path / "labels.json")
    path = write_csv(
        tmp_path / "l.csv", unsplit_rows({"a": 4, "b": 4}), header=("video_id", "label")
    )
    with pytest.raises(LabelsError, match="task must be one of"):
        read_labels(path, task="ranking")


def test_repeated_rows_are_dropped(tmp_path, caplog):
    rows = [[f"{c}{k}.mp4", c, s] for c in "ab" for k, s in enumerate(("train", "val", "test"))]
    path = write_csv(tmp_path / "l.csv", [*rows, rows[0]])
    with caplog.at_level(logging.WARNING, logger="lvmae.labels"):
        assert read_labels(path).table.num_rows == 6
    assert "dropped 1 repeated" in caplog.text


# --------------------------------------------------------------------------- video ids


def test_match_video_ids():
    known = ["lvu/aaaaaaaaaa1.mp4", "bf/P03/cam01/P03_tea.mp4", "bf/P03/cam02/P03_tea.mp4"]
    got = match_video_ids(["aaaaaaaaaa1", "zzzzzzzzzz9", "P03/cam02/P03_tea.avi"], known)
    assert got == ["lvu/aaaaaaaaaa1.mp4", None, "bf/P03/cam02/P03_tea.mp4"]
    assert match_video_ids(["abc", "P03/x.avi"]) == ["abc.mp4", "P03/x.mp4"]
    assert match_video_ids(["P03/x.avi"], suffix=None) == ["P03/x.avi"]
    with pytest.raises(LabelsError, match=r"several videos.*P03_tea"):
        match_video_ids(["P03_tea.avi"], known)


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


def test_breakfast_from_root(tmp_path):
    root = tmp_path / "breakfast"
    files = [
        "P03/cam01/P03_cereals.avi",
        "P03/stereo/P03_cereals_ch1.avi",
        "P16/webcam01/P16_friedegg.avi",
        "P20_stereo01_P20_scrambledegg.avi",
        "P42/cam02/P42_salat.avi",
        "P60/cam01/P60_tea.avi",
        "P03/README.txt",
    ]
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
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
