"""The run report that ends ``lvmae run``: Markdown, the same rendered to HTML, and figures.

Layout under ``out``::

    report.md                 title, summary table, probe results, figures, notes
    report.html               report.md rendered by the ``markdown`` library (tables extension)
    figures/loss_curves.png   pre-training losses vs optimizer step (when there is a history)
    figures/probe_comparison.png   the main metric per task, one bar per method × probe
    figures/confusion_<task>.png   one confusion matrix per classification task

Each task is scored by one main metric, chosen for all its rows: top-1 accuracy (a fraction
in ``[0, 1]``, higher is better) when the rows are classification rows, otherwise the first
regression metric present among MSE (the paper's, LV-MAE §8 Table 7, and the metric the
probes select epochs by; lower is better), MAE (lower) and R² (higher). Regression metrics
are in the targets' own units.

Probe rows are those of :func:`pipelines.probe.run_probe` and :func:`tune.sweep.run_tune`
(see ``pipelines.probe._row``). Missing inputs (no rows, no loss history, a confusion matrix
that cannot be found) still give a complete report that says what is missing.
"""

from __future__ import annotations

import html
import math
import numbers
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ReportFiles",
    "best_by_task",
    "main_metric",
    "results_table",
    "write_report",
]

FIGURES_DIR = "figures"
LOSS_FIGURE = "loss_curves.png"
PROBE_FIGURE = "probe_comparison.png"
BASELINE = "mean-pool"
LVMAE_PREFIX = "lvmae"  # "lvmae" and "lvmae-tuned"

# Main-metric candidates: (row key, "max" | "min", label). Classification is top-1; the
# regression ones are tried in this order.
_CLASSIFICATION_METRIC = ("top1", "max", "top-1")
_REGRESSION_METRICS = (("mse", "min", "MSE"), ("mae", "min", "MAE"), ("r2", "max", "R²"))

# Results-table metric columns (row key, header), in display order.
_METRIC_COLUMNS = (
    ("top1", "top-1"),
    ("top5", "top-5"),
    ("mean_class_accuracy", "mean class acc."),
    ("mse", "MSE"),
    ("mae", "MAE"),
    ("r2", "R²"),
)

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; height: auto; }
code { background: #f3f3f3; padding: 0 0.2rem; }
"""


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote: ``markdown`` (report.md), ``html`` (report.html) and
    ``figures`` (every PNG under ``figures/`` that the report shows)."""

    markdown: Path
    html: Path
    figures: list[Path] = field(default_factory=list)


# --------------------------------------------------------------------------- metrics


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a real number (Python or numpy; bools excluded), else
    None."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def _finite(value: Any) -> float | None:
    x = _number(value)
    return x if x is not None and math.isfinite(x) else None


def _task(row: Mapping[str, Any], index: int) -> str:
    if "task" not in row or "method" not in row:
        raise ValueError(f"probe row {index} needs 'task' and 'method' keys; got {sorted(row)}")
    return str(row["task"])


def _by_task(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Rows grouped by task, tasks and rows in their order of first appearance."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(_task(row, i), []).append(row)
    return groups


def main_metric(rows: Sequence[Mapping[str, Any]]) -> tuple[str, str, str] | None:
    """The main metric of one task's rows: ``(row key, "max" | "min", label)``.

    Top-1 accuracy when any row is a classification row (``kind == "classification"`` or a
    ``top1`` key); otherwise the first of MSE, MAE, R² that some row holds. None when the rows
    hold none of these.
    """
    if any(r.get("kind") == "classification" or "top1" in r for r in rows):
        return _CLASSIFICATION_METRIC
    for candidate in _REGRESSION_METRICS:
        if any(candidate[0] in r for r in rows):
            return candidate
    return None


def _better(a: float, b: float, mode: str) -> bool:
    return a > b if mode == "max" else a < b


def _best(rows: Iterable[Mapping[str, Any]], key: str, mode: str) -> Mapping[str, Any] | None:
    """The row with the best finite ``key`` (the first one on ties), or None."""
    best, best_value = None, math.nan
    for row in rows:
        value = _finite(row.get(key))
        if value is not None and (best is None or _better(value, best_value, mode)):
            best, best_value = row, value
    return best


def best_by_task(rows: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The best row of each task by its :func:`main_metric` (highest top-1 / R², lowest MSE /
    MAE; the first row on ties). Rows whose main metric is missing or not finite are never
    picked, and a task none of whose rows has a finite main metric is left out.

    Args:
        rows: probe result rows (each with at least ``task`` and ``method``).

    Returns:
        ``{task: row}`` in the tasks' order of first appearance (the row objects themselves).

    Raises:
        ValueError: a row without a ``task`` or ``method`` key.
    """
    best: dict[str, Mapping[str, Any]] = {}
    for task, group in _by_task(rows).items():
        metric = main_metric(group)
        row = _best(group, metric[0], metric[1]) if metric else None
        if row is not None:
            best[task] = row
    return best


# --------------------------------------------------------------------------- Markdown


def _cell(value: Any) -> str:
    """A table cell: floats to 3 decimals, NaN / None as "–", pipes and newlines escaped."""
    if value is None:
        return "–"
    if not isinstance(value, numbers.Integral) and (number := _number(value)) is not None:
        return "–" if math.isnan(number) else f"{number:.3f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], body: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def _test_size(row: Mapping[str, Any]) -> Any:
    return row.get("test", row.get("n"))


def results_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The probe results as a Markdown table (also fit to print on a terminal).

    Columns: task, method, probe, then each metric that some row holds (top-1, top-5, mean
    class accuracy as fractions in ``[0, 1]``; MSE, MAE in the targets' units; R²), then
    ``test n`` (the test-split size, from the row's ``test`` or ``n``) when some row has it.
    Floats are written with 3 decimals; NaN and None as "–"; a metric a row does not have is
    left blank. Rows are grouped by task (in order of first appearance), keeping their order.

    Returns:
        The table without a trailing newline, or ``"No probe results."`` when ``rows`` is
        empty.

    Raises:
        ValueError: a row without a ``task`` or ``method`` key.
    """
    groups = _by_task(rows)
    if not groups:
        return "No probe results."
    ordered = [row for group in groups.values() for row in group]
    metrics = [(k, h) for k, h in _METRIC_COLUMNS if any(k in r for r in ordered)]
    with_n = any(_test_size(r) is not None for r in ordered)
    header = ["task", "method", "probe"] + [h for _, h in metrics] + (["test n"] if with_n else [])

    def cells(row: Mapping[str, Any]) -> list[str]:
        out = [_cell(row["task"]), _cell(row["method"]), _cell(row.get("probe", ""))]
        for key, _ in metrics:
            value = row.get(key)
            number = _number(value)
            out.append("" if key not in row else _cell(number if number is not None else value))
        if with_n:
            size = _test_size(row)
            out.append("" if size is None else _cell(size))
        return out

    return _table(header, (cells(r) for r in ordered))


def _name(row: Mapping[str, Any]) -> str:
    probe = row.get("probe")
    return f"{row['method']} ({probe})" if probe else str(row["method"])


def _task_sentence(task: str, group: Sequence[Mapping[str, Any]]) -> str:
    """One sentence: the best method of ``task`` and its margin over the mean-pool baseline."""
    metric = main_metric(group)
    if metric is None:
        return f"**{_cell(task)}**: no row has a known metric (top-1, MSE, MAE or R²)."
    key, mode, label = metric
    direction = "higher" if mode == "max" else "lower"
    head = f"**{_cell(task)}** ({label}, {direction} is better)"
    best = _best(group, key, mode)
    if best is None:
        return f"{head}: no row has a finite {label}."
    best_value = float(best[key])
    text = f"{head}: best is {_name(best)} at {best_value:.3f}"
    baseline = _best((r for r in group if r["method"] == BASELINE), key, mode)
    if baseline is None:
        return f"{text}; there is no {BASELINE} baseline to compare with."
    base_value = float(baseline[key])
    if baseline is not best:
        margin = abs(best_value - base_value)
        versus = (
            f"tied with the {_name(baseline)} baseline"
            if margin == 0
            else f"{direction} than the {_name(baseline)} baseline at {base_value:.3f} "
            f"by {margin:.3f} {label}"
        )
        return f"{text}, {versus}."
    others = (r for r in group if str(r["method"]).startswith(LVMAE_PREFIX))
    lvmae = _best(others, key, mode)
    if lvmae is None:
        return f"{text}: the {BASELINE} baseline itself."
    gap = abs(base_value - float(lvmae[key]))
    return (
        f"{text}: the {BASELINE} baseline itself; the best LV-MAE row, {_name(lvmae)} at "
        f"{float(lvmae[key]):.3f}, trails it by {gap:.3f} {label}."
    )


# --------------------------------------------------------------------------- figures


def _new_figure(width: float, height: float):
    """A matplotlib Figure (constrained layout) on an Agg canvas: no display, no pyplot
    global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _plot_losses(history: Mapping[str, Sequence[tuple[int, float]]], path: Path) -> bool:
    """Plot every series with at least one finite point; False (nothing written) if none."""
    series = {}
    for name, points in history.items():
        kept = sorted((int(s), float(v)) for s, v in points if _finite(v) is not None)
        if kept:
            series[name] = kept
    if not series:
        return False
    fig = _new_figure(7.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    for name, points in series.items():
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, label=name, marker="o" if len(points) <= 20 else None, ms=3)
    if all(v > 0 for points in series.values() for _, v in points):
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("Pre-training loss")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.savefig(path, format="png")
    return True


def _plot_probes(groups: Mapping[str, Sequence[Mapping[str, Any]]], path: Path) -> bool:
    """One panel per task with one bar per method × probe (same colour in every panel),
    annotated with its value; False (nothing written) when no row has a finite metric."""
    panels = []
    for task, group in groups.items():
        metric = main_metric(group)
        if metric and any(_finite(r.get(metric[0])) is not None for r in group):
            panels.append((task, group, metric))
    if not panels:
        return False
    names = list(dict.fromkeys(_name(r) for _, group, _ in panels for r in group))
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    colours = {n: cmap(i % cmap.N) for i, n in enumerate(names)}
    ncols = min(len(panels), 4)
    nrows = math.ceil(len(panels) / ncols)
    panel_width = max(2.6, 0.7 * max(len(g) for _, g, _ in panels) + 1.0)
    fig = _new_figure(panel_width * ncols, 3.6 * nrows + 0.4 * math.ceil(len(names) / 3))
    for i, (task, group, (key, mode, label)) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        values = [_finite(r.get(key)) for r in group]
        bars = ax.bar(
            range(len(group)),
            [0.0 if v is None else v for v in values],
            color=[colours[_name(r)] for r in group],
        )
        ax.bar_label(bars, labels=["–" if v is None else f"{v:.3f}" for v in values],
                     padding=2, fontsize=8)  # fmt: skip
        ax.set_xticks([])
        ax.set_title(task)
        ax.set_ylabel(f"{label} ({'higher' if mode == 'max' else 'lower'} is better)")
        top = max((v for v in values if v is not None), default=0.0)
        if key == "top1":
            ax.set_ylim(0.0, 1.1)
        elif top > 0:
            ax.set_ylim(0.0, 1.15 * top)
    handles = [_legend_patch(colours[n]) for n in names]
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 3), frameon=False)
    fig.savefig(path, format="png")
    return True


def _legend_patch(colour):
    from matplotlib.patches import Patch

    return Patch(facecolor=colour)


def _resolve(cm: str, task: str, probe_dir: Path | None) -> Path | None:
    """An existing confusion-matrix file: absolute, or under ``probe_dir`` (also
    ``probe_dir/<task>/``, where :func:`tune.sweep.run_tune` writes them)."""
    path = Path(cm)
    if path.is_absolute() or probe_dir is None:
        candidates = [path]
    else:
        candidates = [probe_dir / path, probe_dir / task / path]
    return next((c for c in candidates if c.is_file()), None)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "task"


def _pick_confusion(
    task: str, group: Sequence[Mapping[str, Any]], probe_dir: Path | None
) -> tuple[Mapping[str, Any] | None, Path | None, list[str]]:
    """The matrix shown for ``task``: ``(row, file, [])`` for the best LV-MAE row whose file
    exists, else the best other row whose file exists; ``(None, None, names)`` when rows
    name matrices but none can be found (``names`` empty when no row names one)."""
    named = [r for r in group if r.get("confusion_matrix")]
    key, mode, _ = main_metric(group) or _CLASSIFICATION_METRIC

    def rank(rows: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        scored = [r for r in rows if _finite(r.get(key)) is not None]
        scored.sort(key=lambda r: -float(r[key]) if mode == "max" else float(r[key]))
        return scored + [r for r in rows if _finite(r.get(key)) is None]

    lvmae = [r for r in named if str(r["method"]).startswith(LVMAE_PREFIX)]
    others = [r for r in named if not str(r["method"]).startswith(LVMAE_PREFIX)]
    for row in rank(lvmae) + rank(others):
        found = _resolve(str(row["confusion_matrix"]), task, probe_dir)
        if found is not None:
            return row, found, []
    return None, None, [str(r["confusion_matrix"]) for r in named]


# --------------------------------------------------------------------------- report


def write_report(
    out: str | Path,
    *,
    title: str,
    summary: Mapping[str, Any],
    loss_history: Mapping[str, Sequence[tuple[int, float]]],
    probe_rows: Sequence[Mapping[str, Any]],
    probe_dir: str | Path | None = None,
    notes: Sequence[str] = (),
) -> ReportFiles:
    """Write ``report.md``, ``report.html`` and ``figures/`` under ``out`` (created).

    Args:
        out: the report directory (a local path).
        title: the report's title (its first heading and the HTML ``<title>``).
        summary: ``{label: value}`` shown as a two-column table (floats with 3 decimals), e.g.
            videos ok / failed, segments, hours of video, pre-training steps.
        loss_history: ``{metric name: [(optimizer step, value), ...]}`` (MLflow's metric
            history, e.g. ``train/loss`` and ``val/loss``): every series is one line of
            ``figures/loss_curves.png`` (log-scale y when every value is positive;
            non-finite points dropped). Without any finite point there is no figure and the
            report says so.
        probe_rows: rows of :func:`pipelines.probe.run_probe` / :func:`tune.sweep.run_tune`
            (keys ``task``, ``method``, ``probe``, ``kind``, ``top1``, ``top5``,
            ``mean_class_accuracy``, ``mse``, ``mae``, ``test``, ``confusion_matrix``...).
            Shown as :func:`results_table`, one sentence per task (the best method and its
            margin over the ``mean-pool`` baseline, in the task's main metric; see
            :func:`main_metric`), ``figures/probe_comparison.png``, and one confusion
            matrix per task: the best LV-MAE row's (methods ``lvmae*``) when it exists,
            otherwise the best other row's, copied to ``figures/confusion_<task>.png``.
        probe_dir: the directory that relative ``confusion_matrix`` paths are relative to
            (the probe or tune ``--out``; ``<probe_dir>/<task>/`` is tried too). Without
            it, relative paths are taken from the current directory. Matrices that cannot
            be found are listed in the report, not raised.
        notes: free lines, shown as a bulleted list (Markdown allowed).

    Returns:
        The written files; ``figures`` lists only figures written by this call (stale
        ``loss_curves.png`` / ``probe_comparison.png`` from an earlier report are removed
        when this one has none).

    Raises:
        ValueError: a probe row without a ``task`` or ``method`` key.
        OSError: ``out`` cannot be written.
    """
    import markdown

    out = Path(out)
    fig_dir = out / FIGURES_DIR
    fig_dir.mkdir(parents=True, exist_ok=True)
    groups = _by_task(probe_rows)  # validates the rows before anything is written
    probe_root = Path(probe_dir) if probe_dir is not None else None
    figures: list[Path] = []
    md: list[str] = [f"# {title}", ""]

    md += ["## Summary", ""]
    if summary:
        md.append(_table(["quantity", "value"], ([_cell(k), _cell(v)] for k, v in summary.items())))
    else:
        md.append("No run summary was given.")
    md.append("")

    md += ["## Probe results", ""]
    if groups:
        md += [results_table(probe_rows), ""]
        for task, group in groups.items():
            md += [_task_sentence(task, group), ""]
        probe_png = fig_dir / PROBE_FIGURE
        if _plot_probes(groups, probe_png):
            figures.append(probe_png)
            md += [f"![Probe comparison]({FIGURES_DIR}/{PROBE_FIGURE})", ""]
        else:
            probe_png.unlink(missing_ok=True)
            md += ["No probe row has a finite metric, so there is no comparison figure.", ""]
    else:
        (fig_dir / PROBE_FIGURE).unlink(missing_ok=True)
        md += ["No probe results: the probes did not run or produced no rows.", ""]

    md += ["## Pre-training loss", ""]
    loss_png = fig_dir / LOSS_FIGURE
    if _plot_losses(loss_history, loss_png):
        figures.append(loss_png)
        md += [f"![Loss curves]({FIGURES_DIR}/{LOSS_FIGURE})", ""]
    else:
        loss_png.unlink(missing_ok=True)
        md += ["No loss history was recorded, so there is no loss-curve figure.", ""]

    md += ["## Confusion matrices", ""]
    shown = missing = 0
    used: set[str] = set()
    for task, group in groups.items():
        row, source, not_found = _pick_confusion(task, group, probe_root)
        if not_found:
            missing += 1
            listed = ", ".join(not_found)
            md += [f"- {_cell(task)}: confusion matrix not found ({_cell(listed)}).", ""]
        if row is None or source is None:
            continue
        stem = base = f"confusion_{_slug(task)}"
        k = 2
        while stem in used:
            stem, k = f"{base}_{k}", k + 1
        used.add(stem)
        target = fig_dir / f"{stem}.png"
        shutil.copyfile(source, target)
        figures.append(target)
        shown += 1
        caption = f"### {_cell(task)}: {_name(row)}"
        md += [caption, "", f"![{stem}]({FIGURES_DIR}/{target.name})", ""]
    if not shown and not missing:
        md += ["No confusion matrices (no classification rows named one).", ""]

    md += ["## Notes", ""]
    md += [f"- {line}" for line in notes] if notes else ["No notes."]
    text = "\n".join(md).rstrip() + "\n"

    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(text, encoding="utf-8")
    body = markdown.markdown(text, extensions=["tables"], output_format="html")
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )
    html_path.write_text(page, encoding="utf-8")
    return ReportFiles(markdown=md_path, html=html_path, figures=figures)
