#!/usr/bin/env python
"""Compare decision rules for ``trs``'s label-only gate offline, from runs already made.

Every ``trs`` run records the gate's out-of-fold Spearman of each option, per fold and cross-fitting
(``diagnostics.json`` -> ``gate.fold_estimates``; ``bench/tune_fisv.py`` keeps them in its JSONL).
A rule maps those numbers to a choice; what the choice would have given is read from a run that
made it: the configured option from the ``trs`` run (when its gate chose it), "no graph" from the
``trs`` run with ``semi.use_graph=false``, "teacher only, graph" from ``semi.use_reference=false``.
Everything is on **validation** splits (the test split is never read here), paired against
``supervised`` on the same split and seed. (``trs-no-gate`` = ``trs:semi.gate=false``.)

    python bench/gate_rules.py                                     # Fis-V (tune_fisv.jsonl) + the demo
    python bench/gate_rules.py --demo-runs bench/results/demo-val  # sweep folders of the demo dives

Rules (``margin`` is today's gate: the default option unless another's pooled estimate beats it by
more than 1/sqrt(n_labelled)); ``paired z``: per fold of every cross-fitting, the difference between
an option's Spearman and the default's on the same held-out videos; an option replaces the default
when the mean difference exceeds z standard errors of it (sd / sqrt(number of folds)), the largest
such mean winning.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]


sys.path.insert(0, str(REPO_ROOT))
from train.methods.gate import margin_choice, paired_choice, paired_differences  # noqa: E402


def choose_margin(gate: dict) -> str:
    return margin_choice(gate["estimates"], gate["default"], gate["margin"])


def choose_paired(gate: dict, z: float) -> str:
    return paired_choice(paired_differences(gate["fold_estimates"], gate["default"]), gate["default"], z)


RULES = {"margin (today)": choose_margin, "paired z=1": lambda g: choose_paired(g, 1.0),
         "paired z=1.5": lambda g: choose_paired(g, 1.5), "paired z=2": lambda g: choose_paired(g, 2.0)}


def outcome_variant(option: str) -> str:
    """Which recorded run realises ``option`` (named as the gate names it)."""
    sources, graph = option.split(", graph ")
    if float(graph) == 0:
        return "trs-no-graph"
    # The configured option itself, when the trs run's own gate chose something else: a run
    # with the gate off made it.
    return "trs-no-gate" if sources == "teacher+reference" else "trs-no-reference"


def fisv_cells(results: Path) -> dict:
    """{cell: {seed: {variant: record}}} from tune_fisv's JSONL (latest code version of each variant)."""
    sys.path.insert(0, str(REPO_ROOT))
    from bench.tune_fisv import code_version, parse_variant

    cells: dict = {}
    for line in results.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get("code_version", 1) != code_version(parse_variant(record["variant"])[0]):
            continue
        cell = f"{record['target']} {record['ratio'] * 100:g} %"
        cells.setdefault(cell, {}).setdefault(record["seed"], {})[record["variant"]] = {
            "validation": record.get("validation_spearman"), "gate": record.get("gate")}
    return cells


def demo_cells(folders: dict[str, Path]) -> dict:
    """The same from sweep folders: {variant: sweep folder} (runs found by their metrics.json)."""
    seeds: dict = {}
    for variant, folder in folders.items():
        for metrics_path in sorted(folder.rglob("metrics.json")):
            run = metrics_path.parent
            metrics = json.loads(metrics_path.read_text())
            method = metrics["method"]
            name = "supervised" if method == "supervised" else variant
            if method not in ("supervised", "trs"):
                continue
            validation = metrics.get("validation_spearman", (metrics.get("validation") or {}).get("spearman"))
            diagnostics = run / "diagnostics.json"
            gate = json.loads(diagnostics.read_text()).get("gate") if diagnostics.is_file() else None
            seeds.setdefault(metrics["seed"], {})[name] = {"validation": validation, "gate": gate}
    return {"demo 20 %": seeds} if seeds else {}


def evaluate(cells: dict) -> str:
    lines = ["| rule | " + " | ".join(cells) + " |", "|---|" + "---|" * len(cells)]
    for rule_name, rule in RULES.items():
        row = []
        for cell, seeds in cells.items():
            deltas, switches, missing = [], 0, 0
            for seed, runs in sorted(seeds.items()):
                trs, supervised = runs.get("trs"), runs.get("supervised")
                if not trs or not supervised or not (trs.get("gate") or {}).get("fold_estimates"):
                    continue
                gate = trs["gate"]
                choice = rule(gate)
                today = choose_margin(gate)
                variant = "trs" if choice == today else outcome_variant(choice)
                switches += choice != today
                realised = runs.get(variant)
                if realised is None or realised.get("validation") is None:
                    missing += 1
                    continue
                deltas.append(realised["validation"] - supervised["validation"])
            if not deltas:
                row.append("")
                continue
            mean = float(np.mean(deltas))
            se = float(np.std(deltas, ddof=1) / math.sqrt(len(deltas))) if len(deltas) > 1 else math.nan
            row.append(f"{mean:+.3f} ± {se:.3f} (n {len(deltas)}, {switches} changed"
                       + (f", {missing} missing" if missing else "") + ")")
        lines.append(f"| {rule_name} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fisv-results", type=Path, default=REPO_ROOT / "bench" / "results" / "tune_fisv.jsonl")
    parser.add_argument("--demo-runs", type=Path, default=REPO_ROOT / "bench" / "results" / "demo-val",
                        help="sweep folder of trs + supervised on the demo, --validation-fraction set")
    parser.add_argument("--demo-nograph-runs", type=Path,
                        default=REPO_ROOT / "bench" / "results" / "demo-val-nograph",
                        help="sweep folder of trs --set semi.use_graph=false, same splits")
    parser.add_argument("--demo-nogate-runs", type=Path, default=REPO_ROOT / "bench" / "results" / "demo-val-nogate",
                        help="sweep folder of trs --set semi.gate=false, same splits")
    args = parser.parse_args()
    cells = fisv_cells(args.fisv_results) if args.fisv_results.is_file() else {}
    folders = {name: path for name, path in (("trs", args.demo_runs), ("trs-no-graph", args.demo_nograph_runs),
                                             ("trs-no-gate", args.demo_nogate_runs)) if path.is_dir()}
    cells.update(demo_cells(folders))
    if not cells:
        sys.exit("error: no results found (run bench/tune_fisv.py and/or the demo sweeps first)")
    print("Paired Δ validation ρ against supervised (mean ± se over seeds), per rule:\n")
    print(evaluate(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
