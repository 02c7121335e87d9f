"""The run report on real ``ProbeResult`` rows: real PNG files written by matplotlib, real
Markdown rendered by the ``markdown`` library, real files under tmp_path."""

from __future__ import annotations

import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from pydantic import ValidationError

from lvmae.probes.metrics import plot_confusion_matrix
from lvmae.probes.results import ProbeResult
from pipelines.report import anchor_confusion_matrices, best_by_task, results_table, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = ("drama", "comedy", "action")


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.img_src: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.img_src.append(dict(attrs)["src"])


def _parse(html: str) -> _Tags:
    parser = _Tags()
    parser.feed(html)
    return parser


def _cls_row(method, probe, top1, cm=None, task="genre"):
    """A classification result, as the probe stage writes one."""
    return ProbeResult(
        method=method, probe=probe, task=task, kind="classification",
        train=24, val=6, test=6, best_epoch=3, val_top1=top1,
        top1=top1, mean_class_accuracy=top1, confusion_matrix=cm,
    )  # fmt: skip


def _reg_row(method, probe, mse, mae, task="like_ratio"):
    return ProbeResult(
        method=method, probe=probe, task=task, kind="regression",
        train=24, val=6, test=6, best_epoch=1, val_mse=mse,
        mse=mse, mae=mae, n=6,
    )  # fmt: skip


@pytest.fixture
def probe_out(tmp_path):
    """A probe output directory with one real confusion-matrix PNG per classification row,
    each with different counts (so the copied file identifies its row)."""
    out = tmp_path / "probe"
    rows = []
    for i, (method, probe, top1) in enumerate(
        [("lvmae", "linear", 0.70), ("lvmae", "attentive", 0.80), ("mean-pool", "linear", 0.65)]
    ):
        name = f"confusion_genre_{method}_{probe}.png"
        cm = np.eye(3, dtype=np.int64) * (2 + i) + 1
        plot_confusion_matrix(cm, CLASSES, out / name, title=f"genre: {method} ({probe})")
        rows.append(_cls_row(method, probe, top1, name))
    rows += [
        _reg_row("lvmae", "linear", 0.30, 0.41),
        _reg_row("lvmae", "attentive", 0.45, 0.52),
        _reg_row("mean-pool", "linear", 0.50, 0.60),
    ]
    return out, rows


LOSSES = {
    "train/loss": [(s, 1.0 / (1 + 0.1 * s)) for s in range(0, 120, 10)],
    "val/loss": [(40, 0.5), (80, 0.4), (119, 0.35)],
}


def _task_line(md: str, task: str) -> str:
    lines = [line for line in md.splitlines() if line.startswith(f"**{task}**")]
    assert len(lines) == 1, md
    return lines[0]


def test_full_report_writes_markdown_html_and_valid_figures(tmp_path, probe_out):
    probe_dir, rows = probe_out
    files = write_report(
        tmp_path / "report",
        title="LV-MAE run",
        summary={"videos ok": 19, "videos failed": 5, "hours of video": 0.66},
        loss_history=LOSSES,
        results=rows,
        probe_dir=probe_dir,
        notes=["open the UI with `mlflow ui --backend-store-uri sqlite:///mlflow.db`"],
    )
    out = tmp_path / "report"
    assert files.markdown == out / "report.md"
    assert files.html == out / "report.html"
    names = sorted(p.name for p in files.figures)
    assert names == ["confusion_genre.png", "loss_curves.png", "probe_comparison.png"]
    for png in files.figures:
        assert png.parent == out / "figures"
        assert png.read_bytes()[:8] == PNG_MAGIC
        image = imread(png)
        assert image.ndim == 3
        assert image.shape[0] > 100
        assert image.shape[1] > 100
        assert image.shape[2] in (3, 4)

    # One matrix per task: the best LV-MAE row's (attentive), copied byte for byte.
    copied = out / "figures" / "confusion_genre.png"
    best_cm = probe_dir / "confusion_genre_lvmae_attentive.png"
    assert copied.read_bytes() == best_cm.read_bytes()
    assert copied.read_bytes() != (probe_dir / "confusion_genre_lvmae_linear.png").read_bytes()

    md = files.markdown.read_text(encoding="utf-8")
    assert md.startswith("# LV-MAE run\n")
    assert "| videos failed | 5 |" in md
    assert "| hours of video | 0.660 |" in md
    assert "| genre | lvmae | attentive | 1 | 0.800 | 0.800 |" in md
    assert "mlflow ui --backend-store-uri" in md
    assert "No " not in md  # nothing is reported missing

    genre = _task_line(md, "genre")
    assert "best is lvmae (attentive) at 0.800" in genre
    assert "higher than the mean-pool (linear) baseline at 0.650" in genre
    assert re.search(r"by 0\.150 top-1\.$", genre), genre
    like = _task_line(md, "like_ratio")
    assert "(MSE, lower is better)" in like
    assert "best is lvmae (linear) at 0.300" in like
    assert re.search(r"lower than .* at 0\.500 by 0\.200 MSE\.$", like), like

    page = files.html.read_text(encoding="utf-8")
    tags = _parse(page)
    assert tags.tags.count("table") == 2  # summary and results
    assert "<title>LV-MAE run</title>" in page
    assert sorted(Path(src).name for src in tags.img_src) == names
    for src in tags.img_src:
        assert not Path(src).is_absolute()
        assert (files.html.parent / src).is_file(), src


def test_empty_report_is_written_and_says_what_is_missing(tmp_path):
    files = write_report(tmp_path / "empty", title="Empty", summary={}, loss_history={}, results=[])
    assert files.figures == []
    assert not list((tmp_path / "empty" / "figures").iterdir())
    md = files.markdown.read_text(encoding="utf-8")
    assert "No probe results" in md
    assert "No loss history was recorded" in md
    assert "No run summary" in md
    assert "No confusion matrices" in md
    tags = _parse(files.html.read_text(encoding="utf-8"))
    assert "img" not in tags.tags
    assert "h1" in tags.tags


def test_report_rewrite_drops_stale_figures_and_reports_missing_matrices(tmp_path, probe_out):
    probe_dir, rows = probe_out
    out = tmp_path / "report"
    write_report(out, title="t", summary={}, loss_history=LOSSES, results=rows,
                 probe_dir=probe_dir)  # fmt: skip
    assert (out / "figures" / "loss_curves.png").is_file()
    # Second report: only NaN losses, and matrices that do not exist where they are looked for.
    files = write_report(
        out, title="t", summary={"steps": 0},
        loss_history={"train/loss": [(0, math.nan)]},
        results=rows, probe_dir=tmp_path / "elsewhere",
    )  # fmt: skip
    assert not (out / "figures" / "loss_curves.png").exists()
    assert [p.name for p in files.figures] == ["probe_comparison.png"]
    md = files.markdown.read_text(encoding="utf-8")
    assert "No loss history was recorded" in md
    assert "genre: confusion matrix not found" in md


def test_tuned_rows_find_matrices_under_the_task_directory(tmp_path):
    # tune.sweep.run_tune writes each matrix under <out>/<task>/ with a bare file name.
    name = "confusion_genre_lvmae-tuned_pooler.png"
    plot_confusion_matrix(np.eye(3, dtype=np.int64), CLASSES, tmp_path / "tune" / "genre" / name)
    rows = [_cls_row("lvmae-tuned", "pooler", 0.9, name)]
    files = write_report(tmp_path / "r", title="t", summary={}, loss_history={},
                         results=rows, probe_dir=tmp_path / "tune")  # fmt: skip
    assert (tmp_path / "r" / "figures" / "confusion_genre.png").is_file()
    md = files.markdown.read_text(encoding="utf-8")
    assert "no mean-pool baseline to compare with" in _task_line(md, "genre")


def test_probe_and_tuned_rows_show_their_own_matrices_in_one_report(tmp_path):
    """The report stage's case: the probe's rows and the sweep's, each anchored to its own
    output; the best (the tuned row) shows its matrix, not the probe's."""
    probe_dir, tune_dir = tmp_path / "probe", tmp_path / "probe" / "tune"
    probe_cm = "confusion_genre_lvmae_linear.png"
    tuned_cm = "confusion_genre_lvmae-tuned_linear.png"
    plot_confusion_matrix(np.eye(3, dtype=np.int64), CLASSES, probe_dir / probe_cm)
    plot_confusion_matrix(3 - np.eye(3, dtype=np.int64), CLASSES, tune_dir / "genre" / tuned_cm)
    rows = anchor_confusion_matrices([_cls_row("lvmae", "linear", 0.7, probe_cm)], probe_dir)
    rows += anchor_confusion_matrices(
        [_cls_row("lvmae-tuned", "linear", 0.9, tuned_cm), _cls_row("lvmae", "pooler", 0.5)],
        tune_dir,
    )
    assert [r.confusion_matrix for r in rows] == [
        str((probe_dir / probe_cm).absolute()),
        str((tune_dir / "genre" / tuned_cm).absolute()),
        None,
    ]
    files = write_report(tmp_path / "r", title="t", summary={}, loss_history={}, results=rows)
    md = files.markdown.read_text(encoding="utf-8")
    assert "genre: lvmae-tuned (linear)" in md and "genre: lvmae (linear)" not in md
    shown = imread(tmp_path / "r" / "figures" / "confusion_genre.png")
    assert np.array_equal(shown, imread(tune_dir / "genre" / tuned_cm))


def test_baseline_win_is_reported_with_the_lvmae_gap(tmp_path):
    rows = [_cls_row("lvmae", "linear", 0.55), _cls_row("mean-pool", "linear", 0.6)]
    files = write_report(tmp_path, title="t", summary={}, loss_history={}, results=rows)
    line = _task_line(files.markdown.read_text(encoding="utf-8"), "genre")
    assert "best is mean-pool (linear) at 0.600: the mean-pool baseline itself" in line
    assert "lvmae (linear) at 0.550, trails it by 0.050 top-1" in line


def test_best_by_task_uses_each_tasks_direction_and_skips_nan():
    rows = [
        _cls_row("lvmae", "linear", math.nan),
        _cls_row("lvmae", "attentive", 0.6),
        _cls_row("mean-pool", "linear", 0.5),
        _reg_row("lvmae", "linear", 0.9, 0.1),  # worse MSE, better MAE: MSE decides
        _reg_row("mean-pool", "linear", 0.2, 0.5),
        _cls_row("lvmae", "linear", math.nan, task="broken"),
    ]
    best = best_by_task(rows)
    assert list(best) == ["genre", "like_ratio"]
    assert best["genre"] is rows[1]
    assert best["like_ratio"] is rows[4]
    assert best_by_task([]) == {}


def test_a_result_without_task_or_method_fails_validation():
    # The report no longer checks rows for 'task' / 'method': the type requires them.
    fields = {"probe": "linear", "kind": "classification", "train": 1, "val": 1, "test": 1,
              "best_epoch": 0, "top1": 0.5}  # fmt: skip
    for missing in ("task", "method"):
        given = {"task": "genre", "method": "lvmae", **fields}
        del given[missing]
        with pytest.raises(ValidationError, match=missing):
            ProbeResult(**given)


def test_regression_best_is_the_lowest_mse(tmp_path):
    # By hand: MSEs 0.42, 0.17, nan, 0.31 -> the lowest finite one is 0.17 (index 1), though
    # its MAE (0.40) is the worst; the mean-pool baseline is 0.42, so the margin is 0.250.
    rows = [
        _reg_row("mean-pool", "linear", 0.42, 0.30, task="age"),
        _reg_row("lvmae", "attentive", 0.17, 0.40, task="age"),
        _reg_row("lvmae", "pooler", math.nan, 0.10, task="age"),
        _reg_row("lvmae", "linear", 0.31, 0.20, task="age"),
    ]
    best = best_by_task(rows)
    assert list(best) == ["age"]
    assert best["age"] is rows[1]
    files = write_report(tmp_path, title="t", summary={}, loss_history={}, results=rows)
    line = _task_line(files.markdown.read_text(encoding="utf-8"), "age")
    assert line == (
        "**age** (MSE, lower is better): best is lvmae (attentive) at 0.170, lower than the "
        "mean-pool (linear) baseline at 0.420 by 0.250 MSE."
    )


@pytest.mark.parametrize("tasks", [1, 3])
def test_probe_comparison_legend_is_not_cut_off(tmp_path, tasks):
    # Narrow panels, six long legend entries with error bars: wider than the panels.
    spread = {"seeds": 3, "top1_std": 0.04}
    rows = [
        _cls_row(method, probe, top1, task=f"task{t}").model_copy(update=spread)
        for t in range(tasks)
        for method, probe, top1 in [
            ("lvmae", "linear", 0.7), ("lvmae", "attentive", 0.8),
            ("lvmae", "attentive-learned", 0.75), ("mean-pool", "linear", 0.65),
            ("transformer", "scratch", 0.6), ("lvmae-tuned", "attentive-learned", 0.9),
        ]
    ]  # fmt: skip
    write_report(tmp_path, title="t", summary={}, loss_history={}, results=rows)
    image = imread(tmp_path / "figures" / "probe_comparison.png")[..., :3]
    # Nothing is drawn on the image's outer columns and rows: the saved area holds it all.
    for edge in (image[:, 0], image[:, -1], image[0], image[-1]):
        assert (edge > 0.99).all()


def test_results_table_formats_values_nan_and_missing_cells():
    rows = [
        _cls_row("lvmae", "linear", math.nan),
        _reg_row("lvmae", "linear", 1.23456, 0.5),
        _cls_row("mean-pool", "linear", np.float32(2 / 3)),
    ]
    table = results_table(rows).splitlines()
    assert table[0] == (
        "| task | method | probe | seeds | val | top-1 | mean class acc. | MSE | MAE | test n |"
    )
    # Grouped by task in order of first appearance; NaN is "–"; absent metrics are blank.
    assert table[2] == "| genre | lvmae | linear | 1 | – | – | – |  |  | 6 |"
    assert table[3] == "| genre | mean-pool | linear | 1 | 0.667 | 0.667 | 0.667 |  |  | 6 |"
    assert table[4] == "| like_ratio | lvmae | linear | 1 | 1.235 |  |  | 1.235 | 0.500 | 6 |"
    assert results_table([]) == "No probe results."


def test_results_table_shows_the_spread_and_the_tuned_rows_val_next_to_the_recipes():
    seeded = _cls_row("lvmae", "attentive", 0.75).model_copy(
        update={"seeds": 3, "top1_std": 0.05, "val_top1_std": 0.02}
    )
    tuned = _cls_row("lvmae-tuned", "linear", 0.8).model_copy(
        update={"seeds": 3, "top1_std": 0.1, "sweep_val": 0.9, "recipe_val": 0.85}
    )
    table = results_table([seeded, tuned]).splitlines()
    assert table[0] == (
        "| task | method | probe | seeds | val | top-1 | mean class acc. "
        "| sweep / recipe val | test n |"
    )
    assert (
        table[2]
        == "| genre | lvmae | attentive | 3 | 0.750 ± 0.020 | 0.750 ± 0.050 | 0.750 |  | 6 |"
    )
    assert table[3] == (
        "| genre | lvmae-tuned | linear | 3 | 0.800 | 0.800 ± 0.100 | 0.800 | 0.900 / 0.850 | 6 |"
    )
