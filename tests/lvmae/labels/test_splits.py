"""Seeded stratified splits, and val carved from an adapter's train rows."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pytest

from lvmae.labels.common import LabelsError
from lvmae.labels.splits import carve_val, regression_strata, stratified_split


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


def test_regression_strata_are_quantile_bins():
    values = [float(v) for v in range(40, 0, -1)]  # 40 rows -> 4 bins of 10, largest last
    strata = regression_strata(values)
    assert Counter(strata) == {"0": 10, "1": 10, "2": 10, "3": 10}
    assert strata[0] == "3" and strata[-1] == "0"
    assert regression_strata([1.0, 2.0, 3.0]) == ["0", "0", "0"]


def test_carve_val():
    table = pa.table(
        {
            "video_id": [f"v{k}.mp4" for k in range(8)],
            "label": ["a", "b"] * 4,
            "split": ["train"] * 6 + ["test"] * 2,
        }
    )
    assert carve_val(table, 0.0, 0, "t") is table
    carved = carve_val(table, 0.34, 1, "t")
    assert carved["video_id"].equals(table["video_id"])
    assert Counter(carved["split"].to_pylist()) == {"train": 4, "val": 2, "test": 2}
    assert carved.equals(carve_val(table, 0.34, 1, "t"))
    no_train = table.set_column(2, "split", pa.array(["test"] * 8))
    with pytest.raises(LabelsError, match="t: no train videos to carve a val split from"):
        carve_val(no_train, 0.2, 0, "t")


def test_carve_val_by_group_keeps_each_group_on_one_side():
    people = [f"P{k % 10:02d}" for k in range(50)] + ["P10", "P11"] * 5  # 10 train people
    table = pa.table(
        {
            "video_id": [f"v{k}.mp4" for k in range(60)],
            "label": ["a", "b", "c"] * 20,
            "split": ["train"] * 50 + ["test"] * 10,
        }
    )
    carved = carve_val(table, 0.25, 3, "t", groups=people)
    split = carved["split"].to_pylist()
    sides = {p: {s for p2, s in zip(people, split, strict=True) if p2 == p} for p in people}
    assert all(len(s) == 1 for s in sides.values()), sides  # no person on two sides
    assert split[50:] == ["test"] * 10  # test rows untouched
    val_people = {p for p, s in sides.items() if s == {"val"}}
    assert len(val_people) == round(0.25 * 10)  # of the 10 people with train rows
    assert carved.equals(carve_val(table, 0.25, 3, "t", groups=people))
    one = carve_val(table.slice(0, 6), 0.2, 0, "t", groups=["P01"] * 6)  # nothing to move
    assert one["split"].to_pylist() == ["train"] * 6
