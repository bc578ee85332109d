"""Across runs: grouping, mean ± std, bootstrap interval over seeds, per-class rows, tables, plots."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

from evaluate.plots import PAPER_LABEL, draw_rho_against_ratio  # noqa: E402
from evaluate.runs import evaluate_run  # noqa: E402
from evaluate.summary import format_table, paired_differences, summarise, table_cells  # noqa: E402


def _runs(tmp_path, make_run, **cells):
    runs = []
    for name, (method, ratio, seeds, extra) in cells.items():
        for seed in seeds:
            folder = tmp_path / f"{name}_{seed}"
            make_run(folder, method=method, ratio=ratio, seed=seed, **extra)
            runs.append(evaluate_run(folder, write_back=False))
    return runs


def test_cells_give_mean_std_and_bootstrap_interval_over_seeds(tmp_path, make_run):
    runs = _runs(
        tmp_path,
        make_run,
        trs10=("trs", 0.1, range(5), {}),
        sup10=("supervised", 0.1, range(3), {}),
        trs40=("trs", 0.4, [0], {}),
    )
    rows, class_rows = summarise(runs, resamples=4000, bootstrap_seed=1)
    assert [(row["method"], row["ratio"], row["n_seeds"]) for row in rows] == [
        ("supervised", 0.1, 3),
        ("trs", 0.1, 5),
        ("trs", 0.4, 1),
    ]
    assert class_rows == []
    trs10 = rows[1]
    rhos = np.array([run.metrics["spearman"] for run in runs if run.method == "trs" and run.ratio == 0.1])
    mses = np.array([run.metrics["mse"] for run in runs if run.method == "trs" and run.ratio == 0.1])
    assert trs10["rho_mean"] == pytest.approx(rhos.mean())
    assert trs10["rho_std"] == pytest.approx(np.std(rhos, ddof=1))
    assert trs10["mse_mean"] == pytest.approx(mses.mean()) and trs10["mse_std"] == pytest.approx(np.std(mses, ddof=1))
    assert trs10["seeds"] == [0, 1, 2, 3, 4]
    # The percentile bootstrap of the mean, computed directly.
    generator = np.random.default_rng(99)
    means = rhos[generator.integers(0, rhos.size, size=(40_000, rhos.size))].mean(axis=1)
    assert trs10["rho_ci_low"] == pytest.approx(np.percentile(means, 2.5), abs=0.006)
    assert trs10["rho_ci_high"] == pytest.approx(np.percentile(means, 97.5), abs=0.006)
    # One seed: spread and interval are undefined, not 0.
    single = rows[2]
    assert single["n_seeds"] == 1 and single["rho_mean"] == pytest.approx(runs[-1].metrics["spearman"])
    assert single["rho_std"] is None and single["rho_ci_low"] is None and single["rho_ci_high"] is None


def test_undefined_rho_is_counted_not_averaged_as_zero(tmp_path, make_run):
    runs = _runs(
        tmp_path,
        make_run,
        good=("trs", 0.2, [0, 1], {}),
        flat=("trs", 0.2, [2], {"predicted": np.full(30, 55.0)}),
    )
    rows, _ = summarise(runs, resamples=1000)
    (row,) = rows
    defined = [run.metrics["spearman"] for run in runs[:2]]
    assert row["n_seeds"] == 3 and row["n_rho_undefined"] == 1
    assert row["rho_mean"] == pytest.approx(np.mean(defined))
    header, body = table_cells(rows, best_on_test=False)
    assert "(1 undefined)" in body[0][header.index("ρ mean ± std")]


def test_per_class_rows_and_fisher_z_over_seeds(tmp_path, make_run):
    groups = ["diving"] * 10 + ["vault"] * 10 + ["ski"] * 9 + ["trampoline"]
    runs = _runs(tmp_path, make_run, aqa7=("trs", 0.2, range(3), {"groups": groups}))
    rows, class_rows = summarise(runs, resamples=1000)
    fisher = [run.metrics["spearman_fisher_z"] for run in runs]
    assert rows[0]["rho_fisher_z_mean"] == pytest.approx(np.mean(fisher))
    assert rows[0]["rho_fisher_z_std"] == pytest.approx(np.std(fisher, ddof=1))
    by_class = {row["class"]: row for row in class_rows}
    assert set(by_class) == {"diving", "vault", "ski", "trampoline"}
    assert by_class["trampoline"]["rho_mean"] is None and by_class["trampoline"]["n_seeds"] == 0
    labels = np.array(groups)
    mask = labels == "diving"
    diving = [stats.spearmanr(run.true_scores[mask], run.predicted[mask])[0] for run in runs]
    assert by_class["diving"]["rho_mean"] == pytest.approx(np.mean(diving))
    assert by_class["diving"]["n_samples"] == 10 and by_class["diving"]["n_seeds"] == 3


def test_terminal_table_columns_are_aligned(tmp_path, make_run):
    runs = _runs(
        tmp_path, make_run, a=("supervised", 0.05, range(2), {}), b=("trs-with-a-long-name", 1.0, range(3), {})
    )
    rows, _ = summarise(runs, resamples=500)
    header, body = table_cells(rows, best_on_test=False)
    lines = format_table(header, body).splitlines()
    assert len({len(line) for line in lines}) == 1  # every line as wide as the rule
    assert "5 %" in lines[2] and "100 %" in lines[3]
    columns = ("dataset", "target", "method", "ratio", "seeds", "ρ mean ± std", "95 % CI (bootstrap)")
    columns += ("R-l2 ×100", "MSE")
    assert all(column in lines[0] for column in columns)


def _legend_labels(rows, dataset, target):
    figure, axes = plt.subplots()
    try:
        draw_rho_against_ratio(axes, rows, dataset, target, best_on_test=False)
        return axes.get_legend_handles_labels()[1], axes
    finally:
        plt.close(figure)


def test_rho_plot_draws_the_paper_points_for_mtl_aqa_final_score_and_the_synthetic_dives_only(tmp_path, make_run):
    runs = _runs(
        tmp_path,
        make_run,
        a=("trs", 0.1, range(2), {"dataset": "MTL-AQA", "target": "final_score"}),
        b=("trs", 0.4, range(2), {"dataset": "MTL-AQA", "target": "final_score"}),
    )
    rows, _ = summarise(runs, resamples=500)
    labels, axes = _legend_labels(rows, "MTL-AQA", "final_score")
    assert "trs (ours; seeds: 2)" in labels
    paper = [label for label in labels if PAPER_LABEL in label]
    assert [label.split()[0] for label in paper] == ["TRS", "CoRe", "S4AQA"]
    paper_lines = {line.get_label().split()[0]: line for line in axes.get_lines() if PAPER_LABEL in line.get_label()}
    np.testing.assert_allclose(paper_lines["TRS"].get_ydata(), [0.825, 0.901])
    np.testing.assert_allclose(paper_lines["CoRe"].get_ydata(), [0.773, 0.894])
    np.testing.assert_allclose(paper_lines["S4AQA"].get_ydata(), [0.676, 0.746])
    np.testing.assert_allclose(paper_lines["TRS"].get_xdata(), [10, 40])
    assert "Spearman" in axes.get_ylabel() and "labelled" in axes.get_xlabel()
    labels, _ = _legend_labels(rows, "fis-v", "TES")
    assert not any(PAPER_LABEL in label for label in labels)
    labels, _ = _legend_labels(rows, "MTL-AQA", "difficulty")
    assert not any(PAPER_LABEL in label for label in labels)
    # The synthetic dives (MTL-AQA's layout, calibrated to its curve) show them as MTL-AQA's.
    for synthetic in ("synth-dive", "synth-dive-s21"):
        labels, _ = _legend_labels(rows, synthetic, "final_score")
        assert [label for label in labels if PAPER_LABEL in label] == [
            f"{method} (on MTL-AQA, {PAPER_LABEL})" for method in ("TRS", "CoRe", "S4AQA")]


def test_paired_differences_against_the_baseline_seed_by_seed(tmp_path, make_run):
    runs = _runs(
        tmp_path,
        make_run,
        sup=("supervised", 0.1, range(4), {}),
        trs=("trs", 0.1, [0, 1, 2, 5], {}),  # seed 5 has no baseline partner
        other=("mean-teacher", 0.4, range(2), {}),  # no baseline at 40 %
    )
    (row,) = paired_differences(runs, "supervised", resamples=1000)
    rho = {(run.method, run.seed): run.metrics["spearman"] for run in runs}
    deltas = [rho[("trs", seed)] - rho[("supervised", seed)] for seed in (0, 1, 2)]
    assert (row["method"], row["ratio"], row["n_pairs"], row["seeds"]) == ("trs", 0.1, 3, [0, 1, 2])
    assert row["delta_rho_mean"] == pytest.approx(np.mean(deltas))
    assert row["delta_rho_std"] == pytest.approx(np.std(deltas, ddof=1))
    assert row["wins"] == sum(delta > 0 for delta in deltas)
    assert row["same_split"] is True
    # A pair trained on different labelled videos is flagged.
    runs[0].split_digest = "different"
    (row,) = paired_differences(runs, "supervised", resamples=1000)
    assert row["same_split"] is False
    assert paired_differences(runs, "no-such-method") == []
