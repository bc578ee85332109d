#!/usr/bin/env python
"""Can a run decide the graph's share of its test prediction from its labelled videos? Validation only.

``semi.graph_test_share`` (0.5) was chosen on Fis-V validation splits; on the test splits its
effect depends on the split (README, "What the graph's share did on the test splits"). This probe
asks whether the gate's cross-fitting could see that effect in advance. Per run (Fis-V validation
split, ``bench/tune_fisv.py``'s protocol; the test split is never read):

* **realised**: the trained ``trs`` run's validation Spearman with the graph taking each share
  (0, 0.25, 0.5, 0.75) of the prediction (the product's own ``graph_prediction`` and
  ``blend_predictions``), when its gate kept the graph;
* **out of fold**: the gate's own fold jobs (same folds, seeds and fold models as the run's gate,
  :func:`train.methods.gate.plan_gate`) redone with one more output: each held-out labelled video
  placed on the fold's graph (nodes: the training folds at their labels, the unlabelled videos at
  the fold's graph-refined pseudo-labels) and its neighbours' mean blended at each share with the
  fold models' prediction (student and reference against the training folds' exemplars, as the
  run blends them at test time). Pooled Spearman per share, averaged over the cross-fittings.

Records go to a JSONL file; ``--report`` tells how well the out-of-fold gain of each share
predicts the realised one, and what rules choosing the share from it would have given.

    python bench/share_gate_probe.py --seeds 10-19 --jobs 2
    python bench/share_gate_probe.py --report
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fisv_common import DEFAULT_CACHE, DEFAULT_FISV_DIR, append_result, ensure_fisv_cache  # noqa: E402
from bench.tune_fisv import build  # noqa: E402

SHARES = (0.0, 0.25, 0.5, 0.75)  # the graph's share of the prediction
REFERENCE_SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)  # the reference network's share before the graph's
DEFAULT = "r0.5/g0.5"


def grid(student, reference, graph) -> dict[str, np.ndarray]:
    """Every (reference share, graph share) blend of the three predictions, as the run blends them."""
    from train.methods.trs import blend_predictions

    blends = {}
    for reference_share in REFERENCE_SHARES:
        base = blend_predictions(student, reference, reference_share)
        for share in SHARES:
            blends[f"r{reference_share:g}/g{share:g}"] = blend_predictions(base, graph, share).numpy()
    return blends
RESULTS = Path(__file__).resolve().parent / "results" / "share_gate_probe.jsonl"


def spearman(truth, predicted) -> float:
    from aqa.metrics import spearman as metric
    value = metric(np.asarray(truth, dtype=float), np.asarray(predicted, dtype=float))
    return float("nan") if value is None else float(value)


def realised(method, data) -> dict[str, float]:
    """Validation Spearman of the trained run at each graph share (the run's blend otherwise)."""
    import torch

    from train.methods.pseudo_labels import pools_for, score_against_exemplars
    from train.methods.supervised import predict_in_batches
    from train.methods.trs import graph_prediction

    rows = torch.from_numpy(np.asarray(data.validation)).long()
    canonical = method.views.canonical
    value, _ = predict_in_batches(method.student, rows, canonical)
    reference_value, _, _ = score_against_exemplars(method.reference, canonical(rows), canonical(method.labelled),
                                                    method.labelled_targets, pools_for(data, method.labelled, rows))
    node_tokens, node_values = method._graph_nodes()
    graph = graph_prediction(canonical(rows).numpy(), node_tokens.numpy(), node_values.numpy(),
                             method.config.semi.graph_neighbours, method.config.semi.graph_features)
    truth = data.training_target(np.asarray(data.validation))
    result = {name: spearman(truth, blend) for name, blend in grid(value, reference_value, graph).items()}
    # The reference against every training video as an exemplar: labelled at their labels,
    # unlabelled at their last pseudo-labels (one pool: no difficulty on Fis-V).
    every = torch.cat([method.labelled, method.unlabelled])
    targets = torch.cat([method.labelled_targets, method.pseudo[method.unlabelled]])
    wide_value, _, _ = score_against_exemplars(method.reference, canonical(rows), canonical(every), targets,
                                               pools_for(data, every, rows))
    for name, blend in grid(value, wide_value, graph).items():
        result["wide " + name] = spearman(truth, blend)
    return result


def out_of_fold(method, data) -> dict:
    """Per share, the pooled out-of-fold Spearman of the blend (mean over cross-fittings), and the
    per-fold values."""
    import torch

    from train.graph import LABELLED_ANCHOR, refine_on_graph
    from train.methods.gate import _train_fold_reference, _train_fold_student, default_option, plan_gate
    from train.methods.pseudo_labels import Context, build_sources, pools_for, score_against_exemplars
    from train.methods.supervised import predict_in_batches, stream_seed
    from train.methods.trs import graph_prediction
    from train.views import ViewMaker

    config = method.config
    plan = plan_gate(method)
    option = default_option(config)
    truth = method.labelled_targets.double().numpy()
    count = len(truth)
    names = [f"r{r:g}/g{g:g}" for r in REFERENCE_SHARES for g in SHARES]
    pooled = [{name: np.zeros(count) for name in names} for _ in range(config.semi.gate_repeats)]
    per_fold: dict[str, list[float]] = {name: [] for name in names}
    laplacian = method.labelling.graph_laplacian(method.data)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            for job in plan.jobs:
                train = torch.from_numpy(job.train).long()
                student = _train_fold_student(method, train, plan.student_epochs, job.seed)
                reference = _train_fold_reference(method, train, plan.reference_epochs, stream_seed(job.seed, 2))
                generator = torch.Generator().manual_seed(stream_seed(job.seed, 3))
                held_rows = method.labelled[torch.from_numpy(job.held)]
                queries = torch.cat([held_rows, method.unlabelled])
                views = ViewMaker(method.tokens, config.views, generator)
                context = Context(data=method.data, unlabelled=queries, labelled=method.labelled[train],
                                  labelled_targets=method.labelled_targets[train], views=views, generator=generator,
                                  teacher=student, reference=reference)
                sources = build_sources(config, option.sources)
                estimates = {source.name: source.estimate(context) for source in sources}
                fused, confidence = method.labelling.fuse([estimates[name] for name in option.sources])
                query_nodes = np.concatenate([job.held, count + np.arange(len(method.unlabelled))])
                node_values = np.zeros(len(laplacian))
                node_confidence = np.full(len(laplacian), LABELLED_ANCHOR)
                node_values[job.train] = truth[job.train]
                node_values[query_nodes] = fused.numpy()
                node_confidence[query_nodes] = (confidence / confidence.mean()).numpy()
                refined = refine_on_graph(laplacian, node_values, node_confidence, option.graph_strength)
                # The fold models' test-time prediction of the held-out videos (student and
                # reference against the training folds' exemplars, blended as the run blends).
                canonical = views.canonical
                value, _ = predict_in_batches(student, held_rows, canonical)
                train_rows = method.labelled[train]
                reference_value, _, _ = score_against_exemplars(
                    reference, canonical(held_rows), canonical(train_rows), method.labelled_targets[train],
                    pools_for(method.data, train_rows, held_rows))
                # The held-out videos placed on the fold's graph: training folds at their labels,
                # unlabelled videos at the refined pseudo-labels.
                node_rows = torch.cat([train_rows, method.unlabelled])
                graph_values = np.concatenate([truth[job.train], refined[count:]])
                graph = graph_prediction(canonical(held_rows).numpy(), canonical(node_rows).numpy(), graph_values,
                                         config.semi.graph_neighbours, config.semi.graph_features)
                for name, blended in grid(value, reference_value, graph).items():
                    pooled[job.repeat][name][job.held] = blended
                    per_fold[name].append(spearman(truth[job.held], blended))
    finally:
        torch.set_num_threads(threads)
    estimates = {name: float(np.mean([spearman(truth, repeat[name]) for repeat in pooled])) for name in per_fold}
    return {"estimates": estimates, "fold_estimates": per_fold}


def confidence_probe(method, data) -> dict[str, list[float]]:
    """Candidate confidences of the last refresh's pseudo-labels (trained on by the student):
    Spearman with |error| and the most / least confident fifth's error ratio. Pseudo-labels are
    shrunk towards the mean, so their distance from the labelled mean is one more candidate."""
    refresh = method.last_refresh
    rows = refresh["rows"]
    truth = (data.training_target(rows) - method.target_mean) / method.target_std
    pseudo = np.asarray(refresh["pseudo"])
    error = np.abs(pseudo - truth)
    candidates = {"run's relative confidence": np.asarray(refresh["relative_confidence"]),
                  "-|pseudo-label - labelled mean|": -np.abs(pseudo),
                  "-|teacher - labelled mean|": -np.abs(np.asarray(refresh["teacher_value"])),
                  "oracle -|truth - labelled mean|": -np.abs(truth)}
    result = {}
    for name, confidence in candidates.items():
        order = np.argsort(-confidence, kind="stable")
        fifths = np.array_split(order, 5)
        result[name] = [spearman(confidence, error), float(error[fifths[0]].mean() / error[fifths[-1]].mean())]
    return result


def run_one(target: str, ratio: float, seed: int) -> dict:
    import torch

    from train.config import config_from_json
    from train.data import prepare_data
    from train.fitting import fit
    from train.tune import without_test

    torch.set_num_threads(1)
    cache = ensure_fisv_cache(DEFAULT_FISV_DIR, DEFAULT_CACHE)
    config = config_from_json(build("trs", target, ratio, seed, cache, DEFAULT_FISV_DIR), "probe")
    data = without_test(prepare_data(config))
    fitted = fit(config, data, progress=False)
    method = fitted.method
    record = {"target": target, "ratio": ratio, "seed": seed, "gate": method.gate["chosen"],
              "gate_default": method.gate["default"], "margin": method.gate["margin"],
              "validation_spearman": (fitted.validation or {}).get("spearman"),
              "realised": realised(method, data), "out_of_fold": out_of_fold(method, data),
              "confidence": confidence_probe(method, data)}
    return record


def _task(arguments):
    return run_one(*arguments)


def _estimates(record: dict) -> dict[str, float]:
    return record["out_of_fold"]["estimates"]


def _argmax(estimates: dict[str, float], names) -> str:
    return max(names, key=lambda name: (estimates[name], name == DEFAULT))


def _margin_rule(record: dict) -> str:
    estimates = _estimates(record)
    best = _argmax(estimates, estimates)
    return best if estimates[best] - estimates[DEFAULT] > record["margin"] else DEFAULT


RULES = {
    "oof argmax, grid": lambda r: _argmax(_estimates(r), _estimates(r)),
    "oof argmax, graph share": lambda r: _argmax(_estimates(r), [f"r0.5/g{g:g}" for g in SHARES]),
    "oof argmax, reference share": lambda r: _argmax(_estimates(r), [f"r{x:g}/g0.5" for x in REFERENCE_SHARES]),
    "default unless beaten by 1/√n": _margin_rule,
    "oracle (best realised, grid)": lambda r: _argmax(r["realised"], _estimates(r)),
}


def report(records: list[dict]) -> str:
    """Per cell (runs whose gate kept the graph): realised and out-of-fold gains of a share
    against none, their correlation over runs, and each rule's realised Spearman minus the
    default's (reference 0.5, graph 0.5), mean ± se over runs."""
    header = ["cell", "runs", "realised g0.5 − g0", "oof", "corr", "realised r0.5 − r0", "oof", "corr",
              "wide exemplars"] + list(RULES)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    cells: dict[tuple, list[dict]] = {}
    for record in records:
        cells.setdefault((record["target"], record["ratio"]), []).append(record)
    every = []
    for (target, ratio), group in sorted(cells.items()):
        group = [record for record in group if record["gate"] == record["gate_default"]]  # graph kept
        if len(group) < 2:
            continue
        every += group
        lines.append(_report_line(f"{target} {ratio:g}", group))
    if every:
        lines.append(_report_line("all", every))
    return "\n".join(lines)


def _gain(group, source, better, worse):
    return np.array([(r["realised"] if source == "realised" else _estimates(r))[better]
                     - (r["realised"] if source == "realised" else _estimates(r))[worse] for r in group])


def _report_line(name: str, group: list[dict]) -> str:
    cells = [name, str(len(group))]
    for better, worse in (("r0.5/g0.5", "r0.5/g0"), ("r0.5/g0.5", "r0/g0.5")):
        realised_gain, oof_gain = _gain(group, "realised", better, worse), _gain(group, "oof", better, worse)
        corr = np.corrcoef(oof_gain, realised_gain)[0, 1] if len(group) > 2 else float("nan")
        cells += [_mean_se(realised_gain), _mean_se(oof_gain), f"{corr:+.2f}"]
    cells.append(_mean_se(np.array([r["realised"]["wide " + DEFAULT] - r["realised"][DEFAULT] for r in group])))
    for choose in RULES.values():
        cells.append(_mean_se(np.array([r["realised"][choose(r)] - r["realised"][DEFAULT] for r in group])))
    return "| " + " | ".join(cells) + " |"


def confidence_report(records: list[dict]) -> str:
    """Each candidate confidence: Spearman with |pseudo-label error| and the most / least
    confident fifth's error ratio, mean over runs per cell."""
    names = list(records[0]["confidence"]) if records else []
    lines = ["| cell | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    cells: dict[tuple, list[dict]] = {}
    for record in records:
        cells.setdefault((record["target"], record["ratio"]), []).append(record)
    for (target, ratio), group in sorted(cells.items()):
        values = [f"{np.mean([r['confidence'][n][0] for r in group]):+.3f} "
                  f"({np.mean([r['confidence'][n][1] for r in group]):.2f})" for n in names]
        lines.append(f"| {target} {ratio:g} ({len(group)}) | " + " | ".join(values) + " |")
    return "\n".join(lines)


def _mean_se(values: np.ndarray) -> str:
    return f"{values.mean():+.3f} ± {values.std(ddof=1) / np.sqrt(len(values)):.3f}"


def main(argv=None) -> int:
    from train.sweep import parse_seeds

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default="TES,PCS")
    parser.add_argument("--ratios", default="0.1,0.25")
    parser.add_argument("--seeds", default="10-19")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args(argv)
    done = []
    if args.results.is_file():
        done = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    if args.report:
        print(report(done))
        print()
        print(confidence_report(done))
        return 0
    finished = {(r["target"], r["ratio"], r["seed"]) for r in done}
    tasks = [(target, float(ratio), seed) for seed in parse_seeds(args.seeds) for target in args.targets.split(",")
             for ratio in args.ratios.split(",") if (target, float(ratio), seed) not in finished]
    ensure_fisv_cache(DEFAULT_FISV_DIR, DEFAULT_CACHE)
    with ProcessPoolExecutor(args.jobs) as pool:
        for record in pool.map(_task, tasks):
            append_result(args.results, record)
            print(record["target"], record["ratio"], record["seed"], record["gate"],
                  round(record["realised"][DEFAULT], 3), round(record["out_of_fold"]["estimates"][DEFAULT], 3),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
