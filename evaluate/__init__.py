"""Evaluation: every run's measures recomputed from its ``predictions.csv``, tables and plots.

The measures shared with training (``spearman``, ``rl2``, ``mse``) are :mod:`aqa.metrics`; run
folders are read through :mod:`aqa.run_folder`. This package adds the summaries over classes and
seeds (:mod:`evaluate.metrics`), reading runs (:mod:`evaluate.runs`), the report and its files
(:mod:`evaluate.report`, :mod:`evaluate.summary`) and plots (:mod:`evaluate.plots`, matplotlib
imported only when drawing).
"""

from evaluate.metrics import (
    MIN_CLASS_SIZE,
    bootstrap_mean_ci,
    fisher_z_average,
    per_class_spearman,
    score_metrics,
    std_over_seeds,
)
from evaluate.report import EvaluateConfig, EvaluationReport, evaluate_runs
from evaluate.runs import RunEvaluation, evaluate_run, find_run_dirs

__all__ = [
    "MIN_CLASS_SIZE",
    "EvaluateConfig",
    "EvaluationReport",
    "RunEvaluation",
    "bootstrap_mean_ci",
    "evaluate_run",
    "evaluate_runs",
    "find_run_dirs",
    "fisher_z_average",
    "per_class_spearman",
    "score_metrics",
    "std_over_seeds",
]
