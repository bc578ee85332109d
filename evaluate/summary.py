"""Across runs: one row per dataset × target × method × labelled ratio, and the files that hold them.

Each row gives the number of seeds behind it, ρ as mean ± sample std (ddof 1) over seeds with a
seeded percentile-bootstrap 95 % interval of that mean, and R-l2 / MSE as mean ± std. With one
seed the std and the interval are *undefined* (empty in CSV, null in JSON, "n/a" in tables): a
single run says nothing about seed-to-seed spread. Runs whose ρ is undefined (constant
predictions) are counted in ``n_seeds`` and in ``n_rho_undefined`` and left out of the ρ
statistics; the tables flag such cells.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from aqa.files import atomic_write_text
from evaluate.metrics import bootstrap_mean_ci, std_over_seeds
from evaluate.runs import RunEvaluation

FINAL_PROTOCOL = "final model, no selection on test"
BEST_PROTOCOL = "BEST-ON-TEST: epoch chosen by test rho (optimistic)"
UNDEFINED = "n/a"

# Column order of summary.csv (final protocol); best-on-test files prefix the measures.
CELL_COLUMNS = (
    "dataset", "target", "method", "ratio", "n_seeds", "seeds",
    "rho_mean", "rho_std", "rho_ci_low", "rho_ci_high", "n_rho_undefined",
    "rl2_mean", "rl2_std", "mse_mean", "mse_std",
    "rho_fisher_z_mean", "rho_fisher_z_std", "protocol",
)  # fmt: skip
BEST_EXTRA_COLUMNS = ("epoch_mean", "gain_over_final_mean", "gain_over_final_std")
MEASURE_PREFIXES = ("rho", "rl2", "mse", "epoch", "gain")
CLASS_COLUMNS = ("dataset", "target", "method", "ratio", "class", "n_seeds", "n_samples", "rho_mean", "rho_std")
RUN_COLUMNS = ("run", "dataset", "target", "method", "ratio", "seed", "n_test", "rho", "rl2", "mse", "rho_fisher_z",
               "gate_choice", "gate_verdict", "gate_graph_guard", "gate_teacher")
GATE_COLUMNS = ("dataset", "target", "method", "ratio", "gate_choice", "n_runs", "n_undecided", "n_guard_dropped",
                "n_ridge_teacher", "seeds")


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def run_measures(run: RunEvaluation, best_on_test: bool) -> dict[str, Any] | None:
    """The measures of one run under a protocol (``None``: the run has none under it)."""
    measures = run.best_on_test if best_on_test else run.metrics
    return measures


def summarise(
    runs: list[RunEvaluation],
    best_on_test: bool = False,
    resamples: int = 10_000,
    bootstrap_seed: int = 0,
    level: float = 0.95,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(cell rows, per-class rows)`` for the runs under one protocol, sorted by cell."""
    cells: dict[tuple, list[RunEvaluation]] = defaultdict(list)
    for run in runs:
        if run_measures(run, best_on_test) is not None:
            cells[run.cell].append(run)
    rows, class_rows = [], []
    for cell in sorted(cells):
        members = sorted(cells[cell], key=lambda run: (run.seed is None, run.seed or 0, run.name))
        measures = [run_measures(run, best_on_test) for run in members]
        rhos = [m["spearman"] for m in measures if m["spearman"] is not None]
        rl2s = [m["rl2"] for m in measures if m["rl2"] is not None]
        mses = [m["mse"] for m in measures if m["mse"] is not None]
        fisher = [m["spearman_fisher_z"] for m in measures if m.get("spearman_fisher_z") is not None]
        interval = bootstrap_mean_ci(rhos, resamples=resamples, level=level, seed=bootstrap_seed)
        row: dict[str, Any] = {
            "dataset": cell[0],
            "target": cell[1],
            "method": cell[2],
            "ratio": cell[3],
            "n_seeds": len(members),
            "seeds": [run.seed for run in members],
            "rho_mean": _mean(rhos),
            "rho_std": std_over_seeds(rhos),
            "rho_ci_low": interval[0] if interval else None,
            "rho_ci_high": interval[1] if interval else None,
            "n_rho_undefined": len(members) - len(rhos),
            "rl2_mean": _mean(rl2s),
            "rl2_std": std_over_seeds(rl2s),
            "mse_mean": _mean(mses),
            "mse_std": std_over_seeds(mses),
            "rho_fisher_z_mean": _mean(fisher),
            "rho_fisher_z_std": std_over_seeds(fisher),
            "protocol": BEST_PROTOCOL if best_on_test else FINAL_PROTOCOL,
            "runs": [run.name for run in members],
        }
        if best_on_test:
            gains = [
                run.best_on_test["spearman"] - run.metrics["spearman"]
                for run in members
                if run.best_on_test["spearman"] is not None and run.metrics["spearman"] is not None
            ]
            row["epoch_mean"] = _mean([m["epoch"] for m in measures])
            row["gain_over_final_mean"] = _mean(gains)
            row["gain_over_final_std"] = std_over_seeds(gains)
        rows.append(row)
        class_rows.extend(_class_rows(cell, measures))
    return rows, class_rows


def _class_rows(cell: tuple, measures: list[dict[str, Any]]) -> list[dict[str, Any]]:
    per_class: dict[str, list[dict]] = defaultdict(list)
    for measure in measures:
        for name, entry in (measure.get("per_class") or {}).items():
            per_class[name].append(entry)
    rows = []
    for name in sorted(per_class):
        rhos = [entry["spearman"] for entry in per_class[name] if entry["spearman"] is not None]
        rows.append(
            {
                "dataset": cell[0],
                "target": cell[1],
                "method": cell[2],
                "ratio": cell[3],
                "class": name,
                "n_seeds": len(rhos),
                "n_samples": int(round(float(np.mean([entry["n"] for entry in per_class[name]])))),
                "rho_mean": _mean(rhos),
                "rho_std": std_over_seeds(rhos),
            }
        )
    return rows


def run_rows(runs: list[RunEvaluation], best_on_test: bool = False) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        measures = run_measures(run, best_on_test)
        if measures is None:
            continue
        row = {
            "run": run.name,
            "dataset": run.dataset,
            "target": run.target,
            "method": run.method,
            "ratio": run.ratio,
            "seed": run.seed,
            "n_test": measures["n_test"],
            "rho": measures["spearman"],
            "rl2": measures["rl2"],
            "mse": measures["mse"],
            "rho_fisher_z": measures.get("spearman_fisher_z"),
            "gate_choice": run.gate_choice,
            "gate_verdict": run.gate_verdict,
            "gate_graph_guard": run.gate_graph_guard,
            "gate_teacher": run.gate_teacher,
        }
        if best_on_test:
            row["epoch"] = measures["epoch"]
            row["n_epochs"] = measures["n_epochs"]
        rows.append(row)
    return rows


def gate_rows(runs: list[RunEvaluation]) -> list[dict[str, Any]]:
    """Per cell and option, how many runs' label-only gates (trs) chose it, how many of those
    kept the configured option without being able to tell it from a higher-scoring one
    (``"kept, undecided"``), in how many the graph guard had dropped the graph before the gate
    chose, in how many the ridge taught the student (``semi.teacher``), and their seeds; runs
    without a gate are left out."""
    chosen: dict[tuple, list[RunEvaluation]] = defaultdict(list)
    for run in runs:
        if run.gate_choice is not None:
            chosen[(*run.cell, run.gate_choice)].append(run)
    rows = []
    for key in sorted(chosen, key=lambda key: (key[:4], -len(chosen[key]), key[4])):
        members = sorted(chosen[key], key=lambda run: (run.seed is None, run.seed or 0, run.name))
        rows.append({
            "dataset": key[0], "target": key[1], "method": key[2], "ratio": key[3], "gate_choice": key[4],
            "n_runs": len(members),
            "n_undecided": sum(run.gate_verdict == "kept, undecided" for run in members),
            "n_guard_dropped": sum(run.gate_graph_guard == "dropped the graph" for run in members),
            "n_ridge_teacher": sum(run.gate_teacher == "ridge" for run in members),
            "seeds": [run.seed for run in members],
        })
    return rows


def gate_table_cells(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["dataset", "target", "method", "ratio", "gate's choice", "runs", "of them undecided",
              "graph dropped by the guard", "ridge teacher", "seeds"]
    body = [[row["dataset"], row["target"], row["method"], format_ratio(row["ratio"]), row["gate_choice"],
             str(row["n_runs"]), str(row["n_undecided"]), str(row["n_guard_dropped"]), str(row["n_ridge_teacher"]),
             ",".join(str(seed) for seed in row["seeds"])]
            for row in rows]
    return header, body


def paired_differences(
    runs: list[RunEvaluation],
    baseline: str,
    resamples: int = 10_000,
    bootstrap_seed: int = 0,
    level: float = 0.95,
) -> list[dict[str, Any]]:
    """Each method against ``baseline`` seed by seed, per dataset × target × ratio.

    Seed noise between runs (0.03–0.06 in ρ on small labelled sets) hides gains that a paired
    comparison on identical splits shows: Δρ = ρ(method) − ρ(baseline) for every seed both ran,
    mean ± std, a bootstrap interval of the mean, and how many seeds the method won.
    ``same_split`` says whether every pair's split.json listed the same labelled and test videos
    (``None`` where a run has no split.json).
    """
    by_cell: dict[tuple, dict[int, RunEvaluation]] = defaultdict(dict)
    for run in runs:
        if run.seed is not None and run.metrics["spearman"] is not None:
            by_cell[run.cell].setdefault(run.seed, run)
    rows = []
    for (dataset, target, method, ratio), method_runs in sorted(by_cell.items()):
        if method == baseline:
            continue
        baseline_runs = by_cell.get((dataset, target, baseline, ratio))
        if not baseline_runs:
            continue
        seeds = sorted(set(method_runs) & set(baseline_runs))
        if not seeds:
            continue
        deltas = [method_runs[seed].metrics["spearman"] - baseline_runs[seed].metrics["spearman"] for seed in seeds]
        digests = [(method_runs[seed].split_digest, baseline_runs[seed].split_digest) for seed in seeds]
        same_split = None if any(None in pair for pair in digests) else all(a == b for a, b in digests)
        interval = bootstrap_mean_ci(deltas, resamples=resamples, level=level, seed=bootstrap_seed)
        rows.append(
            {
                "dataset": dataset,
                "target": target,
                "ratio": ratio,
                "method": method,
                "baseline": baseline,
                "n_pairs": len(seeds),
                "seeds": seeds,
                "delta_rho_mean": _mean(deltas),
                "delta_rho_std": std_over_seeds(deltas),
                "delta_rho_ci_low": interval[0] if interval else None,
                "delta_rho_ci_high": interval[1] if interval else None,
                "wins": sum(delta > 0 for delta in deltas),
                "same_split": same_split,
            }
        )
    return rows


PAIRED_COLUMNS = (
    "dataset", "target", "ratio", "method", "baseline", "n_pairs", "seeds", "delta_rho_mean", "delta_rho_std",
    "delta_rho_ci_low", "delta_rho_ci_high", "wins", "same_split",
)  # fmt: skip


def paired_table_cells(rows: list[dict[str, Any]], level: float = 0.95) -> tuple[list[str], list[list[str]]]:
    header = ["dataset", "target", "ratio", "method", "seeds", "Δρ mean ± std", f"{level * 100:g} % CI"]
    header += ["wins", "same split"]
    body = []
    for row in rows:
        interval = (
            UNDEFINED
            if row["delta_rho_ci_low"] is None
            else f"[{row['delta_rho_ci_low']:+.3f}, {row['delta_rho_ci_high']:+.3f}]"
        )
        spread = _number(row["delta_rho_std"], 3)
        same = {True: "yes", False: "NO", None: "unknown"}[row["same_split"]]
        body.append(
            [row["dataset"], row["target"], format_ratio(row["ratio"]), row["method"], str(row["n_pairs"]),
             f"{row['delta_rho_mean']:+.3f} ± {spread}", interval, f"{row['wins']}/{row['n_pairs']}", same]
        )  # fmt: skip
    return header, body


# ----------------------------------------------------------------------------------------- text


def format_ratio(ratio: float) -> str:
    percent = ratio * 100
    return f"{percent:.0f} %" if math.isclose(percent, round(percent), abs_tol=1e-9) else f"{percent:.3g} %"


def _number(value: float | None, digits: int) -> str:
    return UNDEFINED if value is None else f"{value:.{digits}f}"


def _mean_std(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return UNDEFINED
    return f"{mean:.{digits}f} ± {_number(std, digits)}"


def _significant_digits(rows: list[dict[str, Any]], key: str) -> int:
    """Decimals for a measure whose size varies by dataset (MSE of 0-100 scores vs of 0-1 ones)."""
    values = [abs(row[key]) for row in rows if row.get(key)]
    if not values:
        return 2
    largest = max(values)
    return 1 if largest >= 100 else 2 if largest >= 1 else 4


def table_cells(
    rows: list[dict[str, Any]], best_on_test: bool, level: float = 0.95
) -> tuple[list[str], list[list[str]]]:
    """Header and text cells of the summary table (terminal and Markdown share them)."""
    has_classes = any(row["rho_fisher_z_mean"] is not None for row in rows)
    rho_name = "ρ best-on-test" if best_on_test else "ρ"
    header = ["dataset", "target", "method", "ratio", "seeds", f"{rho_name} mean ± std"]
    header.append(f"{level * 100:g} % CI (bootstrap)")
    header += ["R-l2 ×100", "MSE"]
    if has_classes:
        header.append("ρ classes (Fisher z)")
    if best_on_test:
        header += ["best epoch (mean)", "gain over final ρ"]
    mse_digits = _significant_digits(rows, "mse_mean")
    body = []
    for row in rows:
        rho = _mean_std(row["rho_mean"], row["rho_std"], 3)
        if row["n_rho_undefined"]:
            rho += f" ({row['n_rho_undefined']} undefined)"
        interval = (
            UNDEFINED if row["rho_ci_low"] is None else f"[{row['rho_ci_low']:.3f}, {row['rho_ci_high']:.3f}]"
        )
        cells = [
            row["dataset"], row["target"], row["method"], format_ratio(row["ratio"]), str(row["n_seeds"]),
            rho, interval,
            _mean_std(row["rl2_mean"], row["rl2_std"], 2),
            _mean_std(row["mse_mean"], row["mse_std"], mse_digits),
        ]  # fmt: skip
        if has_classes:
            cells.append(_mean_std(row["rho_fisher_z_mean"], row["rho_fisher_z_std"], 3))
        if best_on_test:
            cells.append(_number(row["epoch_mean"], 1))
            gain = row["gain_over_final_mean"]
            cells.append(UNDEFINED if gain is None else f"{gain:+.3f}")
        body.append(cells)
    return header, body


def title(best_on_test: bool, level: float = 0.95) -> str:
    if best_on_test:
        return (
            "BEST-ON-TEST (optimistic, the field's habit: each run's epoch chosen by its test ρ; "
            "not an honest estimate)"
        )
    return (
        f"Final models (nothing chosen on test): mean ± std over seeds, {level * 100:g} % bootstrap CI of the mean ρ"
    )


def format_table(header: list[str], body: list[list[str]], left: tuple[int, ...] = (0, 1, 2)) -> str:
    """Aligned columns: text (the ``left`` columns) left, numbers right."""
    widths = [max(len(line[index]) for line in [header, *body]) for index in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(width) if index in left else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(cells, widths))
        ).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(header), rule, *(line(cells) for cells in body)])


def format_class_table(class_rows: list[dict[str, Any]], best_on_test: bool) -> str:
    header = ["dataset", "target", "method", "ratio", "class", "samples", "seeds with ρ",
              "ρ best-on-test mean ± std" if best_on_test else "ρ mean ± std"]  # fmt: skip
    body = [
        [row["dataset"], row["target"], row["method"], format_ratio(row["ratio"]), row["class"],
         str(row["n_samples"]), str(row["n_seeds"]), _mean_std(row["rho_mean"], row["rho_std"], 3)]
        for row in class_rows
    ]  # fmt: skip
    return format_table(header, body, left=(0, 1, 2, 4))


def markdown_table(header: list[str], body: list[list[str]], left: tuple[int, ...] = (0, 1, 2)) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    aligns = ["---" if index in left else "--:" for index in range(len(header))]
    return "\n".join([line(header), "| " + " | ".join(aligns) + " |", *(line(cells) for cells in body)])


# ---------------------------------------------------------------------------------------- files


def _prefixed(row: dict[str, Any], best_on_test: bool) -> dict[str, Any]:
    """Best-on-test files name every measure ``best_on_test_*``, so no number loses its label."""
    if not best_on_test:
        return row
    return {
        (f"best_on_test_{key}" if key.startswith(MEASURE_PREFIXES) else key): value for key, value in row.items()
    }


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return " ".join("" if item is None else str(item) for item in value)
    return str(value)


def _atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_text(path, text)


def csv_text(rows: list[dict[str, Any]], columns: tuple[str, ...], best_on_test: bool) -> str:
    names = list(columns)
    names_out = list(_prefixed(dict.fromkeys(names), best_on_test))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(names_out)
    for row in rows:
        writer.writerow([_csv_value(row.get(name)) for name in names])
    return buffer.getvalue()


def write_csv(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...], best_on_test: bool) -> Path:
    return _atomic_write_text(path, csv_text(rows, columns, best_on_test))


def prefixed_rows(rows: list[dict[str, Any]], best_on_test: bool) -> list[dict[str, Any]]:
    return [_prefixed(row, best_on_test) for row in rows]
