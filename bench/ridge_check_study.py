#!/usr/bin/env python
"""Session 23's study (docs/research/issue11-2026-12-01.md): the gate's ridge check
(``semi.gate_ridge_check``), on validation splits only.

Where the graph guard keeps the graph, version 10's teacher is the EMA teacher, and on the
embedded dives at 10 % labels those runs are where `trs` collapses (validation ρ 0.16-0.53 on
seeds 50-79, against `ridge` 0.60-0.87). The check scores the ridge teacher on the gate's own
folds and lets it teach (without the graph) where it beats the option the gate chose by more
than the gate's margin (train.methods.gate.ridge_check).

The same six validation cells as ``bench/segment_ridge_study.py`` (the embedded dives at 10 % and
20 % labels, Fis-V TES and PCS at 10 % and 25 %; 25 % of the training videos held out, the test
rows cut off before training). `trs` with the check runs everywhere; where its check did not
switch, the run is version 10's bit for bit (tests/train/test_gate_ridge_check.py), so version 10
is trained only where it switched (and on ``--verify`` runs where it did not, to show the
identity). Records go to bench/results/ridge_check_study.jsonl; finished runs are never rerun.

    python bench/ridge_check_study.py --seeds 60-69            # exploratory (session 23)
    python bench/ridge_check_study.py --seeds 90-99 --rule     # the registered decision
    python bench/ridge_check_study.py --second --seeds 100-119  # the second candidate (full margin)
    python bench/ridge_check_study.py --test-protocols --seeds 0-9   # which README Fis-V test runs switch

The table gives per cell each method's mean validation ρ, the check's paired difference against
version 10 and against `supervised` (mean ± sd, wins), and in how many runs the check switched.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fisv_common import (  # noqa: E402
    DEFAULT_CACHE, DEFAULT_FISV_DIR, REPO_ROOT, config_digest, fit_without_test, load_results,
)
from bench.gate_rule_study import DEMO_CACHE, DEMO_ROOT  # noqa: E402
from bench.segment_ridge_study import CELLS, paired_text, run_keyed  # noqa: E402
from bench.tune_fisv import build  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results" / "ridge_check_study.jsonl"
# Each variant spelled out, so that its identity does not move with today's defaults.
VARIANTS = {"trs-check": "trs:semi.gate_ridge_check=true;semi.gate_ridge_margin=0.5;semi.teacher_ridge_share=0",
            "trs-v10": "trs:semi.gate_ridge_check=false;semi.teacher_ridge_share=0",
            "ridge": "ridge:ridge.segments=3", "supervised": "supervised",
            # the second candidate: the gate's own margin (semi.gate_ridge_margin = 1)
            "trs-check-full": "trs:semi.gate_ridge_check=true;semi.gate_ridge_margin=1;semi.teacher_ridge_share=0"}
VERSIONS = {"trs-check": 1, "trs-v10": 10, "ridge": 3, "supervised": 1, "trs-check-full": 1, "signal": 1}
# The rule registered before any seed 90-99 run (research log, session 23), on the mean paired
# validation ρ of the check against version 10: adopt iff the dives' 10 % cell gains more than
# RULE_DIVES_GAIN, the 40 Fis-V runs together change by at least RULE_FISV_POOLED (the check
# switches few Fis-V runs, so one cell's mean is one run's draw), and no cell loses more than
# RULE_WORST.
RULE_DIVES_GAIN, RULE_FISV_POOLED, RULE_WORST, RULE_SEEDS = 0.02, -0.005, -0.02, "90-99"


# The second rule, written after the first failed on seeds 90-99 and before any seed 100-119 run
# (research log, session 23): the check with the gate's full margin, adopted iff the dives' 10 %
# cell gains more than SECOND_DIVES_GAIN, Fis-V's 80 runs together change by SECOND_FISV_POOLED or
# more, and no cell loses more than SECOND_WORST (mean paired validation ρ against version 10, the
# runs where the check cannot apply counted as unchanged).
SECOND_DIVES_GAIN, SECOND_FISV_POOLED, SECOND_WORST, SECOND_SEEDS = 0.01, -0.003, -0.01, "100-119"
GUARD_MARGIN = 0.1  # semi.graph_guard_margin's default: the check applies to signals in [-0.1, 0)


def record_id(method: str, dataset: str, target: str, ratio: float, seed: int) -> str:
    return config_digest({"study": "ridge_check", "method": method, "dataset": dataset, "target": target,
                          "ratio": ratio, "seed": seed, "code_version": VERSIONS[method]})


def config_of(method: str, dataset: str, target: str, ratio: float, seed: int) -> dict:
    if dataset == "dives":
        return build(VARIANTS[method], target, ratio, seed, DEMO_CACHE, DEMO_ROOT, dataset="mtl-aqa")
    return build(VARIANTS[method], target, ratio, seed, DEFAULT_CACHE, DEFAULT_FISV_DIR)


def run_record(config_dict: dict) -> dict:
    """One run without its test rows: validation ρ, and for trs what its gate decided."""
    fitted = fit_without_test(config_dict, threads=1)
    result = {"validation_spearman": fitted.validation["spearman"], "seconds": fitted.seconds}
    gate = getattr(fitted.method, "gate", None)
    if gate:
        result.update(teacher=gate.get("teacher"), chosen=gate["chosen"], ridge_check=gate.get("ridge_check"),
                      guard_signal=(gate.get("graph_guard") or {}).get("signal"),
                      chosen_estimate=(gate.get("estimates") or {}).get(gate["chosen"]))
    return result


def _task(key: tuple, config: dict) -> tuple[tuple, dict]:
    return key, run_record(config)


def run_missing(keys: list[tuple], results: dict, jobs: int) -> None:
    run_keyed(keys, results, jobs, identify=record_id, configure=config_of, task=_task, path=RESULTS, label="method")


def switched(record: dict | None) -> bool:
    return bool(record and (record.get("ridge_check") or {}).get("switches"))


def cell_values(results: dict, cell: tuple, seeds: list[int]) -> dict[str, dict[int, float]]:
    """Per method, per seed, validation ρ; version 10's value is the check's where the check did
    not switch (the same run) and its own run where it did (missing: the seed is left out)."""
    runs = {method: {seed: results.get(record_id(method, *cell, seed)) for seed in seeds} for method in VARIANTS}
    values = {method: {seed: run["validation_spearman"] for seed, run in by_seed.items() if run is not None}
              for method, by_seed in runs.items()}
    check = runs["trs-check"]
    values["trs-v10"] = {seed: (values["trs-v10"].get(seed) if switched(check[seed]) else value)
                         for seed, value in values["trs-check"].items()}
    values["trs-v10"] = {seed: value for seed, value in values["trs-v10"].items() if value is not None}
    values["switched"] = {seed: 1.0 for seed in check if switched(check[seed])}
    return values


def identity_check(results: dict, seeds: list[int]) -> str:
    """Where version 10 was also trained on a run whose check did not switch: the largest |Δρ|."""
    deviations = []
    for cell in CELLS:
        for seed in seeds:
            check, plain = (results.get(record_id(method, *cell, seed)) for method in ("trs-check", "trs-v10"))
            if check is not None and plain is not None and not switched(check):
                deviations.append(abs(check["validation_spearman"] - plain["validation_spearman"]))
    return (f"version 10 beside the check where it did not switch: max |Δρ| {max(deviations):.1e} "
            f"({len(deviations)} runs)") if deviations else "no identity runs"


def report(results: dict, seeds: list[int], rule: bool = False) -> str:
    lines = ["| cell | supervised | ridge | trs v10 | trs + check | check − v10 | check − supervised | switched |",
             "|---|---|---|---|---|---|---|---|"]
    gains: dict[tuple, float] = {}
    fisv_differences: list[float] = []
    for cell in CELLS:
        values = cell_values(results, cell, seeds)
        means = [f"{statistics.fmean(values[method].values()):.3f}" if values[method] else "–"
                 for method in ("supervised", "ridge", "trs-v10", "trs-check")]
        both = sorted(set(values["trs-check"]) & set(values["trs-v10"]))
        if both:
            differences = [values["trs-check"][seed] - values["trs-v10"][seed] for seed in both]
            gains[cell] = statistics.fmean(differences)
            if cell[0] == "fis-v":
                fisv_differences += differences
        lines.append(f"| {cell[0]} {cell[1]} {cell[2]:.0%} | " + " | ".join(means) + " | "
                     f"{paired_text(values['trs-check'], values['trs-v10'])} | "
                     f"{paired_text(values['trs-check'], values['supervised'])} | "
                     f"{len(values['switched'])}/{len(values['trs-check'])} |")
    lines.append(identity_check(results, seeds))
    if rule:
        complete = all(len(cell_values(results, cell, seeds)["trs-v10"]) == len(seeds) for cell in CELLS)
        if not complete or len(gains) < len(CELLS):
            lines.append("rule: not every run is there yet")
        else:
            dives, worst = gains[CELLS[0]], min(gains.values())
            fisv = statistics.fmean(fisv_differences)
            adopted = dives > RULE_DIVES_GAIN and fisv >= RULE_FISV_POOLED and worst >= RULE_WORST
            lines.append(f"rule (registered for seeds {RULE_SEEDS}): dives 10 % {dives:+.4f} (> +{RULE_DIVES_GAIN}), "
                         f"Fis-V's {len(fisv_differences)} runs {fisv:+.4f} (≥ {RULE_FISV_POOLED}), worst cell "
                         f"{worst:+.4f} (≥ {RULE_WORST}): {'ADOPT' if adopted else 'do not adopt'}")
    return "\n".join(lines)


def signal_record(key: tuple) -> tuple[tuple, dict]:
    """The split's graph-guard signal (no validation label read), as the run computes it."""
    from bench.graph_guard_probe import signal_of

    return key, {"signal": signal_of(config_of("trs-v10", *key[1:]), 10)["signal"]}


def applicable(signal_entry: dict | None) -> bool:
    """Whether the check can switch a run with this guard record: the guard kept the graph with a
    signal below 0 (elsewhere semi.teacher=auto resolves as in version 10, and the check never runs)."""
    signal = (signal_entry or {}).get("signal")
    return signal is not None and -GUARD_MARGIN <= signal < 0


def run_second(seeds: list[int], results: dict, jobs: int) -> None:
    """Signals everywhere, the full-margin check where it can apply, version 10 where it switched."""
    from joblib import Parallel, delayed

    from bench.fisv_common import append_result, ensure_fisv_cache

    ensure_fisv_cache(DEFAULT_FISV_DIR, DEFAULT_CACHE)
    signal_keys = [("signal", *cell, seed) for cell in CELLS for seed in seeds]
    missing = [key for key in signal_keys if record_id(*key) not in results]
    for key, result in Parallel(n_jobs=jobs, return_as="generator_unordered")(
            delayed(signal_record)(key) for key in missing):
        record = {"id": record_id(*key), "method": "signal", "dataset": key[1], "target": key[2], "ratio": key[3],
                  "seed": key[4], **result}
        append_result(RESULTS, record)
        results[record["id"]] = record
    todo = [("trs-check-full", *key[1:]) for key in signal_keys if applicable(results[record_id(*key)])]
    run_missing(todo, results, jobs)
    run_missing([("trs-v10", *key[1:]) for key in todo if switched(results[record_id(*key)])], results, jobs)


def second_difference(results: dict, cell: tuple, seed: int) -> tuple[float | None, bool, str | None]:
    """One split of the second rule: the check − version 10 (0 where the check cannot apply or
    did not switch; None while a needed run is missing), whether it could apply, and the switch."""
    signal = results.get(record_id("signal", *cell, seed))
    if signal is None or not applicable(signal):
        return (None if signal is None else 0.0), False, None
    check = results.get(record_id("trs-check-full", *cell, seed))
    if check is None or not switched(check):
        return (None if check is None else 0.0), True, None
    plain = results.get(record_id("trs-v10", *cell, seed))
    if plain is None:
        return None, True, None
    before, after = plain["validation_spearman"], check["validation_spearman"]
    return after - before, True, f"s{seed} {before:.3f} → {after:.3f}"


def second_report(results: dict, seeds: list[int]) -> str:
    """The second candidate against version 10, per cell: paired mean over every seed (0 where the
    check cannot apply or did not switch), and each switch."""
    lines = ["| cell | applicable | switched | check − v10 (every seed) | switches: v10 → check |", "|---|---|---|---|---|"]
    gains, fisv, complete = {}, [], True
    for cell in CELLS:
        outcomes = [second_difference(results, cell, seed) for seed in seeds]
        complete = complete and all(difference is not None for difference, _, _ in outcomes)
        differences = [difference for difference, _, _ in outcomes if difference is not None]
        switches = [switch for _, _, switch in outcomes if switch is not None]
        if differences:
            gains[cell] = statistics.fmean(differences)
            if cell[0] == "fis-v":
                fisv += differences
        mean = f"{gains[cell]:+.4f} ({len(differences)} seeds)" if differences else "–"
        lines.append(f"| {cell[0]} {cell[1]} {cell[2]:.0%} | {sum(can for _, can, _ in outcomes)} | {len(switches)} | "
                     f"{mean} | {', '.join(switches) or '–'} |")
    if not complete or len(gains) < len(CELLS):
        lines.append("second rule: not every run is there yet")
        return "\n".join(lines)
    dives, worst, pooled = gains[CELLS[0]], min(gains.values()), statistics.fmean(fisv)
    adopted = dives > SECOND_DIVES_GAIN and pooled >= SECOND_FISV_POOLED and worst >= SECOND_WORST
    lines.append(f"second rule (registered for seeds {SECOND_SEEDS}): dives 10 % {dives:+.4f} (> +{SECOND_DIVES_GAIN}), "
                 f"Fis-V's {len(fisv)} runs {pooled:+.4f} (≥ {SECOND_FISV_POOLED}), worst cell {worst:+.4f} "
                 f"(≥ {SECOND_WORST}): {'ADOPT' if adopted else 'do not adopt'}")
    return "\n".join(lines)


def test_protocol_decision(name: str, config_dict: dict) -> dict:
    """Whether the check switches a test-protocol run: its guard, and where the check could apply
    (the EMA teacher on a signal below 0) its gate, computed as the run computes them (fold jobs
    only; no burn-in, nothing scored)."""
    import torch

    from train.config import config_from_json
    from train.data import prepare_data
    from train.methods import make_method
    from train.methods.gate import guard_record, run_gate

    torch.set_num_threads(1)
    config = config_from_json({**config_dict, "semi": {**config_dict["semi"], "gate_ridge_check": True}}, name)
    method = make_method(config, prepare_data(config))
    guard = guard_record(method)
    record = {"name": name, "signal": None if guard is None else guard["signal"], "switches": False}
    if guard is None or guard["signal"] is None or guard["drops_graph"] or guard["signal"] >= 0:
        return record
    check = run_gate(method).get("ridge_check") or {}
    return {**record, "lead": check.get("lead"), "needed": check.get("needed"), "switches": bool(check.get("switches"))}


def test_protocols(resplits: int, seeds: list[int], jobs: int) -> list[dict]:
    """:func:`test_protocol_decision` for every trs run of the README's Fis-V tables."""
    from joblib import Parallel, delayed

    from bench.fisv_common import ensure_fisv_cache
    from bench.graph_guard_probe import test_protocol_configs

    ensure_fisv_cache(DEFAULT_FISV_DIR, DEFAULT_CACHE)
    configs = test_protocol_configs(resplits, seeds)
    decisions = []
    for record in Parallel(n_jobs=jobs, return_as="generator")(
            delayed(test_protocol_decision)(name, config) for name, config in configs):
        decisions.append(record)
        if record["switches"]:
            print(f"{record['name']}: the check switches (signal {record['signal']:+.3f}, lead {record['lead']}, "
                  f"needed {record['needed']:.3f})", flush=True)
    return decisions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default=RULE_SEEDS)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--verify", type=int, default=2,
                        help="Also train version 10 on this many runs whose check did not switch (identity).")
    parser.add_argument("--report", action="store_true", help="Only print the table of stored results.")
    parser.add_argument("--rule", action="store_true", help="Also print the registered rule's decision.")
    parser.add_argument("--test-protocols", action="store_true",
                        help="Instead: in which trs runs of the README's Fis-V test tables (official split and "
                             "--resplits resplits, 10 and 25 %%, --seeds) the check switches (reported only).")
    parser.add_argument("--resplits", type=int, default=5)
    parser.add_argument("--second", action="store_true",
                        help="The second candidate (the gate's full margin): signals, then the check where it can "
                             "apply and version 10 where it switched; prints the second rule's table.")
    args = parser.parse_args()

    from train.sweep import parse_seeds

    seeds = parse_seeds(args.seeds)
    if args.second:
        results = load_results(RESULTS)
        if not args.report:
            run_second(seeds, results, args.jobs)
        print(second_report(results, seeds))
        return 0
    if args.test_protocols:
        decisions = test_protocols(args.resplits, seeds, args.jobs)
        switched_runs = [record["name"] for record in decisions if record["switches"]]
        below = sum(record["signal"] is not None and -0.1 <= record["signal"] < 0 for record in decisions)
        print(f"the check switches {len(switched_runs)} of {len(decisions)} runs ({below} with a guard signal in "
              f"[-0.1, 0)): {', '.join(switched_runs) or 'none'}")
        return 0
    results = load_results(RESULTS)
    if not args.report:
        quick = [(method, *cell, seed) for method in ("ridge", "supervised") for cell in CELLS for seed in seeds]
        run_missing(quick + [("trs-check", *cell, seed) for cell in CELLS for seed in seeds], results, args.jobs)
        checks = [(cell, seed, results[record_id("trs-check", *cell, seed)]) for cell in CELLS for seed in seeds]
        plain = [("trs-v10", *cell, seed) for cell, seed, record in checks if switched(record)]
        plain += [("trs-v10", *cell, seed) for cell, seed, record in checks if not switched(record)][:args.verify]
        run_missing(plain, results, args.jobs)
    print(report(results, seeds, args.rule))
    return 0


if __name__ == "__main__":
    sys.exit(main())
