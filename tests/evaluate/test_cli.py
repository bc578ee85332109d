"""`pipeline.py evaluate` end to end on generated run folders."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import stats

from pipeline import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def runs_dir(tmp_path, make_run):
    """MTL-AQA-like sweep (2 methods × 2 ratios × 3 seeds), an AQA-7-like pair, one broken folder."""
    runs = tmp_path / "runs"
    for method in ("supervised", "trs"):
        for ratio in (0.1, 0.4):
            for seed in range(3):
                make_run(
                    runs / f"{method}-{ratio}-{seed}", dataset="mtl-aqa", target="final_score",
                    method=method, ratio=ratio, seed=seed, epochs=6 if method == "trs" else None,
                )  # fmt: skip
    groups = ["diving"] * 10 + ["vault"] * 10 + ["ski"] * 9 + ["trampoline"]
    for seed in range(2):
        make_run(runs / "aqa7" / f"s{seed}", dataset="aqa-7", target="score", groups=groups, seed=seed)
    (runs / "crashed").mkdir()
    (runs / "crashed" / "config.json").write_text(json.dumps({"method": "trs"}))
    return runs


def _csv_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_default_evaluation_writes_files_prints_table_and_names_the_broken_folder(runs_dir, monkeypatch, capsys):
    monkeypatch.chdir(runs_dir.parent)
    assert main(["evaluate", "--plots", "summary", "--bootstrap", "2000"]) == 0
    captured = capsys.readouterr()
    crashed_warnings = [line for line in captured.err.splitlines() if "crashed" in line]
    expected = "warning: runs/crashed: missing predictions.csv (run incomplete or still training); skipped"
    assert crashed_warnings == [expected]
    assert "Final models (nothing chosen on test)" in captured.out
    assert "mtl-aqa  final_score  trs" in captured.out and "Per class:" in captured.out
    assert "14 run(s) evaluated, 1 skipped" in captured.out
    for name in ("summary.csv", "summary.json", "summary.md", "summary_runs.csv", "summary_per_class.csv"):
        assert (runs_dir / name).is_file(), name
    assert not list(runs_dir.glob("summary_best_on_test*"))  # never unless asked

    rows = {(row["dataset"], row["method"], row["ratio"]): row for row in _csv_rows(runs_dir / "summary.csv")}
    cell = rows[("mtl-aqa", "trs", "0.1")]
    rhos = []
    for seed in range(3):
        with open(runs_dir / f"trs-0.1-{seed}" / "predictions.csv", newline="") as handle:
            test_rows = [row for row in csv.DictReader(handle) if row["split"] == "test"]
        rhos.append(stats.spearmanr([float(r["true"]) for r in test_rows], [float(r["pred"]) for r in test_rows])[0])
    assert int(cell["n_seeds"]) == 3 and cell["seeds"] == "0 1 2"
    assert float(cell["rho_mean"]) == pytest.approx(np.mean(rhos))
    assert float(cell["rho_std"]) == pytest.approx(np.std(rhos, ddof=1))
    assert float(cell["rho_ci_low"]) <= float(cell["rho_mean"]) <= float(cell["rho_ci_high"])
    assert cell["protocol"] == "final model, no selection on test"
    aqa7 = rows[("aqa-7", "trs", "0.2")]
    assert aqa7["rho_fisher_z_mean"] != "" and rows[("mtl-aqa", "trs", "0.1")]["rho_fisher_z_mean"] == ""

    document = json.loads((runs_dir / "summary.json").read_text())
    assert document["skipped"][0]["run"].endswith("crashed")
    assert document["config"]["best_on_test"] is False and len(document["runs"]) == 14
    assert "| mtl-aqa | final_score | trs | 10 % | 3 |" in (runs_dir / "summary.md").read_text()

    plots = sorted(path.relative_to(runs_dir / "plots").as_posix() for path in (runs_dir / "plots").rglob("*.png"))
    assert plots == ["rho_vs_ratio_aqa-7_score.png", "rho_vs_ratio_mtl-aqa_final_score.png"]
    for path in (runs_dir / "plots").rglob("*.png"):
        assert path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 5000


def test_best_on_test_is_labelled_everywhere_and_runs_without_epochs_are_named(runs_dir, capsys):
    assert main(["evaluate", str(runs_dir), "--best-on-test", "--plots", "summary", "--bootstrap", "1000"]) == 0
    captured = capsys.readouterr()
    assert "BEST-ON-TEST" in captured.out and "ρ best-on-test mean ± std" in captured.out
    assert "Final models (nothing chosen on test)" in captured.out  # the honest table is still there
    lacking = [line for line in captured.err.splitlines() if "no epoch_predictions.csv" in line]
    assert len(lacking) == 6 + 2 and all("supervised" in line or "aqa7" in line for line in lacking)

    rows = _csv_rows(runs_dir / "summary_best_on_test.csv")
    assert {row["method"] for row in rows} == {"trs"}  # only runs that kept epoch predictions
    measure_columns = [name for name in rows[0] if "rho" in name or "mse" in name or "rl2" in name]
    assert measure_columns and all(
        name.startswith("best_on_test_") for name in measure_columns if name != "n_rho_undefined"
    )
    assert all(row["protocol"].startswith("BEST-ON-TEST") for row in rows)
    assert all(float(row["best_on_test_gain_over_final_mean"]) >= 0 for row in rows)
    document = json.loads((runs_dir / "summary_best_on_test.json").read_text())
    assert document["protocol"].startswith("BEST-ON-TEST")
    assert "Every number below was chosen on the test set" in (runs_dir / "summary_best_on_test.md").read_text()
    assert (runs_dir / "plots" / "rho_vs_ratio_mtl-aqa_final_score_best_on_test.png").is_file()
    assert not (runs_dir / "plots" / "runs").exists()  # --plots summary
    # The default summary does not mix best-on-test numbers in.
    final_rows = _csv_rows(runs_dir / "summary.csv")
    assert not any("best_on_test" in name for name in final_rows[0])
    stored = json.loads((runs_dir / "trs-0.1-0" / "metrics.json").read_text())
    assert stored["best_on_test"]["spearman"] >= stored["spearman"]


def test_out_defaults_to_the_common_parent_of_the_named_runs_and_plots_every_run(runs_dir, capsys):
    assert main(["evaluate", str(runs_dir / "aqa7" / "s0"), str(runs_dir / "aqa7" / "s1"), "--plots", "all"]) == 0
    assert (runs_dir / "aqa7" / "summary.csv").is_file()
    plots = sorted(path.name for path in (runs_dir / "aqa7" / "plots" / "runs").glob("*.png"))
    assert plots == ["s0.png", "s1.png"]
    assert (runs_dir / "aqa7" / "plots" / "runs" / "s0.png").read_bytes()[:8] == PNG_SIGNATURE
    out = runs_dir.parent / "elsewhere"
    assert main(["evaluate", str(runs_dir / "aqa7"), "--out", str(out), "--plots", "none"]) == 0
    assert (out / "summary.json").is_file() and not (out / "plots").exists()


def test_no_runs_and_no_usable_runs_exit_2_with_one_line(tmp_path, make_run, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["evaluate", str(empty)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: no run folders under") and "\n" not in error

    make_run(tmp_path / "bad" / "a", predicted=np.full(30, np.nan))
    (tmp_path / "bad" / "b").mkdir()
    (tmp_path / "bad" / "b" / "split.json").write_text("{}")
    assert main(["evaluate", str(tmp_path / "bad")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    nan_file = tmp_path / "bad" / "a" / "predictions.csv"
    assert lines[0] == f"warning: {nan_file}: 30 of 30 test predictions are NaN or infinite; skipped"
    assert lines[1].startswith(f"warning: {tmp_path / 'bad' / 'b'}: missing predictions.csv")
    assert lines[2] == "error: none of the 2 run folder(s) could be evaluated (see the warnings above)"
    assert not (tmp_path / "bad" / "summary.csv").exists()

    assert main(["evaluate", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_paired_table_is_printed_and_written(runs_dir, capsys):
    assert main(["evaluate", str(runs_dir), "--plots", "none", "--bootstrap", "500"]) == 0
    out = capsys.readouterr().out
    assert "Paired against supervised" in out
    rows = _csv_rows(runs_dir / "summary_paired.csv")
    assert [(row["method"], row["ratio"], row["n_pairs"]) for row in rows] == [("trs", "0.1", "3"), ("trs", "0.4", "3")]
    assert json.loads((runs_dir / "summary.json").read_text())["paired"][0]["baseline"] == "supervised"
    assert main(["evaluate", str(runs_dir), "--plots", "none", "--baseline", "trs"]) == 0
    assert [row["method"] for row in _csv_rows(runs_dir / "summary_paired.csv")] == ["supervised", "supervised"]


def test_the_gate_table_counts_each_cells_choices_and_disappears_with_them(tmp_path, make_run, capsys):
    runs = tmp_path / "runs"
    choices = [("graph 3", "kept", "kept the graph", "ema"), ("graph 0", "switched", "dropped the graph", "ridge"),
               ("graph 3", "kept, undecided", None, "ridge"), (7, "kept", None, None)]
    for seed, (choice, verdict, guard, teacher) in enumerate(choices):  # a gate_choice that is not text is ignored
        guarded = {} if guard is None else {"gate_graph_guard": guard}
        taught = {} if teacher is None else {"gate_teacher": teacher}
        make_run(runs / f"trs-{seed}", method="trs", seed=seed,
                 extra_metrics={"gate_choice": choice, "gate_verdict": verdict, **guarded, **taught})
    make_run(runs / "supervised-0", method="supervised", seed=0)
    assert main(["evaluate", str(runs), "--plots", "none", "--bootstrap", "200"]) == 0
    out = capsys.readouterr().out
    assert "The label-only gate of trs" in out and "Undecided:" in out
    rows = _csv_rows(runs / "summary_gate.csv")
    assert [(row["method"], row["gate_choice"], row["n_runs"], row["n_undecided"], row["n_guard_dropped"],
             row["n_ridge_teacher"], row["seeds"])
            for row in rows] == [("trs", "graph 3", "2", "1", "0", "1", "0 2"), ("trs", "graph 0", "1", "0", "1", "1", "1")]
    assert "graph dropped by the guard" in out and "ridge teacher" in out
    assert json.loads((runs / "summary.json").read_text())["gate"][0]["seeds"] == [0, 2]
    per_run = {row["run"].rsplit("/", 1)[-1]: row for row in _csv_rows(runs / "summary_runs.csv")}
    assert per_run["trs-1"]["gate_verdict"] == "switched" and per_run["trs-3"]["gate_choice"] == ""
    assert per_run["trs-1"]["gate_graph_guard"] == "dropped the graph" and per_run["trs-2"]["gate_graph_guard"] == ""
    assert (per_run["trs-0"]["gate_teacher"], per_run["trs-1"]["gate_teacher"], per_run["trs-3"]["gate_teacher"]) == \
        ("ema", "ridge", "")
    assert per_run["supervised-0"]["gate_choice"] == ""
    assert "## The label-only gate of trs" in (runs / "summary.md").read_text()
    # Evaluated again without any gate: the old gate table must not stay beside the new summary.
    for seed in range(len(choices)):
        make_run(runs / f"trs-{seed}", method="trs", seed=seed)
    assert main(["evaluate", str(runs), "--plots", "none", "--bootstrap", "200"]) == 0
    assert "label-only gate" not in capsys.readouterr().out
    assert not (runs / "summary_gate.csv").exists()
    assert json.loads((runs / "summary.json").read_text())["gate"] == []
