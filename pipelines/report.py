"""The run report that ends ``lvmae run``: Markdown, the same rendered to HTML, and figures.

Layout under ``out``::

    report.md                 title, summary table, probe results, figures, notes
    report.html               report.md rendered by the ``markdown`` library (tables extension)
    figures/loss_curves.png   pre-training losses vs optimizer step (when there is a history)
    figures/probe_comparison.png   the main metric per task, one bar per method × probe
    figures/confusion_<task>.png   one confusion matrix per classification task

The report reads :class:`lvmae.probes.results.ProbeResult` objects (one per method × task,
from the probe and sweep stages). Each task is scored by its results' main metric
(:attr:`lvmae.probes.results.ProbeResult.main_metric`; a task's results share its kind, and
its first result's decides): top-1 accuracy (a fraction in ``[0, 1]``, higher is better) for
classification, MSE for regression (the paper's, LV-MAE §8 Table 7, and the metric the probes
select epochs by; lower is better, in the targets' own units). Missing inputs (no results, no
loss history, a confusion matrix that cannot be found) still give a complete report that says
what is missing.
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

import markdown

from lvmae.probes.results import ProbeResult

__all__ = [
    "ReportFiles",
    "anchor_confusion_matrices",
    "best_by_task",
    "results_table",
    "write_report",
]

FIGURES_DIR = "figures"
LOSS_FIGURE = "loss_curves.png"
PROBE_FIGURE = "probe_comparison.png"
BASELINE = "mean-pool"
LVMAE_PREFIX = "lvmae"  # "lvmae" and "lvmae-tuned"

# Labels of the main metrics (the keys of ProbeResult.main_metric).
_METRIC_LABELS = {"top1": "top-1", "mse": "MSE"}

# Results-table metric columns (ProbeResult field, header), in display order.
_METRIC_COLUMNS = (
    ("top1", "top-1"),
    ("top5", "top-5"),
    ("mean_class_accuracy", "mean class acc."),
    ("mse", "MSE"),
    ("mae", "MAE"),
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


def _by_task(results: Sequence[ProbeResult]) -> dict[str, list[ProbeResult]]:
    """Results grouped by task, tasks and results in their order of first appearance."""
    groups: dict[str, list[ProbeResult]] = {}
    for result in results:
        groups.setdefault(result.task, []).append(result)
    return groups


def _task_metric(group: Sequence[ProbeResult]) -> tuple[str, str]:
    """``(key, "max" | "min")``: the main metric of one task, its first result's."""
    key, _, mode = group[0].main_metric
    return key, mode


def _score(result: ProbeResult, key: str) -> float | None:
    """``result``'s main metric when it is ``key`` and finite, else None."""
    name, value, _ = result.main_metric
    return value if name == key and value is not None and math.isfinite(value) else None


def _best(results: Iterable[ProbeResult], key: str, mode: str) -> tuple[ProbeResult, float] | None:
    """The result with the best finite ``key`` and that value (the first one on ties), or
    None."""
    best: tuple[ProbeResult, float] | None = None
    for result in results:
        value = _score(result, key)
        if value is None:
            continue
        if best is None or (value > best[1] if mode == "max" else value < best[1]):
            best = (result, value)
    return best


def best_by_task(results: Sequence[ProbeResult]) -> dict[str, ProbeResult]:
    """The best result of each task by its main metric (highest top-1, lowest MSE; the first
    result on ties). Results whose main metric is missing or not finite are never picked,
    and a task none of whose results has a finite main metric is left out.

    Returns:
        ``{task: result}`` in the tasks' order of first appearance (the objects themselves).
    """
    best: dict[str, ProbeResult] = {}
    for task, group in _by_task(results).items():
        found = _best(group, *_task_metric(group))
        if found is not None:
            best[task] = found[0]
    return best


# --------------------------------------------------------------------------- Markdown


def _cell(value: Any) -> str:
    """A table cell: non-integral numbers to 3 decimals, NaN / None as "–", pipes and
    newlines escaped."""
    if value is None:
        return "–"
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return "–" if math.isnan(value) else f"{float(value):.3f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], body: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def _pm(value: float | None, std: float | None) -> str:
    """``value ± std`` (3 decimals), just the value without a spread, blank when missing."""
    if value is None:
        return ""
    return _cell(value) if std is None else f"{_cell(value)} ± {_cell(std)}"


def _std_of(result: ProbeResult, key: str) -> float | None:
    return getattr(result, f"{key}_std", None)


def results_table(results: Sequence[ProbeResult]) -> str:
    """The probe results as a Markdown table (also fit to print on a terminal).

    Columns: task, method, probe, seeds, ``val`` (the validation metric that picked the
    epoch: top-1 or MSE), each test metric that some result holds (top-1, top-5, mean class
    accuracy as fractions in ``[0, 1]``; MSE, MAE in the targets' units), ``sweep / recipe
    val`` when a tuned row is present (the chosen trial's val next to the recipe trial's,
    so tuning that did not help on val is visible before test), and ``test n``. A value
    trained with several seeds is written ``mean ± std``. Floats have 3 decimals, NaN is
    "–"; a metric a result does not have is left blank. Results are grouped by task (in
    order of first appearance), keeping their order.

    Returns:
        The table without a trailing newline, or ``"No probe results."`` when ``results``
        is empty.
    """
    ordered = [result for group in _by_task(results).values() for result in group]
    if not ordered:
        return "No probe results."
    metrics = [
        (k, h) for k, h in _METRIC_COLUMNS if any(getattr(r, k) is not None for r in ordered)
    ]
    tuned = any(r.recipe_val is not None or r.sweep_val is not None for r in ordered)
    header = ["task", "method", "probe", "seeds", "val", *(h for _, h in metrics)]
    header += ["sweep / recipe val"] if tuned else []
    header += ["test n"]

    def cells(r: ProbeResult) -> list[str]:
        val_key, val = r.val_metric
        scores = [_pm(getattr(r, key), _std_of(r, key)) for key, _ in metrics]
        row = [_cell(r.task), _cell(r.method), _cell(r.probe), _cell(r.seeds),
               _pm(val, _std_of(r, val_key)), *scores]  # fmt: skip
        if tuned:
            row.append(
                f"{_cell(r.sweep_val)} / {_cell(r.recipe_val)}" if r.sweep_val is not None else ""
            )
        return [*row, _cell(r.test)]

    return _table(header, (cells(r) for r in ordered))


def _task_sentence(task: str, group: Sequence[ProbeResult]) -> str:
    """One sentence: the best method of ``task`` and its margin over the mean-pool baseline."""
    key, mode = _task_metric(group)
    label = _METRIC_LABELS[key]
    direction = "higher" if mode == "max" else "lower"
    head = f"**{_cell(task)}** ({label}, {direction} is better)"
    best = _best(group, key, mode)
    if best is None:
        return f"{head}: no row has a finite {label}."
    best_row, best_value = best
    text = f"{head}: best is {best_row.name} at {best_value:.3f}"
    baseline = _best((r for r in group if r.method == BASELINE), key, mode)
    if baseline is None:
        return f"{text}; there is no {BASELINE} baseline to compare with."
    base_row, base_value = baseline
    if base_row is not best_row:
        margin = abs(best_value - base_value)
        versus = (
            f"tied with the {base_row.name} baseline"
            if margin == 0
            else f"{direction} than the {base_row.name} baseline at {base_value:.3f} "
            f"by {margin:.3f} {label}"
        )
        return f"{text}, {versus}."
    lvmae = _best((r for r in group if r.method.startswith(LVMAE_PREFIX)), key, mode)
    if lvmae is None:
        return f"{text}: the {BASELINE} baseline itself."
    lvmae_row, lvmae_value = lvmae
    return (
        f"{text}: the {BASELINE} baseline itself; the best LV-MAE row, {lvmae_row.name} at "
        f"{lvmae_value:.3f}, trails it by {abs(base_value - lvmae_value):.3f} {label}."
    )


# --------------------------------------------------------------------------- figures


def _new_figure(width: float, height: float):
    """A matplotlib Figure (constrained layout) on an Agg canvas: no display, no pyplot
    global state."""
    # matplotlib is imported here, not at module top: it is heavy and only needed to plot.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _plot_losses(history: Mapping[str, Sequence[tuple[int, float]]], path: Path) -> bool:
    """Plot every series with at least one finite point; False (nothing written) if none."""
    series = {}
    for name, points in history.items():
        kept = sorted((int(s), float(v)) for s, v in points if math.isfinite(v))
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


def _plot_probes(groups: Mapping[str, Sequence[ProbeResult]], path: Path) -> bool:
    """One panel per task with one bar per method × probe (same colour in every panel),
    annotated with its value, and a legend below the panels; False (nothing written) when
    no result has a finite main metric."""
    # matplotlib is imported here, not at module top: it is heavy and only needed to plot.
    from matplotlib import colormaps
    from matplotlib.patches import Patch

    panels = []
    for task, group in groups.items():
        key, mode = _task_metric(group)
        if any(_score(r, key) is not None for r in group):
            panels.append((task, group, key, mode))
    if not panels:
        return False
    names = list(dict.fromkeys(r.name for _, group, _, _ in panels for r in group))
    cmap = colormaps["tab10"]
    colours = {n: cmap(i % cmap.N) for i, n in enumerate(names)}
    ncols = min(len(panels), 4)
    nrows = math.ceil(len(panels) / ncols)
    panel_width = max(2.6, 0.7 * max(len(g) for _, g, _, _ in panels) + 1.0)
    legend_width = 0.085 * max(18, *(len(n) for n in names)) + 0.6
    fig = _new_figure(panel_width * ncols + legend_width, 3.6 * nrows)
    for i, (task, group, key, mode) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        values = [_score(r, key) for r in group]
        stds = [r.main_std if v is not None and r.main_std is not None else 0.0
                for r, v in zip(group, values, strict=True)]  # fmt: skip
        bars = ax.bar(
            range(len(group)),
            [0.0 if v is None else v for v in values],
            yerr=stds,  # the spread over seeds (sample std); 0 for one seed
            capsize=4,
            ecolor="#333333",
            color=[colours[r.name] for r in group],
        )
        ax.bar_label(bars, labels=[_bar_text(v, s) for v, s in zip(values, stds, strict=True)],
                     padding=2, fontsize=8)  # fmt: skip
        ax.set_xticks([])
        ax.set_title(task)
        ax.set_ylabel(f"{_METRIC_LABELS[key]} ({'higher' if mode == 'max' else 'lower'} is better)")
        top = max((v + s for v, s in zip(values, stds, strict=True) if v is not None),
                  default=0.0)  # fmt: skip
        if key == "top1":
            ax.set_ylim(0.0, 1.1)
        elif top > 0:
            ax.set_ylim(0.0, 1.15 * top)
    handles = [Patch(facecolor=colours[n]) for n in names]
    # One entry per line, to the right of the panels: constrained layout makes room for it
    # whatever the names' length (a centred legend wider than the panels used to spill
    # past the figure's left edge); "tight" keeps every drawn pixel in the saved image.
    fig.legend(handles, names, loc="outside right upper", ncol=1, frameon=False,
               title="whiskers: ± std over seeds",
               title_fontsize=8, fontsize=9)  # fmt: skip
    fig.savefig(path, format="png", bbox_inches="tight", pad_inches=0.15)
    return True


def _bar_text(value: float | None, std: float) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if not std else f"{value:.3f}±{std:.3f}"


def _resolve(cm: str, task: str, probe_dir: Path | None) -> Path | None:
    """An existing confusion-matrix file: absolute, or under ``probe_dir`` (also
    ``probe_dir/<task>/``, where :func:`tune.sweep.run_tune` writes them)."""
    path = Path(cm)
    if path.is_absolute() or probe_dir is None:
        candidates = [path]
    else:
        candidates = [probe_dir / path, probe_dir / task / path]
    return next((c for c in candidates if c.is_file()), None)


def anchor_confusion_matrices(
    results: Sequence[ProbeResult], root: str | Path
) -> list[ProbeResult]:
    """``results`` with each relative ``confusion_matrix`` that exists under ``root`` (or
    ``root/<task>/``) made absolute, so that results from several outputs (``lvmae probe``'s
    and ``lvmae tune``'s, whose matrices share file names) can go into one report; other
    rows are returned as they are."""
    out = []
    for r in results:
        found = _resolve(r.confusion_matrix, r.task, Path(root)) if r.confusion_matrix else None
        out.append(r.model_copy(update={"confusion_matrix": str(found.absolute())}) if found else r)
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "task"


def _pick_confusion(
    task: str, group: Sequence[ProbeResult], probe_dir: Path | None
) -> tuple[ProbeResult | None, Path | None, list[str]]:
    """The matrix shown for ``task``: ``(result, file, [])`` for the best LV-MAE result whose
    file exists, else the best other result whose file exists; ``(None, None, names)`` when
    results name matrices but none can be found (``names`` empty when none names one)."""
    named = [r for r in group if r.confusion_matrix]
    key, mode = _task_metric(group)
    sign = -1.0 if mode == "max" else 1.0

    def rank(results: list[ProbeResult]) -> list[ProbeResult]:
        scored = [r for r in results if _score(r, key) is not None]
        scored.sort(key=lambda r: sign * (_score(r, key) or 0.0))
        return scored + [r for r in results if _score(r, key) is None]

    lvmae = [r for r in named if r.method.startswith(LVMAE_PREFIX)]
    others = [r for r in named if not r.method.startswith(LVMAE_PREFIX)]
    for result in rank(lvmae) + rank(others):
        found = _resolve(str(result.confusion_matrix), task, probe_dir)
        if found is not None:
            return result, found, []
    return None, None, [str(r.confusion_matrix) for r in named]


# --------------------------------------------------------------------------- report sections


def _summary_section(summary: Mapping[str, Any]) -> list[str]:
    md = ["## Summary", ""]
    if summary:
        md.append(_table(["quantity", "value"], ([_cell(k), _cell(v)] for k, v in summary.items())))
    else:
        md.append("No run summary was given.")
    return [*md, ""]


def _probe_section(
    results: Sequence[ProbeResult], groups: Mapping[str, Sequence[ProbeResult]], fig_dir: Path
) -> tuple[list[str], list[Path]]:
    """The results table, one sentence per task and the comparison figure."""
    md = ["## Probe results", ""]
    probe_png = fig_dir / PROBE_FIGURE
    if not groups:
        probe_png.unlink(missing_ok=True)
        return [*md, "No probe results: the probes did not run or produced no rows.", ""], []
    md += [results_table(results), ""]
    for task, group in groups.items():
        md += [_task_sentence(task, group), ""]
    if _plot_probes(groups, probe_png):
        return [*md, f"![Probe comparison]({FIGURES_DIR}/{PROBE_FIGURE})", ""], [probe_png]
    probe_png.unlink(missing_ok=True)
    return [*md, "No probe row has a finite metric, so there is no comparison figure.", ""], []


def _loss_section(
    loss_history: Mapping[str, Sequence[tuple[int, float]]], fig_dir: Path
) -> tuple[list[str], list[Path]]:
    md = ["## Pre-training loss", ""]
    loss_png = fig_dir / LOSS_FIGURE
    if _plot_losses(loss_history, loss_png):
        return [*md, f"![Loss curves]({FIGURES_DIR}/{LOSS_FIGURE})", ""], [loss_png]
    loss_png.unlink(missing_ok=True)
    return [*md, "No loss history was recorded, so there is no loss-curve figure.", ""], []


def _confusion_section(
    groups: Mapping[str, Sequence[ProbeResult]], probe_dir: Path | None, fig_dir: Path
) -> tuple[list[str], list[Path]]:
    """One copied matrix per task (``confusion_<task>.png``, suffixed ``_2``, ``_3``... when
    task slugs collide), and the matrices that could not be found."""
    md = ["## Confusion matrices", ""]
    figures: list[Path] = []
    missing = 0
    used: set[str] = set()
    for task, group in groups.items():
        result, source, not_found = _pick_confusion(task, group, probe_dir)
        if not_found:
            missing += 1
            listed = ", ".join(not_found)
            md += [f"- {_cell(task)}: confusion matrix not found ({_cell(listed)}).", ""]
        if result is None or source is None:
            continue
        stem = base = f"confusion_{_slug(task)}"
        k = 2
        while stem in used:
            stem, k = f"{base}_{k}", k + 1
        used.add(stem)
        target = fig_dir / f"{stem}.png"
        shutil.copyfile(source, target)
        figures.append(target)
        md += [
            f"### {_cell(task)}: {result.name}",
            "",
            f"![{stem}]({FIGURES_DIR}/{target.name})",
            "",
        ]
    if not figures and not missing:
        md += ["No confusion matrices (no classification rows named one).", ""]
    return md, figures


def _html_page(title: str, text: str) -> str:
    body = markdown.markdown(text, extensions=["tables"], output_format="html")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


# --------------------------------------------------------------------------- report


def write_report(
    out: str | Path,
    *,
    title: str,
    summary: Mapping[str, Any],
    loss_history: Mapping[str, Sequence[tuple[int, float]]],
    results: Sequence[ProbeResult],
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
        results: the probe and sweep results. Shown as :func:`results_table`, one sentence
            per task (the best method and its margin over the ``mean-pool`` baseline, in the
            task's main metric), ``figures/probe_comparison.png``, and one confusion matrix
            per task: the best LV-MAE result's (methods ``lvmae*``) when it exists,
            otherwise the best other result's, copied to ``figures/confusion_<task>.png``.
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
        OSError: ``out`` cannot be written.
    """
    out = Path(out)
    fig_dir = out / FIGURES_DIR
    fig_dir.mkdir(parents=True, exist_ok=True)
    groups = _by_task(results)
    probe_root = Path(probe_dir) if probe_dir is not None else None

    probe_md, probe_figs = _probe_section(results, groups, fig_dir)
    loss_md, loss_figs = _loss_section(loss_history, fig_dir)
    confusion_md, confusion_figs = _confusion_section(groups, probe_root, fig_dir)
    notes_md = [f"- {line}" for line in notes] if notes else ["No notes."]
    md = [
        *[f"# {title}", ""],
        *_summary_section(summary),
        *probe_md,
        *loss_md,
        *confusion_md,
        *["## Notes", "", *notes_md],
    ]
    text = "\n".join(md).rstrip() + "\n"

    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(text, encoding="utf-8")
    html_path.write_text(_html_page(title, text), encoding="utf-8")
    return ReportFiles(
        markdown=md_path, html=html_path, figures=probe_figs + loss_figs + confusion_figs
    )
