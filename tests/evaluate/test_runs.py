"""One run folder: measures recomputed from predictions.csv, metrics.json updated, broken folders named."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from aqa.errors import UserError
from evaluate.runs import evaluate_run, find_run_dirs


def test_measures_match_direct_computation_and_metrics_json_keeps_other_keys(tmp_path, make_run):
    folder = tmp_path / "run"
    data = make_run(folder, ratio=0.1, seed=3, n_test=40, stored_spearman=None)
    run = evaluate_run(folder)
    true_scores, predicted = data["true"], data["pred"]
    expected_rho = stats.spearmanr(true_scores, predicted)[0]
    expected_rl2 = 100 * np.mean(((true_scores - predicted) / (true_scores.max() - true_scores.min())) ** 2)
    expected_mse = np.mean((true_scores - predicted) ** 2)
    assert run.metrics["spearman"] == pytest.approx(expected_rho, abs=1e-12)
    assert run.metrics["rl2"] == pytest.approx(expected_rl2, rel=1e-12)
    assert run.metrics["mse"] == pytest.approx(expected_mse, rel=1e-12)
    assert (run.dataset, run.target, run.method, run.ratio, run.seed) == ("synth", "score", "trs", 0.1, 3)
    stored = json.loads((folder / "metrics.json").read_text())
    assert stored["spearman"] == pytest.approx(expected_rho, abs=1e-12)
    assert stored["rl2"] == pytest.approx(expected_rl2, rel=1e-12)
    assert stored["mse"] == pytest.approx(expected_mse, rel=1e-12)
    assert stored["n_test"] == 40
    assert stored["wall_seconds"] == 3.5 and stored["preset"] == "quick" and stored["n_labelled"] == 4
    assert "per_class" not in stored  # no classes in this run
    assert not list(folder.glob(".*.tmp"))  # atomic write left nothing behind


def test_constant_predictions_are_stored_as_null_not_zero(tmp_path, make_run):
    folder = tmp_path / "collapsed"
    make_run(folder, predicted=np.full(30, 61.0), stored_spearman=0.0)  # a trainer that wrote 0
    run = evaluate_run(folder)
    assert run.metrics["spearman"] is None
    stored = json.loads((folder / "metrics.json").read_text())
    assert stored["spearman"] is None and stored["mse"] > 0
    assert any("said spearman 0.0000, predictions.csv gives undefined" in note for note in run.notes)


def test_per_class_rho_with_a_one_sample_class(tmp_path, make_run):
    groups = ["diving"] * 12 + ["vault"] * 10 + ["ski"] * 10 + ["trampoline"]
    folder = tmp_path / "aqa7"
    data = make_run(folder, n_test=33, groups=groups)
    run = evaluate_run(folder)
    labels = np.array(groups)
    expected = {}
    for name in ("diving", "vault", "ski"):
        mask = labels == name
        expected[name] = stats.spearmanr(data["true"][mask], data["pred"][mask])[0]
        assert run.metrics["per_class"][name]["spearman"] == pytest.approx(expected[name], abs=1e-12)
        assert abs(expected[name]) < 0.999  # the Fisher-z clip plays no part here
    assert run.metrics["per_class"]["trampoline"] == {"spearman": None, "n": 1}
    assert run.metrics["spearman_fisher_z"] == pytest.approx(np.tanh(np.mean(np.arctanh(list(expected.values())))))
    assert run.metrics["fisher_z_classes"] == 3
    stored = json.loads((folder / "metrics.json").read_text())
    assert stored["per_class"]["trampoline"]["spearman"] is None
    assert stored["spearman_fisher_z"] == pytest.approx(run.metrics["spearman_fisher_z"])


def test_flat_config_without_group_column_and_without_metrics_json(tmp_path, make_run):
    folder = tmp_path / "flat"
    make_run(folder, nested_config=False, with_group_column=False, method="supervised", ratio=0.4, seed=7)
    (folder / "metrics.json").unlink()
    run = evaluate_run(folder)
    assert (run.method, run.ratio, run.seed) == ("supervised", 0.4, 7)
    assert run.groups is None and "per_class" not in run.metrics
    stored = json.loads((folder / "metrics.json").read_text())  # created, with the run's identity
    assert stored["method"] == "supervised" and stored["seed"] == 7 and stored["spearman"] is not None


def _replace_in_predictions(folder, old, new, count=1):
    path = folder / "predictions.csv"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, count))


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("missing", "missing predictions.csv"),
        ("nan", "test predictions are NaN"),
        ("text", "is not a number"),
        ("no_pred_column", "no column pred"),
        ("short_row", "fields, the header has"),
        ("split_mismatch", "split.json lists 30 test videos"),
        ("duplicate", "listed twice"),
        ("bad_metrics_json", "not readable JSON"),
    ],
)
def test_incomplete_or_broken_folders_raise_one_line_naming_the_folder(tmp_path, make_run, breakage, message):
    folder = tmp_path / f"run_{breakage}"
    data = make_run(folder, n_test=30)
    if breakage == "missing":
        (folder / "predictions.csv").unlink()
    elif breakage == "nan":
        _replace_in_predictions(folder, repr(float(data["pred"][3])), "nan")
    elif breakage == "text":
        _replace_in_predictions(folder, repr(float(data["pred"][3])), "oops")
    elif breakage == "no_pred_column":
        _replace_in_predictions(folder, "key,split,true,pred", "key,split,true,prediction")
    elif breakage == "short_row":
        lines = (folder / "predictions.csv").read_text().splitlines()
        lines[-1] = ",".join(lines[-1].split(",")[:3])
        (folder / "predictions.csv").write_text("\n".join(lines) + "\n")
    elif breakage == "split_mismatch":
        lines = (folder / "predictions.csv").read_text().splitlines()
        (folder / "predictions.csv").write_text("\n".join(lines[:-1]) + "\n")
    elif breakage == "duplicate":
        _replace_in_predictions(folder, "te001,test", "te000,test")
    elif breakage == "bad_metrics_json":
        (folder / "metrics.json").write_text("{not json")
    with pytest.raises(UserError, match=message) as caught:
        evaluate_run(folder)
    assert str(folder) in str(caught.value) and "\n" not in str(caught.value)


def test_find_run_dirs_finds_nested_and_incomplete_runs_but_not_plots(tmp_path, make_run):
    make_run(tmp_path / "runs" / "sweep" / "a")
    make_run(tmp_path / "runs" / "b")
    (tmp_path / "runs" / "still_training").mkdir()
    (tmp_path / "runs" / "still_training" / "config.json").write_text("{}")
    (tmp_path / "runs" / "plots" / "runs").mkdir(parents=True)
    (tmp_path / "runs" / "empty").mkdir()
    found = find_run_dirs([tmp_path / "runs"])
    assert [path.relative_to(tmp_path / "runs").as_posix() for path in found] == ["b", "still_training", "sweep/a"]
    assert find_run_dirs([tmp_path / "runs" / "b", tmp_path / "runs"])[0] == tmp_path / "runs" / "b"
    with pytest.raises(UserError, match="no such folder"):
        find_run_dirs([tmp_path / "missing"])


def test_best_on_test_picks_the_epoch_with_the_highest_test_rho(tmp_path, make_run):
    folder = tmp_path / "run"
    data = make_run(folder, n_test=25, epochs=12, noise=25.0)
    run = evaluate_run(folder, best_on_test=True)
    rhos = [stats.spearmanr(data["true"], epoch_predictions)[0] for epoch_predictions in data["epochs"]]
    best = int(np.argmax(rhos))
    assert run.best_on_test["epoch"] == best
    assert run.best_on_test["spearman"] == pytest.approx(rhos[best], abs=1e-12)
    assert run.best_on_test["mse"] == pytest.approx(np.mean((data["true"] - data["epochs"][best]) ** 2))
    assert run.best_on_test["spearman"] >= run.metrics["spearman"]  # the final epoch is one candidate
    assert run.best_on_test["n_epochs"] == 12 and "optimistic" in run.best_on_test["protocol"]
    stored = json.loads((folder / "metrics.json").read_text())
    assert stored["best_on_test"]["epoch"] == best
    # The default measures stay those of the final model.
    assert stored["spearman"] == pytest.approx(stats.spearmanr(data["true"], data["pred"])[0])


def test_best_on_test_with_ties_and_a_constant_epoch(tmp_path, make_run):
    folder = tmp_path / "run"
    data = make_run(folder, n_test=10, epochs=4)
    lines = ["epoch,key,true,pred"]
    truth = data["true"]
    epoch_predictions = [np.full(10, 50.0), truth * 2.0, truth + 1.0, truth[::-1]]  # 1 and 2 tie at ρ = 1
    for epoch, predictions in enumerate(epoch_predictions):
        lines += [f"{epoch},te{index:03d},{truth[index]},{predictions[index]}" for index in range(10)]
    (folder / "epoch_predictions.csv").write_text("\n".join(lines) + "\n")
    run = evaluate_run(folder, best_on_test=True)
    assert run.best_on_test["epoch"] == 1 and run.best_on_test["spearman"] == pytest.approx(1.0)


def test_run_without_epoch_predictions_says_so(tmp_path, make_run):
    folder = tmp_path / "run"
    make_run(folder)
    run = evaluate_run(folder, best_on_test=True)
    assert run.best_on_test is None
    assert any("no epoch_predictions.csv" in note and "--keep-epoch-predictions" in note for note in run.notes)
    assert run.metrics["spearman"] is not None
