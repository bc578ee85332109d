#!/usr/bin/env python
"""Would the graph's share of the test prediction (``semi.graph_test_share``) help? Validation only.

Reads the ``trs`` records of ``bench/probe_predictors.py`` that carry their last pseudo-label
refresh (code version 5: the training of today's ``trs`` without the graph's share, which changes
nothing in training), rebuilds each record's validation split, places every validation video on
the run's graph with :func:`train.methods.trs.graph_prediction` (the product's own function: its
``graph_neighbours`` most similar training videos, labels and last pseudo-labels averaged) and
scores ``(1 - share) * (student and reference, as the run blends them) + share * graph`` against
the run's own prediction, paired per seed. Runs whose gate dropped the graph keep their prediction
(the product gives the graph no share there). The test split is never read (``without_test``).

    python bench/graph_share_probe.py --seeds 10-19
    python bench/graph_share_probe.py --seeds 0-9 --shares 0.25,0.5,0.75
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fisv_common import DEFAULT_CACHE, DEFAULT_FISV_DIR, ensure_fisv_cache  # noqa: E402
from bench.probe_predictors import spearman  # noqa: E402
from bench.tune_fisv import _mean_se, build  # noqa: E402


def main(argv=None) -> int:
    import torch

    from train.config import config_from_json
    from train.data import prepare_data
    from train.methods.trs import blend_predictions, graph_prediction
    from train.sweep import parse_seeds
    from train.tune import without_test

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results",
                        default=str(Path(__file__).resolve().parent / "results" / "probe_predictors.jsonl"))
    parser.add_argument("--seeds", default="10-19")
    parser.add_argument("--shares", default="0.25,0.5,0.75")
    parser.add_argument("--variant", default="trs")
    args = parser.parse_args(argv)
    seeds, shares = set(parse_seeds(args.seeds)), [float(share) for share in args.shares.split(",")]
    cache = ensure_fisv_cache(DEFAULT_FISV_DIR, DEFAULT_CACHE)
    records = [json.loads(line) for line in open(args.results)]
    records = [record for record in records if record["dataset"] == "fis-v" and record["variant"] == args.variant
               and record["code_version"] == 5 and record["seed"] in seeds and "pseudo_labels" in record]
    cells: dict[tuple, dict[str, list[float]]] = {}
    for record in sorted(records, key=lambda record: (record["target"], record["ratio"], record["seed"])):
        config = config_from_json(build(args.variant, record["target"], record["ratio"], record["seed"], cache,
                                        DEFAULT_FISV_DIR), "probe")
        data = without_test(prepare_data(config))
        labelled, unlabelled, validation = (np.asarray(rows) for rows in (data.labelled, data.unlabelled,
                                                                         data.validation))
        labelled_scores = data.training_target(labelled)
        mean, std = float(labelled_scores.mean()), float(labelled_scores.std()) or 1.0  # as SupervisedMethod
        truth = np.asarray(record["truth"])
        if not np.allclose(data.scores[validation], truth):
            sys.exit(f"error: record {record['id']}: the rebuilt validation split differs from the run's")
        hidden = (data.training_target(unlabelled) - mean) / std
        if not np.allclose(hidden, record["pseudo_labels"]["truth"], atol=1e-6):
            sys.exit(f"error: record {record['id']}: the rebuilt unlabelled videos differ from the run's")
        # The run's prediction in standardised units (Fis-V scores are the targets themselves).
        predictors = {name: (np.asarray(values) - mean) / std for name, values in record["predictors"].items()}
        share = config.reference.test_share
        run = blend_predictions(torch.from_numpy(predictors["student"]), torch.from_numpy(predictors["reference"]),
                                share)
        nodes = np.concatenate([labelled, unlabelled])
        node_values = np.concatenate([((labelled_scores - mean) / std).astype(np.float32),
                                      np.asarray(record["pseudo_labels"]["pseudo"], dtype=np.float32)])
        graph = graph_prediction(data.tokens[validation, 0], data.tokens[nodes, 0], node_values,
                                 config.semi.graph_neighbours, config.semi.graph_features)
        chosen = record.get("gate_chosen") or ""  # e.g. "teacher+reference, graph 3"; "graph 0": dropped
        graph_kept = chosen.rpartition("graph ")[2] not in ("", "0")
        cell = cells.setdefault((record["target"], record["ratio"]), {})
        base = spearman(truth, run.numpy())
        cell.setdefault("run's prediction", []).append(base)
        cell.setdefault("graph kept by the gate", []).append(float(graph_kept))
        cell.setdefault("graph alone (Δ)", []).append(spearman(truth, graph.numpy()) - base)
        for graph_share in shares:
            blended = blend_predictions(run, graph, graph_share).numpy() if graph_kept else run.numpy()
            cell.setdefault(f"graph share {graph_share:g} (Δ)", []).append(spearman(truth, blended) - base)
    for (target, ratio), rows in sorted(cells.items()):
        print(f"fis-v {target} {ratio:g}: validation Spearman, paired Δ against the run's prediction "
              "(mean ± se, wins/n)")
        for name, values in rows.items():
            average, se = _mean_se(values)
            wins = f" ({sum(value > 0 for value in values)}/{len(values)})" if "Δ" in name else ""
            print(f"  {name:28s} n={len(values):2d} {average:+.3f} ± {se:.3f}{wins}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
