"""``pipeline.py evaluate``: run folders in; metrics.json per run, summary tables, files and plots out."""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aqa.config import to_dict, write_json
from aqa.errors import UserError
from evaluate import summary as summary_module
from evaluate.metrics import MIN_CLASS_SIZE
from evaluate.runs import RunEvaluation, evaluate_run, find_run_dirs

PLOT_MODES = ("auto", "summary", "all", "none")
# "auto" draws a scatter per run up to this many runs, and only the summary plots beyond.
AUTO_RUN_PLOT_LIMIT = 30
DEFAULT_RUNS_DIR = "runs"
# More classes than this (e.g. dive numbers in the group column) go to the files only.
TERMINAL_CLASS_LIMIT = 12


@dataclass
class EvaluateConfig:
    """What ``pipeline.py evaluate`` was asked to do (saved in summary.json)."""

    run_dirs: list[str] = field(default_factory=list)  # empty: every run under runs/
    out: str | None = None  # None: runs/, or the common parent of the given runs
    best_on_test: bool = False
    plots: str = "auto"
    bootstrap_resamples: int = 10_000
    bootstrap_seed: int = 0
    confidence: float = 0.95
    baseline: str = "supervised"  # methods are also compared with it seed by seed


@dataclass
class EvaluationReport:
    runs: list[RunEvaluation]
    skipped: list[dict[str, str]]
    rows: list[dict[str, Any]]
    class_rows: list[dict[str, Any]]
    best_rows: list[dict[str, Any]] | None
    best_class_rows: list[dict[str, Any]] | None
    paired_rows: list[dict[str, Any]]
    gate_rows: list[dict[str, Any]]  # trs runs: what their label-only gates chose, per cell
    out_dir: Path
    written: list[Path]
    text: str  # the tables for the terminal


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _check_config(config: EvaluateConfig) -> None:
    if config.plots not in PLOT_MODES:
        raise UserError(f"--plots must be one of {', '.join(PLOT_MODES)}, not {config.plots!r}")
    if config.bootstrap_resamples < 100:
        raise UserError(f"--bootstrap {config.bootstrap_resamples}: use at least 100 resamples")
    if not 0 < config.confidence < 1:
        raise UserError(f"confidence level {config.confidence} is not between 0 and 1")


def _default_out(run_dirs: list[Path]) -> Path:
    parents = [str(folder.resolve().parent) for folder in run_dirs]
    common = Path(os.path.commonpath(parents))
    try:
        return common.relative_to(Path.cwd())
    except ValueError:
        return common


def evaluate_runs(config: EvaluateConfig, warn: Callable[[str], None] = _stderr) -> EvaluationReport:
    """Evaluate every run folder named in ``config``; warn about (and skip) broken ones.

    Raises :class:`UserError` when no run folder is found or none could be evaluated.
    """
    _check_config(config)
    starts = [Path(path) for path in config.run_dirs] or [Path(DEFAULT_RUNS_DIR)]
    for start in starts:
        if not start.exists():
            raise UserError("no such folder (train a model first: make train; or name run folders)", start)
    run_dirs = find_run_dirs(starts)
    if not run_dirs:
        where = ", ".join(str(path) for path in starts)
        raise UserError(f"no run folders under {where} (a run folder holds config.json and predictions.csv)")

    runs: list[RunEvaluation] = []
    skipped: list[dict[str, str]] = []
    for folder in run_dirs:
        try:
            run = evaluate_run(folder, best_on_test=config.best_on_test)
        except UserError as error:
            message = str(error)
            if error.path is None or not Path(error.path).is_relative_to(folder):  # name the run folder
                message = f"{folder}: {message}"
            skipped.append({"run": str(folder), "problem": message})
            warn(f"warning: {message}; skipped")
            continue
        for note in run.notes:
            warn(f"warning: {run.name}: {note}")
        runs.append(run)
    if not runs:
        raise UserError(f"none of the {len(run_dirs)} run folder(s) could be evaluated (see the warnings above)")
    _warn_repeated_seeds(runs, warn)

    out_dir = Path(config.out) if config.out else _default_out(run_dirs)
    rows, class_rows = summary_module.summarise(
        runs, False, config.bootstrap_resamples, config.bootstrap_seed, config.confidence
    )
    paired_rows = summary_module.paired_differences(
        runs, config.baseline, config.bootstrap_resamples, config.bootstrap_seed, config.confidence
    )
    gate_rows = summary_module.gate_rows(runs)
    best_rows = best_class_rows = None
    if config.best_on_test:
        best_rows, best_class_rows = summary_module.summarise(
            runs, True, config.bootstrap_resamples, config.bootstrap_seed, config.confidence
        )
        if not best_rows:
            warn("warning: no run has epoch_predictions.csv; no best-on-test summary written")
            best_rows = best_class_rows = None

    written: list[Path] = []
    texts = [_terminal_text(rows, class_rows, False, config.confidence)]
    if paired_rows:
        texts.append(_paired_text(paired_rows, config))
    if gate_rows:
        texts.append(_gate_text(gate_rows))
    written += _write_summary(out_dir, "summary", runs, rows, class_rows, skipped, config, False, paired_rows,
                              gate_rows)
    if best_rows is not None:
        texts.append(_terminal_text(best_rows, best_class_rows, True, config.confidence))
        written += _write_summary(
            out_dir, "summary_best_on_test", runs, best_rows, best_class_rows, skipped, config, True
        )
    written += _plots(out_dir, config, runs, rows, best_rows, warn)
    return EvaluationReport(
        runs=runs,
        skipped=skipped,
        rows=rows,
        class_rows=class_rows,
        best_rows=best_rows,
        best_class_rows=best_class_rows,
        paired_rows=paired_rows,
        gate_rows=gate_rows,
        out_dir=out_dir,
        written=written,
        text="\n\n".join(texts),
    )


def _warn_repeated_seeds(runs: list[RunEvaluation], warn: Callable[[str], None]) -> None:
    counts = Counter((run.cell, run.seed) for run in runs if run.seed is not None)
    for (cell, seed), count in sorted(counts.items(), key=lambda item: str(item[0])):
        if count > 1:
            names = ", ".join(run.name for run in runs if run.cell == cell and run.seed == seed)
            warn(
                f"warning: seed {seed} appears {count} times for {cell[0]}/{cell[1]}/{cell[2]}/"
                f"{summary_module.format_ratio(cell[3])} ({names}); each run counts as one seed"
            )


def _terminal_text(rows, class_rows, best_on_test: bool, level: float) -> str:
    header, body = summary_module.table_cells(rows, best_on_test, level)
    parts = [summary_module.title(best_on_test, level), summary_module.format_table(header, body)]
    if class_rows:
        label = "Per class" + (" (BEST-ON-TEST)" if best_on_test else "")
        classes = {row["class"] for row in class_rows}
        if len(classes) > TERMINAL_CLASS_LIMIT:
            parts += ["", f"{label}: {len(classes)} classes, see the per-class CSV and Markdown files."]
        else:
            parts += ["", f"{label}:", summary_module.format_class_table(class_rows, best_on_test)]
    return "\n".join(parts)


PAIRED_LEFT = (0, 1, 3)


def _paired_title(config: EvaluateConfig) -> str:
    return (
        f"Paired against {config.baseline} (Δρ = ρ(method) − ρ({config.baseline}) on the same seed; "
        "final models)"
    )


def _paired_text(paired_rows, config: EvaluateConfig) -> str:
    header, body = summary_module.paired_table_cells(paired_rows, config.confidence)
    return "\n".join([_paired_title(config), summary_module.format_table(header, body, left=PAIRED_LEFT)])


GATE_TITLE = "The label-only gate of trs: the option each run chose (README, \"How we read TRS\")"
GATE_NOTE = ("Undecided: the run kept the configured option although another scored higher out of fold, by "
             "less than the margin; with that few labelled videos the gate cannot tell the two apart. "
             "Graph dropped by the guard: its closed-form check found the graph losing out of fold, so the "
             "gate chose among the options without it.")


def _gate_text(gate_rows) -> str:
    header, body = summary_module.gate_table_cells(gate_rows)
    return "\n".join([GATE_TITLE, summary_module.format_table(header, body, left=(0, 1, 2, 4, 7)), GATE_NOTE])


def _markdown(rows, class_rows, skipped, best_on_test: bool, config: EvaluateConfig, paired_rows=(),
              gate_rows=()) -> str:
    header, body = summary_module.table_cells(rows, best_on_test, config.confidence)
    lines = [f"# {summary_module.title(best_on_test, config.confidence)}", ""]
    if best_on_test:
        lines += [
            "**Every number below was chosen on the test set** (each run's best epoch by test ρ), the",
            "protocol of most published AQA tables. It overstates what a model would score on new data.",
            "The honest numbers are in `summary.md`.",
            "",
        ]
    lines += [
        summary_module.markdown_table(header, body),
        "",
        f"ρ: Spearman's rank correlation on the test split; mean ± sample std over seeds; CI: percentile "
        f"bootstrap ({config.bootstrap_resamples} resamples over seeds, seed {config.bootstrap_seed}) of the "
        f"mean ρ. R-l2 ×100 uses the range of the test labels. `{summary_module.UNDEFINED}`: undefined "
        "(one seed has no spread; a constant prediction has no ρ).",
    ]
    if class_rows:
        lines += ["", "## Per class", ""]
        class_header = ["dataset", "target", "method", "ratio", "class", "samples", "seeds with ρ", "ρ mean ± std"]
        class_body = [
            [row["dataset"], row["target"], row["method"], summary_module.format_ratio(row["ratio"]), row["class"],
             str(row["n_samples"]), str(row["n_seeds"]), summary_module._mean_std(row["rho_mean"], row["rho_std"], 3)]
            for row in class_rows
        ]  # fmt: skip
        lines.append(summary_module.markdown_table(class_header, class_body, left=(0, 1, 2, 4)))
        lines += [
            "",
            "The classes' ρ are averaged through Fisher's z (unweighted, |ρ| clipped at 0.9999), over the "
            f"classes with at least {MIN_CLASS_SIZE} test samples.",
        ]
    if paired_rows:
        header, body = summary_module.paired_table_cells(paired_rows, config.confidence)
        lines += ["", f"## {_paired_title(config)}", "", summary_module.markdown_table(header, body, PAIRED_LEFT)]
        lines += [
            "",
            "Wins: seeds on which the method's ρ beat the baseline's. Same split: every pair's split.json "
            "lists the same labelled and test videos.",
        ]
    if gate_rows:
        header, body = summary_module.gate_table_cells(gate_rows)
        lines += ["", f"## {GATE_TITLE}", "", summary_module.markdown_table(header, body, (0, 1, 2, 4, 7)), "", GATE_NOTE]
    if skipped:
        lines += ["", "## Runs not evaluated", ""]
        lines += [f"- {entry['problem']}" for entry in skipped]
    return "\n".join(lines) + "\n"


def _write_summary(out_dir, stem, runs, rows, class_rows, skipped, config, best_on_test, paired_rows=(),
                   gate_rows=()) -> list[Path]:
    written = []
    cell_columns = summary_module.CELL_COLUMNS + (summary_module.BEST_EXTRA_COLUMNS if best_on_test else ())
    written.append(summary_module.write_csv(out_dir / f"{stem}.csv", rows, cell_columns, best_on_test))
    run_columns = summary_module.RUN_COLUMNS + (("epoch", "n_epochs") if best_on_test else ())
    run_rows = summary_module.run_rows(runs, best_on_test)
    written.append(summary_module.write_csv(out_dir / f"{stem}_runs.csv", run_rows, run_columns, best_on_test))
    companions = (
        (f"{stem}_per_class.csv", class_rows, summary_module.CLASS_COLUMNS, best_on_test),
        (f"{stem}_paired.csv", paired_rows, summary_module.PAIRED_COLUMNS, False),
        (f"{stem}_gate.csv", gate_rows, summary_module.GATE_COLUMNS, False),
    )
    for name, companion_rows, columns, prefixed in companions:
        if companion_rows:
            written.append(summary_module.write_csv(out_dir / name, companion_rows, columns, prefixed))
        else:
            # A table of an earlier evaluation must not sit next to this one's summary as if current.
            (out_dir / name).unlink(missing_ok=True)
    document = {
        "protocol": summary_module.BEST_PROTOCOL if best_on_test else summary_module.FINAL_PROTOCOL,
        "config": to_dict(config),
        "cells": summary_module.prefixed_rows(rows, best_on_test),
        "per_class": summary_module.prefixed_rows(class_rows, best_on_test),
        "runs": summary_module.prefixed_rows(run_rows, best_on_test),
        "skipped": skipped,
    }
    if not best_on_test:
        document["paired"] = list(paired_rows)
        document["gate"] = list(gate_rows)
    written.append(write_json(out_dir / f"{stem}.json", document))
    markdown = _markdown(rows, class_rows, skipped, best_on_test, config, paired_rows, gate_rows)
    written.append(summary_module._atomic_write_text(out_dir / f"{stem}.md", markdown))
    return written


def _plots(out_dir, config, runs, rows, best_rows, warn) -> list[Path]:
    if config.plots == "none":
        return []
    from evaluate import plots  # matplotlib only when drawing

    plot_dir = out_dir / "plots"
    written = plots.plot_rho_against_ratio(rows, plot_dir)
    if best_rows:
        written += plots.plot_rho_against_ratio(best_rows, plot_dir, best_on_test=True)
    per_run = config.plots == "all" or (config.plots == "auto" and len(runs) <= AUTO_RUN_PLOT_LIMIT)
    if per_run:
        for run in runs:
            name = plots.safe_file_part(_relative_name(run.path, out_dir).replace("/", "__"))
            written.append(plots.plot_predictions(run, plot_dir / "runs" / f"{name}.png"))
    elif config.plots == "auto":
        warn(
            f"note: no predicted-vs-true plot per run for {len(runs)} runs (--plots auto draws them up to "
            f"{AUTO_RUN_PLOT_LIMIT}; --plots all draws them anyway)"
        )
    return written


def _relative_name(folder: Path, out_dir: Path) -> str:
    try:
        return folder.resolve().relative_to(out_dir.resolve()).as_posix()
    except ValueError:
        return folder.resolve().as_posix().lstrip("/")
