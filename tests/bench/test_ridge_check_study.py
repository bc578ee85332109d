"""bench/ridge_check_study.py (research log, session 23): the check's runs and version 10's are
the same configuration but for the check, version 10 counts as the check's own run where the
check did not switch, and the registered rule reads the dives' 10 % cell and the worst cell."""

from __future__ import annotations

from bench import ridge_check_study as study


def test_the_variants_differ_only_by_the_check_and_have_their_own_identities():
    check = study.config_of("trs-check", "fis-v", "TES", 0.1, 3)
    plain = study.config_of("trs-v10", "fis-v", "TES", 0.1, 3)
    full = study.config_of("trs-check-full", "fis-v", "TES", 0.1, 3)
    assert check["semi"]["gate_ridge_check"] is True and plain["semi"]["gate_ridge_check"] is False
    assert check["semi"]["gate_ridge_margin"] == 0.5 and full["semi"]["gate_ridge_margin"] == 1.0  # whatever today's
    checks = ("gate_ridge_check", "gate_ridge_margin")
    assert {key: value for key, value in check["semi"].items() if key not in checks} == \
        {key: value for key, value in plain["semi"].items() if key not in checks} == \
        {key: value for key, value in full["semi"].items() if key not in checks}
    assert {key: value for key, value in check.items() if key != "semi"} == \
        {key: value for key, value in plain.items() if key != "semi"}
    assert study.config_of("trs-check", "dives", "final_score", 0.1, 3)["validation_fraction"] == 0.25
    ids = {study.record_id(method, *cell, seed) for method in study.VARIANTS for cell in study.CELLS for seed in (0, 1)}
    assert len(ids) == len(study.VARIANTS) * len(study.CELLS) * 2


def _results(dives_gain: float, fisv_gain: float, seeds=range(3)) -> dict:
    """Every cell: supervised 0.5, ridge 0.6, the check 0.7; the check switched in seed 0 only,
    where version 10 read 0.7 - gain (the dives' 10 % cell: ``dives_gain``, Fis-V: ``fisv_gain``,
    the dives' 20 % cell: 0)."""
    results = {}
    for cell in study.CELLS:
        gain = dives_gain if cell == study.CELLS[0] else fisv_gain if cell[0] == "fis-v" else 0.0
        for seed in seeds:
            for method, value in (("supervised", 0.5), ("ridge", 0.6)):
                results[study.record_id(method, *cell, seed)] = {"validation_spearman": value}
            results[study.record_id("trs-check", *cell, seed)] = {
                "validation_spearman": 0.7, "ridge_check": {"switches": seed == 0}}
            if seed == 0:
                results[study.record_id("trs-v10", *cell, seed)] = {"validation_spearman": 0.7 - gain}
    return results


def test_version_10_is_the_checks_run_where_it_did_not_switch():
    values = study.cell_values(_results(0.3, 0.0), study.CELLS[0], [0, 1, 2])
    assert values["trs-v10"] == {0: 0.7 - 0.3, 1: 0.7, 2: 0.7}
    assert values["switched"] == {0: 1.0}
    # a switched run without its version-10 run leaves the seed out rather than pairing it with itself
    results = _results(0.3, 0.0)
    del results[study.record_id("trs-v10", *study.CELLS[0], 0)]
    assert study.cell_values(results, study.CELLS[0], [0, 1, 2])["trs-v10"] == {1: 0.7, 2: 0.7}
    assert "not every run is there yet" in study.report(results, [0, 1, 2], rule=True)


def test_the_rule_adopts_only_a_dives_gain_that_costs_no_cell():
    def decision(dives_gain, fisv_gain):
        return study.report(_results(dives_gain, fisv_gain), [0, 1, 2], rule=True).splitlines()[-1]

    assert decision(0.3, 0.0).endswith(": ADOPT")  # +0.1 per seed in the dives' 10 % cell
    assert decision(0.3, -0.012).endswith(": ADOPT")  # Fis-V -0.004 in every cell: within both bars
    assert decision(0.03, 0.0).endswith("do not adopt")  # +0.01: not above +0.02
    assert decision(0.3, -0.03).endswith("do not adopt")  # Fis-V pays -0.01 over its 40 runs
    results = _results(0.3, 0.03)  # Fis-V +0.01 per cell, but one cell -0.023 (its switched run -0.07):
    results[study.record_id("trs-v10", *study.CELLS[2], 0)] = {"validation_spearman": 0.77}
    line = study.report(results, [0, 1, 2], rule=True).splitlines()[-1]
    assert "Fis-V's 12 runs +0.0017" in line and line.endswith("do not adopt")  # the pool passes, the cell does not
    table = study.report(_results(0.3, 0.0), [0, 1, 2])
    assert "| dives final_score 10% | 0.500 | 0.600 | 0.600 | 0.700 | +0.100 ± 0.173 (1/3) |" in table
    assert "| 1/3 |" in table


def _with_guard_signal(monkeypatch, signal: float) -> None:
    import train.methods.graph_guard as guard_module

    real = guard_module.graph_guard
    monkeypatch.setattr(guard_module, "graph_guard", lambda data, seed, repeats, margin: {
        **real(data, seed, repeats, margin), "signal": signal, "drops_graph": bool(signal < -margin)})


def test_a_test_protocol_run_is_decided_as_the_run_decides(tiny_config, monkeypatch):
    from aqa.config import to_dict
    from train.config import config_from_json
    from train.data import prepare_data
    from train.methods import make_method
    from train.methods.gate import run_gate

    config = to_dict(tiny_config("trs", "semi.gate_ridge_check=false"))  # the check is turned on for the decision
    _with_guard_signal(monkeypatch, 0.05)  # a graph that gains out of fold: no gate needed
    assert study.test_protocol_decision("gains", config) == {"name": "gains", "signal": 0.05, "switches": False}
    _with_guard_signal(monkeypatch, -0.05)
    decision = study.test_protocol_decision("loses", config)
    checked = config_from_json({**config, "semi": {**config["semi"], "gate_ridge_check": True}}, "test")
    check = run_gate(make_method(checked, prepare_data(checked)))["ridge_check"]
    assert decision == {"name": "loses", "signal": -0.05, "lead": check["lead"], "needed": check["needed"],
                        "switches": check["switches"]}


def _second_results(dives_gain: float, fisv_gain: float, seeds=range(4)) -> dict:
    """Signals: seed 0 -0.05 (the check applies; it switches), seed 1 -0.05 (applies, no switch),
    seed 2 +0.05 and seed 3 -0.2 (it cannot apply); the switched run gains ``dives_gain`` in the
    dives' 10 % cell, ``fisv_gain`` on Fis-V, 0 in the dives' 20 % cell."""
    results = {}
    for cell in study.CELLS:
        gain = dives_gain if cell == study.CELLS[0] else fisv_gain if cell[0] == "fis-v" else 0.0
        for seed, signal in zip(seeds, (-0.05, -0.05, 0.05, -0.2)):
            results[study.record_id("signal", *cell, seed)] = {"signal": signal}
            if -0.1 <= signal < 0:
                results[study.record_id("trs-check-full", *cell, seed)] = {
                    "validation_spearman": 0.7, "ridge_check": {"switches": seed == 0}}
            if seed == 0:
                results[study.record_id("trs-v10", *cell, seed)] = {"validation_spearman": 0.7 - gain}
    return results


def test_the_second_rule_counts_runs_the_check_cannot_switch_as_unchanged():
    assert not study.applicable({"signal": 0.0}) and not study.applicable({"signal": -0.11})
    assert study.applicable({"signal": -0.1}) and study.applicable({"signal": -0.01})
    assert not study.applicable({"signal": None}) and not study.applicable(None)
    table = study.second_report(_second_results(0.2, 0.0), [0, 1, 2, 3])
    assert "| dives final_score 10% | 2 | 1 | +0.0500 (4 seeds) | s0 0.500 → 0.700 |" in table
    assert table.splitlines()[-1].endswith(": ADOPT")
    assert study.second_report(_second_results(0.2, -0.02), [0, 1, 2, 3]).splitlines()[-1].endswith(
        "do not adopt")  # Fis-V -0.005 per cell
    assert study.second_report(_second_results(0.03, 0.0), [0, 1, 2, 3]).splitlines()[-1].endswith(
        "do not adopt")  # +0.0075: not above +0.01
    results = _second_results(0.2, 0.0)
    del results[study.record_id("trs-v10", *study.CELLS[3], 0)]
    assert study.second_report(results, [0, 1, 2, 3]).splitlines()[-1] == "second rule: not every run is there yet"
