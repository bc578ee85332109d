#!/usr/bin/env python
"""The margin rule against the paired rule (z = 2) for ``trs``'s gate, on many validation splits.

``bench/gate_rules.py`` compares gate rules on runs already made; with 10 seeds per cell the two
rules almost never disagree, so it cannot tell them apart. This study looks at many more splits
cheaply: the gate's fold jobs need only the configuration and the labelled videos, so step 1 runs
the gate alone (no burn-in, no semi-supervised phase) on each validation split and records the
choice of both rules from the same fold estimates. Step 2 trains the full ``trs`` run both ways
(``semi.gate_paired_z`` unset / 2) only where they disagree and records the validation Spearman;
where they agree the runs are identical, so the paired difference is exactly zero there.

``--rule graph_margin`` (session 11) and ``--rule fisher`` (session 13: the margin rule on Fisher's z
scale, ``semi.gate_scale=fisher``) ask the same of other rules, applied offline to the same records.
``--demo-ratio`` and ``--fisv-ratios`` set the labelled shares of the splits. (Session 18's question,
``semi.gate_graph_min_labelled`` against the Fisher scale, was asked with this script at commit
31609ec; the option was not adopted and is gone.)

Validation splits only (25 % of the training videos held out, as ``bench/tune_fisv.py``; the test
split is never read): Fis-V (TES/PCS x 10 %/25 %) and the demo's dives (20 %).

    python bench/gate_rule_study.py --dataset demo --seeds 0-199 --jobs 2
    python bench/gate_rule_study.py --dataset fis-v --seeds 0-49 --jobs 2
    python bench/gate_rule_study.py --report
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fisv_common import (  # noqa: E402
    DEFAULT_CACHE, DEFAULT_FISV_DIR, REPO_ROOT, append_result, ensure_fisv_cache, run_in_process,
)
from bench.tune_fisv import build  # noqa: E402

RESULTS = REPO_ROOT / "bench" / "results" / "gate_rule_study.jsonl"
DEMO_CACHE = REPO_ROOT / "features" / "synth-dive.h5"
DEMO_ROOT = REPO_ROOT / "data" / "synth-dive"
Z = 2.0
GRAPH_MARGIN = -0.5  # the second question: the graph's own margin (semi.gate_graph_margin)
RULES = {"paired": f"semi.gate_paired_z={Z:g}", "graph_margin": f"semi.gate_graph_margin={GRAPH_MARGIN:g}",
         "fisher": "semi.gate_scale=fisher"}  # the third question (session 13): the margin on Fisher's z scale


def cells(dataset: str, demo_ratio: float = 0.2,
          fisv_ratios: tuple[float, ...] = (0.1, 0.25)) -> list[tuple[str, float]]:
    if dataset == "demo":
        return [("final_score", demo_ratio)]
    return [(target, ratio) for target in ("TES", "PCS") for ratio in fisv_ratios]


# The rule every question is asked against: the margin rule as it was before session 13 (the
# default since is its Fisher-scale form, the third question), so the records stay comparable.
BASELINE = ["semi.gate_scale=spearman"]


def config_of(dataset: str, target: str, ratio: float, seed: int, overrides: list[str] = ()) -> dict:
    variant = "trs:" + ";".join([*BASELINE, *overrides])  # later assignments win
    if dataset == "demo":
        return build(variant, target, ratio, seed, DEMO_CACHE, DEMO_ROOT, dataset="mtl-aqa")
    return build(variant, target, ratio, seed, DEFAULT_CACHE, DEFAULT_FISV_DIR)


def gate_only(dataset: str, target: str, ratio: float, seed: int) -> dict:
    """Both rules' choices from one run of the gate's fold jobs on this split (no training)."""
    import dataclasses

    import torch

    from train.config import config_from_json
    from train.data import prepare_data
    from train.methods import make_method
    from train.methods.gate import decide, plan_gate, run_fold_jobs
    from train.tune import without_test

    torch.set_num_threads(1)
    config = config_from_json(config_of(dataset, target, ratio, seed), "study")
    method = make_method(config, without_test(prepare_data(config)))
    plan = plan_gate(method)
    record = {"dataset": dataset, "target": target, "ratio": ratio, "seed": seed, "kind": "gate",
              "n_labelled": plan.outcome["n_labelled"]}
    if plan.decided is not None:
        return {**record, "margin_choice": plan.decided["chosen"], "paired_choice": plan.decided["chosen"]}
    with torch.random.fork_rng(devices=[]):
        values = run_fold_jobs(method, plan)
    margin = decide(method, plan, values)
    method.config = dataclasses.replace(config, semi=dataclasses.replace(config.semi, gate_paired_z=Z))
    paired = decide(method, plan, values)
    return {**record, "default": margin["default"], "estimates": margin["estimates"], "margin": margin["margin"],
            "margin_choice": margin["chosen"], "paired_choice": paired["chosen"],
            "paired_differences": paired["paired_differences"]}


def offline_choice(record: dict, graph_margin: float | None = None, scale: str = "spearman") -> str:
    """What the margin rule with ``semi.gate_graph_margin = graph_margin`` and ``semi.gate_scale =
    scale`` chooses from a gate record's estimates (the product's own functions, as ``decide``)."""
    from train.config import preset_config
    from train.methods.gate import gate_margin, gate_options, graph_must_earn_its_place, margin_choice, on_scale

    if "estimates" not in record:
        return record["margin_choice"]
    options = gate_options(preset_config("default", "trs"))
    default = next(option for option in options if option.name == record["default"])
    compared = on_scale(record["estimates"], scale)
    margin = gate_margin(record["n_labelled"], scale)
    candidates, start = graph_must_earn_its_place(options, compared, default, graph_margin, margin)
    return margin_choice({option.name: compared[option.name] for option in candidates}, start.name, margin)


def rule_choice(record: dict, rule: str) -> str:
    if rule == "paired":
        return record["paired_choice"]
    if rule == "fisher":
        return offline_choice(record, scale="fisher")
    return offline_choice(record, graph_margin=GRAPH_MARGIN)


def full_runs(dataset: str, target: str, ratio: float, seed: int, rules=("margin", "paired")) -> dict:
    """Validation Spearman of the full trs run under each rule (for a split where they disagree)."""
    results = {}
    for name in rules:
        overrides = [] if name == "margin" else [RULES[name]]
        result = run_in_process(config_of(dataset, target, ratio, seed, overrides), threads=1)
        results[name] = {"validation_spearman": result["validation_spearman"],
                         "chosen": (result.get("gate") or {}).get("chosen")}
    kind = "runs" if tuple(rules) == ("margin", "paired") else "runs-" + "-".join(rules)
    return {"dataset": dataset, "target": target, "ratio": ratio, "seed": seed, "kind": kind, **results}


def _task(arguments):
    kind, *rest = arguments
    if kind == "gate":
        return gate_only(*rest)
    return full_runs(*rest) if kind == "runs" else full_runs(*rest, rules=tuple(kind.split("-")[1:]))


def load(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def outcomes(records: list[dict], rule: str) -> dict[tuple, float]:
    """Per split where ``rule`` and the margin rule disagree: the rule's validation Spearman minus
    the margin rule's, from whichever records trained them (a margin run is the same run in any)."""
    margin, other = {}, {}
    for record in records:
        if record["kind"].startswith("runs"):
            key = (record["dataset"], record["target"], record["ratio"], record["seed"])
            if "margin" in record:
                margin[key] = record["margin"]["validation_spearman"]
            if rule in record:
                other[key] = record[rule]["validation_spearman"]
    return {key: other[key] - margin[key] for key in other if key in margin}


def report(records: list[dict], rule: str = "paired") -> str:
    """Per cell: splits, how often each rule keeps the graph, disagreements, and ``rule``'s
    validation Spearman minus the margin rule's, averaged over every split of the cell (zero where
    they agree) and over the disagreements alone."""
    gates = {(r["dataset"], r["target"], r["ratio"], r["seed"]): r for r in records if r["kind"] == "gate"}
    deltas_by_key = outcomes(records, rule)
    lines = [f"Rule: {RULES[rule]} against the margin rule",
             "| dataset | cell | splits | graph kept (margin / rule) | disagreements | measured | "
             "Δ rule − margin over disagreements | Δ per split (all splits) |",
             "|---|---|---|---|---|---|---|---|"]
    by_cell: dict[tuple, list] = {}
    for key, record in gates.items():
        by_cell.setdefault(key[:3], []).append(record)
    for (dataset, target, ratio), group in sorted(by_cell.items()):
        def kept(choice):
            return "graph 0" not in choice
        disagreements = [r for r in group if r["margin_choice"] != rule_choice(r, rule)]
        deltas = [deltas_by_key[(dataset, target, ratio, r["seed"])] for r in disagreements
                  if (dataset, target, ratio, r["seed"]) in deltas_by_key]
        measured = len(deltas)
        over = f"{np.mean(deltas):+.3f} ({', '.join(f'{d:+.3f}' for d in deltas)})" if deltas else ""
        per_split = f"{np.sum(deltas) / len(group):+.4f}" if measured == len(disagreements) else "incomplete"
        kept_before = sum(kept(r["margin_choice"]) for r in group)
        kept_after = sum(kept(rule_choice(r, rule)) for r in group)
        lines.append(f"| {dataset} | {target} {ratio:g} | {len(group)} | {kept_before} / {kept_after} | "
                     f"{len(disagreements)} | {measured} | {over} | {per_split} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from aqa.errors import UserError
    from train.sweep import parse_list, parse_seeds

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=["demo", "fis-v"], default="demo")
    parser.add_argument("--seeds", default="0-49")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--rule", choices=sorted(RULES), default="paired",
                        help="the rule compared with the margin rule (paired: z = 2; graph_margin: g = -0.5; "
                             "fisher: the margin on Fisher's z scale)")
    parser.add_argument("--demo-ratio", type=float, default=0.2,
                        help="labelled share of the dives' validation splits (0.2: the studies of sessions 11-13)")
    parser.add_argument("--fisv-ratios", default="0.1,0.25",
                        help="labelled shares of the Fis-V validation splits (comma-separated)")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args(argv)
    try:  # the lists of the command line, before anything is read or run
        fisv_ratios = tuple(parse_list(args.fisv_ratios, "fisv-ratios", float))
        seeds = parse_seeds(args.seeds)
    except UserError as error:
        sys.exit(f"error: {error}")
    records = load(args.results)
    if args.report:
        print(report(records, args.rule))
        return 0
    if args.dataset == "demo" and not DEMO_CACHE.is_file():
        sys.exit(f"error: {DEMO_CACHE}: no demo features (run make extract first)")
    if args.dataset == "fis-v":
        ensure_fisv_cache(DEFAULT_FISV_DIR, DEFAULT_CACHE)
    done = {(r["kind"], r["dataset"], r["target"], r["ratio"], r["seed"]) for r in records}
    tasks = [("gate", args.dataset, target, ratio, seed) for seed in seeds
             for target, ratio in cells(args.dataset, args.demo_ratio, fisv_ratios)
             if ("gate", args.dataset, target, ratio, seed) not in done]
    with ProcessPoolExecutor(args.jobs) as pool:
        for record in pool.map(_task, tasks):
            append_result(args.results, record)
            records.append(record)
    measured = outcomes(records, args.rule)
    trained = {key for record in records if record["kind"].startswith("runs") and "margin" in record
               for key in [(record["dataset"], record["target"], record["ratio"], record["seed"])]}
    asked = set(cells(args.dataset, args.demo_ratio, fisv_ratios))  # only the cells asked for are trained
    disagreements = []
    for r in records:
        key = (r["dataset"], r["target"], r["ratio"], r["seed"])
        if (r["kind"] == "gate" and r["dataset"] == args.dataset and r["seed"] in seeds and key[1:3] in asked
                and r["margin_choice"] != rule_choice(r, args.rule) and key not in measured):
            # a margin run already made (for another rule) is reused: the same run
            rules = (args.rule,) if key in trained else ("margin", args.rule)
            kind = "runs" if rules == ("margin", "paired") else "runs-" + "-".join(rules)
            disagreements.append((kind, *key))
    print(f"{len(disagreements)} split(s) where the rules disagree: training them", flush=True)
    with ProcessPoolExecutor(args.jobs) as pool:
        for record in pool.map(_task, disagreements):
            append_result(args.results, record)
    print(report(load(args.results), args.rule))
    return 0


if __name__ == "__main__":
    sys.exit(main())
