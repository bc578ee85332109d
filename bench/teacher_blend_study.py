#!/usr/bin/env python
"""Session 24's study (docs/research/issue11-2026-12-01.md): the ridge's share of the EMA
teacher's pseudo-labels (``semi.teacher_ridge_share``), on validation splits only.

Where the EMA teacher teaches (the graph guard kept the graph: every Fis-V split, a few of the
dives' at 10 % labels), its pseudo-labels are ``(1 - share) * EMA + share * ridge`` per
unlabelled video: two unlike learners (a token-mixing head, a linear model on 3 segment means)
averaged. Where the guard drops the graph the teacher is the ridge anyway and the run is version
11's bit for bit (tests/train/test_teacher_blend.py), so there the blend is not trained (its
difference is 0) unless ``--verify`` asks for it.

The six validation cells of ``bench/segment_ridge_study.py`` (the embedded dives at 10 % and 20 %
labels, Fis-V TES and PCS at 10 % and 25 %; 25 % of the training videos held out, the test rows
cut off before training). Records go to bench/results/teacher_blend_study.jsonl; finished runs
are never rerun.

    python bench/teacher_blend_study.py --seeds 120-125            # exploratory
    python bench/teacher_blend_study.py --seeds 130-149 --rule     # the registered decision

The table gives per cell each variant's mean validation ρ, the blend's paired difference against
version 11 and both against `supervised` (mean ± sd, wins), and in how many runs the blend acted.
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

RESULTS = REPO_ROOT / "bench" / "results" / "teacher_blend_study.jsonl"
# Each variant spelled out, so that its identity does not move with today's defaults.
VARIANTS = {"trs-v11": "trs:semi.teacher_ridge_share=0", "trs-blend": "trs:semi.teacher_ridge_share=0.5",
            "supervised": "supervised"}
VERSIONS = {"trs-v11": 11, "trs-blend": 11, "supervised": 1}
GUARD_MARGIN = 0.1  # semi.graph_guard_margin's default: below -0.1 the guard drops the graph


def record_id(variant: str, dataset: str, target: str, ratio: float, seed: int) -> str:
    return config_digest({"study": "teacher_blend", "variant": variant, "dataset": dataset, "target": target,
                          "ratio": ratio, "seed": seed, "code_version": VERSIONS[variant]})


def config_of(variant: str, dataset: str, target: str, ratio: float, seed: int) -> dict:
    if dataset == "dives":
        return build(VARIANTS[variant], target, ratio, seed, DEMO_CACHE, DEMO_ROOT, dataset="mtl-aqa")
    return build(VARIANTS[variant], target, ratio, seed, DEFAULT_CACHE, DEFAULT_FISV_DIR)


def run_record(config_dict: dict) -> dict:
    """One run without its test rows: validation ρ, the teacher's pseudo-label quality on the
    unlabelled videos (last refresh), and for trs what its gate decided."""
    fitted = fit_without_test(config_dict, threads=1)
    result = {"validation_spearman": fitted.validation["spearman"], "seconds": fitted.seconds}
    gate = getattr(fitted.method, "gate", None)
    if gate:
        result.update(teacher=gate.get("teacher"), chosen=gate["chosen"],
                      ridge_check_switched=bool((gate.get("ridge_check") or {}).get("switches")),
                      guard_signal=(gate.get("graph_guard") or {}).get("signal"))
    if fitted.diagnostics is not None:
        last = fitted.diagnostics.get("last_refresh") or {}
        result["pseudo_label_spearman"] = {key: value for key, value in last.items() if key.endswith("_spearman")}
    return result


def _task(key: tuple, config: dict) -> tuple[tuple, dict]:
    return key, run_record(config)


def run_missing(keys: list[tuple], results: dict, jobs: int) -> None:
    run_keyed(keys, results, jobs, identify=record_id, configure=config_of, task=_task, path=RESULTS, label="variant")


def blend_acts(v11_record: dict | None) -> bool:
    """Whether the blend can change the run: the guard kept the graph, so the EMA teacher teaches
    at the gate's start (where the guard drops it, the teacher is the ridge and the blend is idle)."""
    signal = (v11_record or {}).get("guard_signal")
    return signal is None or signal >= -GUARD_MARGIN


def cell_values(results: dict, cell: tuple, seeds: list[int]) -> dict[str, dict[int, float]]:
    """Per variant, per seed, validation ρ; the blend's value is version 11's where it cannot act."""
    runs = {variant: {seed: results.get(record_id(variant, *cell, seed)) for seed in seeds} for variant in VARIANTS}
    values = {variant: {seed: run["validation_spearman"] for seed, run in by_seed.items() if run is not None}
              for variant, by_seed in runs.items()}
    for seed, v11 in runs["trs-v11"].items():
        if v11 is not None and not blend_acts(v11):
            values["trs-blend"][seed] = v11["validation_spearman"]
    values["acted"] = {seed: 1.0 for seed, v11 in runs["trs-v11"].items() if v11 is not None and blend_acts(v11)}
    return values


def identity_check(results: dict, seeds: list[int]) -> str:
    """Where the blend was also trained on a run it cannot change: the largest |Δρ|."""
    deviations = []
    for cell in CELLS:
        for seed in seeds:
            v11, blend = (results.get(record_id(variant, *cell, seed)) for variant in ("trs-v11", "trs-blend"))
            if v11 is not None and blend is not None and not blend_acts(v11):
                deviations.append(abs(v11["validation_spearman"] - blend["validation_spearman"]))
    return (f"the blend beside version 11 where it cannot act: max |Δρ| {max(deviations):.1e} "
            f"({len(deviations)} runs)") if deviations else "no identity runs"


def cell_gains(results: dict, seeds: list[int]) -> dict[tuple, list[float]]:
    """Per cell, the paired differences blend − version 11 over the seeds both have."""
    gains = {}
    for cell in CELLS:
        values = cell_values(results, cell, seeds)
        both = sorted(set(values["trs-blend"]) & set(values["trs-v11"]))
        gains[cell] = [values["trs-blend"][seed] - values["trs-v11"][seed] for seed in both]
    return gains


def report(results: dict, seeds: list[int], rule: bool = False) -> str:
    lines = ["| cell | supervised | trs v11 | trs + blend | blend − v11 | v11 − supervised | blend − supervised | acted |",
             "|---|---|---|---|---|---|---|---|"]
    for cell in CELLS:
        values = cell_values(results, cell, seeds)
        means = [f"{statistics.fmean(values[variant].values()):.3f}" if values[variant] else "–"
                 for variant in ("supervised", "trs-v11", "trs-blend")]
        lines.append(f"| {cell[0]} {cell[1]} {cell[2]:.0%} | " + " | ".join(means) + " | "
                     f"{paired_text(values['trs-blend'], values['trs-v11'])} | "
                     f"{paired_text(values['trs-v11'], values['supervised'])} | "
                     f"{paired_text(values['trs-blend'], values['supervised'])} | "
                     f"{len(values['acted'])}/{len(values['trs-v11'])} |")
    lines.append(identity_check(results, seeds))
    if rule:
        lines.append(rule_line(results, seeds))
    return "\n".join(lines)


def rule_line(results: dict, seeds: list[int]) -> str:
    """The rule registered before any seed 130-149 run (research log, session 24), on the paired
    validation ρ of the blend against version 11 (runs where the blend cannot act count 0):
    adopt iff the dives' runs of both cells together gain more than RULE_DIVES_POOLED, Fis-V's runs
    together change by RULE_FISV_POOLED or more, and no cell's mean loses more than RULE_WORST."""
    gains = cell_gains(results, seeds)
    if any(len(differences) < len(seeds) for differences in gains.values()):
        return "rule: not every run is there yet"
    dives = [value for cell, differences in gains.items() if cell[0] == "dives" for value in differences]
    fisv = [value for cell, differences in gains.items() if cell[0] == "fis-v" for value in differences]
    worst = min(statistics.fmean(differences) for differences in gains.values())
    dives_mean, fisv_mean = statistics.fmean(dives), statistics.fmean(fisv)
    adopted = dives_mean > RULE_DIVES_POOLED and fisv_mean >= RULE_FISV_POOLED and worst >= RULE_WORST
    return (f"rule (registered for seeds {RULE_SEEDS}): the dives' {len(dives)} runs {dives_mean:+.4f} "
            f"(> +{RULE_DIVES_POOLED}), Fis-V's {len(fisv)} runs {fisv_mean:+.4f} (≥ {RULE_FISV_POOLED}), worst cell "
            f"{worst:+.4f} (≥ {RULE_WORST}): {'ADOPT' if adopted else 'do not adopt'}")


# Registered before any seed 130-149 run (research log, session 24): the blend (share 0.5) acts
# where the EMA teacher teaches: on every Fis-V split and a few of the dives' (where the guard
# keeps the graph), so the dives' gain is pooled over both cells.
RULE_DIVES_POOLED, RULE_FISV_POOLED, RULE_WORST, RULE_SEEDS = 0.005, -0.003, -0.01, "130-149"


def first_keys(seeds: list[int]) -> list[tuple]:
    """Version 11 and `supervised` on every cell and seed (the blend's runs depend on version 11's
    guard signals: :func:`blend_keys`)."""
    return [(variant, *cell, seed) for variant in ("trs-v11", "supervised") for cell in CELLS for seed in seeds]


def blend_keys(seeds: list[int], results: dict, verify: bool) -> list[tuple]:
    """The blend where version 11's guard kept the graph (and, with ``verify``, on the first run of
    each cell where it dropped it, to show the identity)."""
    keys, shown = [], set()
    for cell in CELLS:
        for seed in seeds:
            v11 = results.get(record_id("trs-v11", *cell, seed))
            if v11 is None:
                continue
            if blend_acts(v11):
                keys.append(("trs-blend", *cell, seed))
            elif verify and cell not in shown:
                shown.add(cell)
                keys.append(("trs-blend", *cell, seed))
    return keys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="120-125")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--report", action="store_true", help="Only print the table of stored results.")
    parser.add_argument("--rule", action="store_true", help="Also print the registered rule's decision.")
    parser.add_argument("--verify", action="store_true",
                        help="Also train the blend on one run per cell where it cannot act (identity check).")
    args = parser.parse_args()

    from train.sweep import parse_seeds

    seeds = parse_seeds(args.seeds)
    results = load_results(RESULTS)
    if not args.report:
        run_missing(first_keys(seeds), results, args.jobs)
        run_missing(blend_keys(seeds, results, args.verify), results, args.jobs)
    print(report(results, seeds, rule=args.rule))
    return 0


if __name__ == "__main__":
    sys.exit(main())
