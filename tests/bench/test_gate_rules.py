"""bench/gate_rules.py (research log, session 4): a rule's choice is read from the run that made
it, paired against ``supervised`` on the same seed; the margin rule is the product's own."""

from __future__ import annotations

import json

import pytest

from bench import gate_rules

DEFAULT, NO_GRAPH = "teacher+reference, graph 3", "teacher+reference, graph 0"


def gate(no_graph_folds: list[float], default_folds: list[float], margin: float = 0.2) -> dict:
    """A recorded gate outcome: the pooled estimates are the fold means."""
    folds = {DEFAULT: default_folds, NO_GRAPH: no_graph_folds}
    return {"default": DEFAULT, "margin": margin, "fold_estimates": folds,
            "estimates": {name: sum(values) / len(values) for name, values in folds.items()}}


def test_each_choice_is_realised_by_the_run_that_made_it():
    assert gate_rules.outcome_variant(NO_GRAPH) == "trs-no-graph"
    assert gate_rules.outcome_variant(DEFAULT) == "trs-no-gate"
    assert gate_rules.outcome_variant("teacher, graph 3") == "trs-no-reference"


def test_the_paired_rule_switches_where_the_margin_rule_cannot():
    # no graph leads every fold by about 0.1: too little for the margin (0.2), many standard errors for the paired rule
    steady = gate([0.5, 0.61, 0.52, 0.6], [0.4, 0.5, 0.42, 0.51])
    assert gate_rules.choose_margin(steady) == DEFAULT
    assert gate_rules.choose_paired(steady, 2.0) == NO_GRAPH
    noisy = gate([0.9, 0.1, 0.8, 0.0], [0.4, 0.5, 0.42, 0.51])  # the same lead, all over the place
    assert gate_rules.choose_paired(noisy, 1.0) == DEFAULT


def test_the_table_pairs_realised_runs_with_supervised_and_counts_what_is_missing():
    steady = gate([0.5, 0.61, 0.52, 0.6], [0.4, 0.5, 0.42, 0.51])
    cells = {"TES 10 %": {
        0: {"trs": {"validation": 0.30, "gate": steady}, "supervised": {"validation": 0.20},
            "trs-no-graph": {"validation": 0.45}},
        1: {"trs": {"validation": 0.40, "gate": steady}, "supervised": {"validation": 0.35}},  # no no-graph run
    }}
    rows = {line.split(" | ")[0].strip("| "): line for line in gate_rules.evaluate(cells).splitlines()[2:]}
    assert "+0.075 ± 0.025 (n 2, 0 changed)" in rows["margin (today)"]  # trs itself, both seeds
    assert "+0.250 ± nan (n 1, 2 changed, 1 missing)" in rows["paired z=2"]  # seed 0 from trs-no-graph


def test_the_jsonl_cells_keep_only_the_current_code_version(tmp_path):
    from bench.tune_fisv import code_version

    current = code_version("trs")
    records = [{"variant": "trs", "target": "TES", "ratio": 0.1, "seed": 0, "code_version": current,
                "validation_spearman": 0.3, "gate": {"chosen": DEFAULT}},
               {"variant": "trs", "target": "TES", "ratio": 0.1, "seed": 1, "code_version": current - 1,
                "validation_spearman": 0.9}]
    path = tmp_path / "tune_fisv.jsonl"
    path.write_text("\n".join(json.dumps(record) for record in records) + "\n")
    assert gate_rules.fisv_cells(path) == {"TES 10 %": {0: {"trs": {"validation": 0.3, "gate": {"chosen": DEFAULT}}}}}


def test_without_any_results_it_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["gate_rules.py", "--fisv-results", str(tmp_path / "none.jsonl"),
                                     "--demo-runs", str(tmp_path / "a"), "--demo-nograph-runs", str(tmp_path / "b"),
                                     "--demo-nogate-runs", str(tmp_path / "c")])
    with pytest.raises(SystemExit, match="no results found"):
        gate_rules.main()
