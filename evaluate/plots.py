"""PNG plots: ρ against labelled ratio per method, and predicted against true scores per run."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from aqa.files import atomic_writer  # noqa: E402
from evaluate.runs import RunEvaluation  # noqa: E402

# Spearman's ρ on MTL-AQA (final score) from the TRS paper's table (ECCV 2024), at 10 % and 40 %
# labels. Those models fine-tune I3D end to end and keep the epoch with the best test ρ.
PAPER_MTL_AQA_RHO = {
    "TRS": {0.10: 0.825, 0.40: 0.901},
    "CoRe": {0.10: 0.773, 0.40: 0.894},
    "S4AQA": {0.10: 0.676, 0.40: 0.746},
}
PAPER_LABEL = "paper, fine-tuned I3D, best-on-test"
PAPER_MARKERS = {"TRS": "*", "CoRe": "D", "S4AQA": "s"}


def paper_points_label(dataset: str, target: str) -> str | None:
    """How the paper's points are labelled on this panel, or None for no points. The paper's
    numbers are for MTL-AQA's final score; the synthetic dives (``pipeline.py synth``: MTL-AQA's
    layout and scoring, difficulty calibrated to its learning curve) show them for reference,
    labelled as MTL-AQA's; other datasets and targets have no reference."""
    if target not in ("final_score", "score"):
        return None
    compact = re.sub(r"[^a-z0-9]", "", dataset.lower())
    if "mtlaqa" in compact:
        return PAPER_LABEL
    if compact.startswith("synthdive"):
        return f"on MTL-AQA, {PAPER_LABEL}"
    return None


def safe_file_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "x"


def plot_rho_against_ratio(rows: list[dict[str, Any]], folder: Path, best_on_test: bool = False) -> list[Path]:
    """One figure per dataset × target: mean ρ over seeds per method, error bars ±1 std."""
    by_panel: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_panel[(row["dataset"], row["target"])].append(row)
    written = []
    for (dataset, target), panel_rows in sorted(by_panel.items()):
        figure, axes = plt.subplots(figsize=(7.5, 5.0), dpi=120)
        draw_rho_against_ratio(axes, panel_rows, dataset, target, best_on_test)
        figure.tight_layout()
        suffix = "_best_on_test" if best_on_test else ""
        path = folder / f"rho_vs_ratio_{safe_file_part(dataset)}_{safe_file_part(target)}{suffix}.png"
        written.append(_save(figure, path))
    return written


def draw_rho_against_ratio(axes, rows: list[dict[str, Any]], dataset: str, target: str, best_on_test: bool) -> None:
    """Draw one dataset × target panel (summary rows of that panel) on ``axes``."""
    methods: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        methods[row["method"]].append(row)
    ratios_seen: set[float] = {row["ratio"] * 100 for row in rows}
    lowest, highest = 1.0, -1.0
    # Methods are nudged apart along x so that error bars at the same ratio do not hide each other.
    span = (max(ratios_seen) - min(ratios_seen)) if ratios_seen else 0.0
    nudge = 0.015 * (span or 20.0)
    drawn = [method for method, method_rows in methods.items() if any(r["rho_mean"] is not None for r in method_rows)]
    for order, method in enumerate(sorted(drawn)):
        points = sorted((row for row in methods[method] if row["rho_mean"] is not None), key=lambda r: r["ratio"])
        ratios = np.array([row["ratio"] * 100 for row in points])
        means = np.array([row["rho_mean"] for row in points])
        stds = np.array([row["rho_std"] if row["rho_std"] is not None else 0.0 for row in points])
        seeds = [row["n_seeds"] - row["n_rho_undefined"] for row in points]
        label = f"{method} (ours{', best-on-test' if best_on_test else ''}; seeds: {_seed_counts(seeds)})"
        shift = (order - (len(drawn) - 1) / 2) * nudge
        axes.errorbar(
            ratios + shift, means, yerr=stds, marker="o", markersize=5, capsize=4, linewidth=1.6, label=label
        )
        lowest, highest = min(lowest, float((means - stds).min())), max(highest, float((means + stds).max()))
    paper_label = paper_points_label(dataset, target)
    if paper_label is not None:
        for method, points in PAPER_MTL_AQA_RHO.items():
            ratios = np.array(sorted(points)) * 100
            values = np.array([points[ratio] for ratio in sorted(points)])
            axes.plot(
                ratios, values, linestyle=":", color="0.35", marker=PAPER_MARKERS[method],
                markersize=9 if method == "TRS" else 6, markerfacecolor="white", markeredgecolor="black",
                zorder=4, label=f"{method} ({paper_label})",
            )  # fmt: skip
            ratios_seen.update(ratios.tolist())
            lowest, highest = min(lowest, float(values.min())), max(highest, float(values.max()))
    protocol = (
        "BEST-ON-TEST (epoch chosen by test ρ, optimistic)" if best_on_test else "final model, no test-set selection"
    )
    axes.set_title(f"{dataset} · {target}: Spearman ρ vs labelled ratio\n{protocol}; mean ± 1 std over seeds")
    axes.set_xlabel("labelled fraction of the training split (%)")
    axes.set_ylabel("Spearman ρ on the test split" + (" (best-on-test)" if best_on_test else ""))
    if ratios_seen:
        axes.set_xticks(sorted(ratios_seen))
        axes.set_xticklabels([f"{value:g}" for value in sorted(ratios_seen)])
        full_span = max(ratios_seen) - min(ratios_seen)
        pad = 0.06 * full_span if full_span else 10.0
        axes.set_xlim(min(ratios_seen) - pad, max(ratios_seen) + pad)
    if highest >= lowest:
        margin = max(0.02, 0.08 * (highest - lowest))
        axes.set_ylim(max(-1.0, lowest - margin), min(1.0, highest + margin))
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="best", framealpha=0.9)


def _seed_counts(counts: list[int]) -> str:
    unique = sorted(set(counts))
    return str(unique[0]) if len(unique) == 1 else f"{unique[0]}–{unique[-1]}"


def plot_predictions(run: RunEvaluation, path: Path) -> Path:
    """Predicted against true test scores of one run, coloured by class where there are classes."""
    figure, axes = plt.subplots(figsize=(5.5, 5.2), dpi=110)
    if run.groups:
        classes = sorted({group for group in run.groups if group})
        groups = np.array(run.groups)
        colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        many = len(classes) > 20
        for index, name in enumerate(classes):
            mask = groups == name
            axes.scatter(
                run.true_scores[mask], run.predicted[mask], s=14, alpha=0.75,
                color="tab:blue" if many else colours(index % colours.N), label=None if many else name,
            )  # fmt: skip
        unassigned = groups == ""
        if unassigned.any():
            axes.scatter(run.true_scores[unassigned], run.predicted[unassigned], s=14, alpha=0.6, color="0.5")
        if not many:
            axes.legend(fontsize=7, title="class", title_fontsize=8, loc="upper left")
    else:
        axes.scatter(run.true_scores, run.predicted, s=14, alpha=0.75, color="tab:blue")
    low = float(min(run.true_scores.min(), run.predicted.min()))
    high = float(max(run.true_scores.max(), run.predicted.max()))
    pad = 0.04 * (high - low or 1.0)
    axes.plot([low - pad, high + pad], [low - pad, high + pad], linestyle="--", color="0.4", linewidth=1, label=None)
    axes.set_xlim(low - pad, high + pad)
    axes.set_ylim(low - pad, high + pad)
    axes.set_aspect("equal")
    rho = run.metrics["spearman"]
    rl2 = run.metrics["rl2"]
    measures = (
        f"ρ = {'undefined' if rho is None else f'{rho:.3f}'}, "
        f"R-l2×100 = {'n/a' if rl2 is None else f'{rl2:.2f}'}, "
        f"MSE = {run.metrics['mse']:.3g}, n = {run.metrics['n_test']}"
    )
    seed = "" if run.seed is None else f", seed {run.seed}"
    axes.set_title(
        f"{run.dataset} · {run.target} · {run.method} · {run.ratio * 100:g} % labels{seed}\n{measures}", fontsize=9
    )
    axes.set_xlabel(f"true {run.target} (test split)")
    axes.set_ylabel(f"predicted {run.target} (final model)")
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    return _save(figure, path)


def _save(figure, path: Path) -> Path:
    """Write ``figure`` to ``path`` atomically, in the format its suffix names (png by default)."""
    try:
        with atomic_writer(path) as handle:
            figure.savefig(handle, format=path.suffix.lstrip(".").lower() or "png")
    finally:
        plt.close(figure)
    return path
