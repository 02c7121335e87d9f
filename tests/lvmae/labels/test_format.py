"""The labels format: reading, validating, writing, video ids; the package's API and error."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from lvmae import labels as lab
from lvmae.errors import LvmaeError
from lvmae.labels.format import (
    LabelsError,
    LabelSet,
    match_video_ids,
    read_labels,
    write_labels,
)


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


def test_class_index_survives_a_class_missing_from_a_split(tmp_path):
    rows = """a1.mp4 apple train, a2.mp4 apple val, a3.mp4 apple test,
              b1.mp4 banana train, b2.mp4 banana test,
              c1.mp4 cherry train, c2.mp4 cherry val"""  # no banana in val
    path = write_csv(tmp_path / "labels.csv", [row.split() for row in rows.split(",")])
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


# --------------------------------------------------------------------------- the package


def test_labels_error_is_an_lvmae_error_and_a_value_error(tmp_path):
    assert issubclass(LabelsError, LvmaeError) and issubclass(LabelsError, ValueError)
    assert lab.LabelsError is LabelsError
    with pytest.raises(LvmaeError, match="no labels file"):
        read_labels(tmp_path / "missing.csv")


def test_package_keeps_the_public_api():
    names = {
        "BREAKFAST_ACTIVITIES", "BREAKFAST_EXTENSIONS", "BREAKFAST_SPLITS", "DATASETS",
        "LABEL_COLUMNS", "LVU_CLASSIFICATION_TASKS", "LVU_REGRESSION_TASKS", "LVU_TASKS",
        "SPLITS", "TASKS", "UNKNOWN_IDS_KEY", "LabelSet", "LabelsError", "breakfast_labels",
        "coin_labels", "from_source", "lvu_labels", "match_video_ids", "read_labels",
        "stratified_split", "unknown_video_ids", "write_labels",
    }  # fmt: skip
    assert set(lab.__all__) == names
    assert all(hasattr(lab, n) for n in names)
    assert lab.SPLITS == ("train", "val", "test")
    assert lab.TASKS == ("classification", "regression")
    assert lab.DATASETS == ("lvu", "coin", "breakfast")
