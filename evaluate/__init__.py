"""Evaluation: Spearman correlation and the field's other measures, tables and plots.

The metric functions (also used by training for its own ``metrics.json``) live in
:mod:`evaluate.metrics`; see there for the conventions (undefined ρ is ``None``).
"""

from evaluate.metrics import (
    MIN_CLASS_SIZE,
    bootstrap_mean_ci,
    fisher_z_average,
    mse,
    per_class_spearman,
    rl2,
    score_metrics,
    spearman,
    std_over_seeds,
)
from evaluate.report import EvaluateConfig, EvaluationReport, evaluate_runs
from evaluate.runs import RunEvaluation, evaluate_run, find_run_dirs

__all__ = [
    "MIN_CLASS_SIZE",
    "EvaluateConfig",
    "EvaluationReport",
    "RunEvaluation",
    "evaluate_run",
    "evaluate_runs",
    "find_run_dirs",
    "bootstrap_mean_ci",
    "fisher_z_average",
    "mse",
    "per_class_spearman",
    "rl2",
    "score_metrics",
    "spearman",
    "std_over_seeds",
]
