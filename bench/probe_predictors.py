#!/usr/bin/env python
"""Which trained model should predict? Validation predictions of every predictor a run has.

For each (variant, cell, seed) on a validation split (the test rows are cut off before training,
as in ``bench/tune_fisv.py``), records the validation predictions of the student, the EMA teacher
(semi-supervised methods) and the reference network against the labelled exemplars (``trs``), so
that any test-time mixture of them can be scored afterwards without training again. ``trs`` runs
also record their last pseudo-label refresh per unlabelled video (every source's value and
confidence, the pseudo-label, its weight, the hidden true target), so that ``--confidence`` can
score candidate confidences against the pseudo-label error. One JSONL line per run; finished runs
are never rerun.

    python bench/probe_predictors.py --variants supervised,trs --seeds 0-9            # Fis-V
    python bench/probe_predictors.py --dataset demo --variants supervised,trs --seeds 0-9
    python bench/probe_predictors.py --report --seeds 10-19 --baselines supervised,trs-no-reference
    python bench/probe_predictors.py --report --confidence --seeds 10-19     # do confidences rank error?
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fisv_common import DEFAULT_CACHE, DEFAULT_FISV_DIR, REPO_ROOT, append_result, ensure_fisv_cache, load_results  # noqa: E402
from bench.tune_fisv import _mean_se, build, code_version, parse_variant, result_id  # noqa: E402

DEMO_CACHE = REPO_ROOT / "features" / "synth-dive.h5"
DEMO_ROOT = REPO_ROOT / "data" / "synth-dive"


def run(config_dict: dict) -> dict:
    """Train in this process (one torch thread) and return every predictor's validation predictions."""
    import torch

    from train.config import config_from_json
    from train.data import prepare_data
    from train.fitting import fit
    from train.methods.pseudo_labels import pools_for, score_against_exemplars
    from train.methods.supervised import predict_in_batches
    from train.tune import without_test

    torch.set_num_threads(1)
    config = config_from_json(config_dict, "probe")
    fitted = fit(config, without_test(prepare_data(config)), progress=False)
    method, data = fitted.method, fitted.data
    rows = np.asarray(data.validation)
    index = torch.from_numpy(rows).long()

    def in_scores(standardised: torch.Tensor) -> list[float]:
        target = standardised.double().numpy() * method.target_std + method.target_mean
        return data.to_score(rows, target).tolist()

    predictors = {"student": in_scores(predict_in_batches(method.student, index, method.views.canonical)[0])}
    if getattr(method, "teacher", None) is not None:
        predictors["teacher"] = in_scores(predict_in_batches(method.teacher, index, method.views.canonical)[0])
    if getattr(method, "reference", None) is not None:
        mean, _, _ = score_against_exemplars(method.reference, method.views.canonical(index),
                                             method.views.canonical(method.labelled), method.labelled_targets,
                                             pools_for(data, method.labelled, index))
        predictors["reference"] = in_scores(mean)
    # The run's own test-time prediction (student, reference and graph shares as configured).
    predictors["final"] = method.predict_scores(rows).tolist()
    gate = (fitted.diagnostics or {}).get("gate") or {}
    record = {"truth": data.scores[rows].tolist(), "predictors": predictors, "seconds": fitted.seconds,
              "validation_spearman": (fitted.validation or {}).get("spearman"), "gate_chosen": gate.get("chosen")}
    if getattr(method, "last_refresh", None):
        record["pseudo_labels"] = pseudo_label_record(method, data)
        record["pseudo_labels"]["students_disagreement"] = students_disagreement(config, data, method.last_refresh["rows"])
    return record


def students_disagreement(config, data, rows: np.ndarray, students: int = 2) -> list[float]:
    """Per video of ``rows``: the spread (standard deviation, standardised units) of the
    predictions of ``students`` `supervised` heads trained on the run's labelled videos with other
    seeds (initialisation and views): an ensemble's disagreement, the nearest we have to UCVME's
    co-trained pair (which also couples the two on the unlabelled videos)."""
    import dataclasses

    import torch

    from train.fitting import fit
    from train.methods.supervised import predict_in_batches

    index = torch.from_numpy(np.asarray(rows)).long()
    predictions = []
    for number in range(1, students + 1):
        student_config = dataclasses.replace(config, method="supervised", seed=config.seed + 1000 * number)
        student = fit(student_config, data, progress=False).method  # the same split: it is in `data`
        predictions.append(predict_in_batches(student.student, index, student.views.canonical)[0].double())
    return torch.stack(predictions).std(dim=0).tolist()


def pseudo_label_record(method, data) -> dict[str, list[float]]:
    """The last refresh of a ``trs`` run, per unlabelled video (standardised target units): every
    source's value and confidence, the fused-and-refined pseudo-label, the relative confidence that
    weighs it, the true target (never used in training) and the mean cosine distance of the video's
    pooled features to its 5 nearest labelled videos (a label-free confidence candidate)."""
    refresh = method.last_refresh
    rows = refresh["rows"]
    truth = (data.training_target(rows) - method.target_mean) / method.target_std
    pooled = data.tokens[:, 0].mean(axis=1).astype(np.float64)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True).clip(1e-12)
    similarity = pooled[rows] @ pooled[method.labelled.numpy()].T
    nearest = min(5, similarity.shape[1])
    distance = 1 - np.sort(similarity, axis=1)[:, -nearest:].mean(axis=1)
    arrays = {name: np.asarray(value, dtype=np.float64) for name, value in refresh.items() if name != "rows"}
    return {"truth": truth.tolist(), "labelled_distance": distance.tolist(),
            **{name: value.tolist() for name, value in arrays.items()}}


def _task(record_id: str, config: dict) -> tuple[str, dict]:
    return record_id, run(config)


def spearman(truth, predicted) -> float:
    from aqa.metrics import spearman as rho
    return rho(np.asarray(truth), np.asarray(predicted))


def mixtures(record: dict) -> dict[str, float]:
    """Validation Spearman of each predictor and of student/teacher/reference mixtures."""
    predictors = {name: np.asarray(values) for name, values in record["predictors"].items()}
    truth = record["truth"]
    result = {name: spearman(truth, values) for name, values in predictors.items()}
    if "reference" in predictors:
        for share in (0.25, 0.5, 0.75):
            mixed = (1 - share) * predictors["student"] + share * predictors["reference"]
            result[f"student+reference {share:g}"] = spearman(truth, mixed)
    if "teacher" in predictors and "reference" in predictors:
        result["thirds"] = spearman(truth, (predictors["student"] + predictors["teacher"] + predictors["reference"]) / 3)
    return result


def label(record: dict) -> str:
    """The variant's name, with ``@vN`` when it was run at another code version than today's
    (the same name then meant another configuration: e.g. ``trs@v4``, the default before the
    reference learned and shared the prediction)."""
    version = code_version(parse_variant(record["variant"])[0])
    return record["variant"] if record["code_version"] == version else f"{record['variant']}@v{record['code_version']}"


def report(results: dict, baselines: list[str], seeds: set[int] | None = None) -> str:
    """Per cell, each variant's predictors (and mixtures): validation Spearman, and the paired
    difference from each of ``baselines`` (``VARIANT`` for its student, or ``VARIANT:PREDICTOR``)
    on the seeds both have (mean ± se, wins/n); only ``seeds`` when given."""
    cells: dict[tuple, dict[str, dict[int, dict]]] = {}
    for record in results.values():
        if seeds is None or record["seed"] in seeds:
            key = (record["dataset"], record["target"], record["ratio"])
            cells.setdefault(key, {}).setdefault(label(record), {})[record["seed"]] = mixtures(record)
    lines = []
    for (dataset, target, ratio), by_variant in sorted(cells.items()):
        lines.append(f"\n{dataset} {target} {ratio:g}: validation Spearman (mean ± se), paired differences "
                     "(mean ± se, wins/n)")
        for variant, runs in sorted(by_variant.items()):
            for name in dict.fromkeys(name for scores in runs.values() for name in scores):
                values = {seed: scores[name] for seed, scores in runs.items() if scores.get(name) is not None}
                mean, se = _mean_se(list(values.values()))
                line = f"  {variant[:32]:32s} {name:22s} n={len(values):2d} {mean:.3f} ± {se:.3f}"
                for baseline in baselines:
                    base_variant, _, base_name = baseline.partition(":")
                    if (base_variant, base_name or "student") == (variant, name):
                        continue
                    base = {seed: scores.get(base_name or "student")
                            for seed, scores in by_variant.get(base_variant, {}).items()}
                    diffs = [values[seed] - base[seed] for seed in values if base.get(seed) is not None]
                    if diffs:
                        dmean, dse = _mean_se(diffs)
                        line += f" | vs {baseline} {dmean:+.3f} ± {dse:.3f} ({sum(d > 0 for d in diffs)}/{len(diffs)})"
                lines.append(line)
    return "\n".join(lines)


def _fifths_ratio(confidence: np.ndarray, error: np.ndarray) -> float:
    """Mean error of the most confident fifth over that of the least confident fifth."""
    order = np.argsort(-confidence, kind="stable")
    parts = np.array_split(order, 5)
    return float(error[parts[0]].mean() / max(error[parts[-1]].mean(), 1e-12))


def _oracle_error_fit(signals: np.ndarray, error: np.ndarray, folds: int = 5, alpha: float = 1.0) -> np.ndarray:
    """Minus the out-of-fold prediction of ``error`` by a ridge on ``signals`` fitted to the true
    errors of the other folds: a confidence no run could have (it reads the unlabelled videos'
    labels), the ceiling of what these signals can say about the error."""
    order = np.random.default_rng(0).permutation(len(error))
    predicted = np.zeros(len(error))
    for held_out in np.array_split(order, folds):
        train = np.setdiff1d(order, held_out)
        mean, std = signals[train].mean(0), signals[train].std(0) + 1e-12
        design = np.c_[np.ones(len(train)), (signals[train] - mean) / std]
        penalty = alpha * np.eye(design.shape[1])
        penalty[0, 0] = 0.0
        weights = np.linalg.solve(design.T @ design + penalty, design.T @ error[train])
        predicted[held_out] = np.c_[np.ones(len(held_out)), (signals[held_out] - mean) / std] @ weights
    return -predicted


def confidence_candidates(pseudo_labels: dict) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The pseudo-labels' absolute errors and every candidate confidence of a recorded refresh."""
    arrays = {name: np.asarray(values) for name, values in pseudo_labels.items()}
    error = np.abs(arrays["pseudo"] - arrays["truth"])
    candidates = {"the run's (loss weight)": arrays["relative_confidence"]}
    signals = [arrays["labelled_distance"], arrays["pseudo"], arrays["pseudo"] ** 2]
    for source in ("teacher", "reference"):
        if f"{source}_confidence" in arrays:
            candidates[f"{source} alone"] = arrays[f"{source}_confidence"]
            signals.append(np.log(arrays[f"{source}_confidence"]))
    if "teacher_value" in arrays and "reference_value" in arrays:
        disagreement = np.abs(arrays["teacher_value"] - arrays["reference_value"])
        candidates["teacher-reference agreement"] = -disagreement
        signals.append(disagreement)
    candidates["near labelled videos"] = -arrays["labelled_distance"]
    if "students_disagreement" in arrays:
        candidates["two more students' agreement"] = -arrays["students_disagreement"]
        signals.append(arrays["students_disagreement"])
    candidates["oracle fit of these signals"] = _oracle_error_fit(np.stack(signals, axis=1), error)
    candidates["oracle: |true target| (unknowable)"] = -np.abs(arrays["truth"])
    return error, candidates


def confidence_report(results: dict, seeds: set[int] | None = None) -> str:
    """Per cell and variant, how well each candidate confidence ranks pseudo-label error at the last
    refresh: Spearman(confidence, |error|) (issue 11's target: <= -0.3 at 25 % labels) and the most
    confident fifth's mean error over the least confident fifth's (target: <= 0.70); mean ± se over seeds."""
    cells: dict[tuple, dict[str, list[tuple[float, float]]]] = {}
    for record in results.values():
        if "pseudo_labels" not in record or (seeds is not None and record["seed"] not in seeds):
            continue
        error, candidates = confidence_candidates(record["pseudo_labels"])
        cell = cells.setdefault((record["dataset"], record["target"], record["ratio"], label(record)), {})
        for name, confidence in candidates.items():
            if np.ptp(confidence) == 0:  # constant (e.g. semi.use_confidence=false): ranks nothing
                continue
            cell.setdefault(name, []).append((spearman(confidence, error), _fifths_ratio(confidence, error)))
    lines = ["confidence vs |pseudo-label error| at the last refresh: Spearman (mean ± se), "
             "error of the most / least confident fifth (mean ± se)"]
    for (dataset, target, ratio, variant), by_name in sorted(cells.items()):
        lines.append(f"\n{dataset} {target} {ratio:g} {variant}")
        for name, pairs in by_name.items():
            rho_mean, rho_se = _mean_se([rho for rho, _ in pairs])
            ratio_mean, ratio_se = _mean_se([fifths for _, fifths in pairs])
            lines.append(f"  {name:36s} n={len(pairs):2d} rho {rho_mean:+.3f} ± {rho_se:.3f}  "
                         f"top/bottom fifth {ratio_mean:.2f} ± {ratio_se:.2f}")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["fis-v", "demo"], default="fis-v")
    parser.add_argument("--variants", default="supervised,trs")
    parser.add_argument("--targets", default=None, help="Fis-V: TES,PCS (default); demo: final_score")
    parser.add_argument("--ratios", default=None, help="Fis-V: 0.1,0.25 (default); demo: 0.2")
    parser.add_argument("--seeds", default="0-9", help="Seeds to run (and to report; --report --seeds all: every seed).")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "bench" / "results" / "probe_predictors.jsonl")
    parser.add_argument("--baselines", default="supervised",
                        help="Comma-separated VARIANT or VARIANT:PREDICTOR to pair every row against.")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--confidence", action="store_true",
                        help="Report how well candidate confidences rank the trs runs' pseudo-label errors.")
    args = parser.parse_args()

    from train.sweep import parse_list, parse_seeds

    results = load_results(args.results)
    if not args.report:
        if args.dataset == "fis-v":
            cache, root, dataset = ensure_fisv_cache(DEFAULT_FISV_DIR, DEFAULT_CACHE), DEFAULT_FISV_DIR, "fis-v"
            targets, ratios = args.targets or "TES,PCS", args.ratios or "0.1,0.25"
        else:
            cache, root, dataset = DEMO_CACHE, DEMO_ROOT, "mtl-aqa"
            targets, ratios = args.targets or "final_score", args.ratios or "0.2"
            if not cache.is_file():
                sys.exit(f"error: {cache}: no demo features (run make extract first)")
        tasks = []
        for target in parse_list(targets, "targets"):
            for ratio in parse_list(ratios, "ratios", float):
                for variant in parse_list(args.variants, "variants"):
                    for seed in parse_seeds(args.seeds):
                        record_id = args.dataset + ":" + result_id(variant, target, ratio, seed)
                        if record_id not in results:
                            config = build(variant, target, ratio, seed, cache, root, dataset=dataset)
                            tasks.append((record_id, config, variant, target, ratio, seed))
        print(f"{len(tasks)} runs to do", flush=True)
        from joblib import Parallel, delayed

        meta = {task[0]: task for task in tasks}
        runner = Parallel(n_jobs=args.jobs, return_as="generator_unordered")
        for record_id, result in runner(delayed(_task)(task[0], task[1]) for task in tasks):
            _, _, variant, target, ratio, seed = meta[record_id]
            record = {"id": record_id, "dataset": args.dataset, "variant": variant, "target": target,
                      "ratio": ratio, "seed": seed, "code_version": code_version(parse_variant(variant)[0]), **result}
            append_result(args.results, record)
            results[record_id] = record
            print(f"{variant:40s} {target} {ratio:g} s{seed}: "
                  + ", ".join(f"{name} {value:.3f}" for name, value in mixtures(record).items() if value is not None)
                  + f" ({record['seconds']:.0f} s)", flush=True)
    seeds = None if args.report and args.seeds == "all" else set(parse_seeds(args.seeds))
    if args.confidence:
        print(confidence_report(results, seeds))
    else:
        print(report(results, parse_list(args.baselines, "baselines"), seeds))


if __name__ == "__main__":
    main()
