"""bench/tune_fisv.py, the validation-split table behind the README's tuning and ablation rows:
records of an older code version never stand in for today's code, and variants compare with the
baseline only over the seeds both ran."""

from __future__ import annotations

import json

import pytest

from bench import tune_fisv


def record(variant: str, seed: int, spearman: float, version: int | None = None, target: str = "TES",
           ratio: float = 0.1) -> dict:
    if version is None:
        version = tune_fisv.code_version(tune_fisv.parse_variant(variant)[0])
    return {"id": f"stored-{variant}-{seed}-{version}", "variant": variant, "target": target, "ratio": ratio,
            "seed": seed, "code_version": version,
            "validation_spearman": spearman, "seconds": 1.0}


def test_only_records_of_today_s_code_versions_are_reused(tmp_path):
    path = tmp_path / "tune.jsonl"
    current = tune_fisv.code_version("trs")
    stored = [record("trs", 0, 0.5), record("trs", 1, 0.4, version=current - 1), record("supervised", 0, 0.3),
              record("trs:semi.use_graph=false", 0, 0.2), record("a-variant-since-removed", 0, 0.9, version=1)]
    path.write_text("".join(json.dumps(item) + "\n" for item in stored))
    results = tune_fisv.current_results(path)
    assert sorted((item["variant"], item["seed"]) for item in results.values()) == [
        ("supervised", 0), ("trs", 0), ("trs:semi.use_graph=false", 0)]
    # looked up by the id a new run of the same variant, cell and seed would get
    assert tune_fisv.result_id("trs", "TES", 0.1, 0) in results
    assert tune_fisv.result_id("trs", "TES", 0.1, 1) not in results  # the older version reruns


def test_the_report_pairs_a_variant_with_the_baseline_over_common_seeds_only():
    runs = [record("supervised", 0, 0.30), record("supervised", 1, 0.40), record("trs", 0, 0.50),
            record("trs", 1, 0.45), record("trs", 2, 0.99)]  # seed 2 has no baseline: not paired
    results = {f"{item['variant']}-{item['seed']}": item for item in runs}
    table = tune_fisv.report(results, "supervised", None).splitlines()
    line = next(row for row in table if row.strip().startswith("trs"))
    fields = line.split()
    assert fields[1] == "3"  # three runs of trs
    assert fields[5] == "+0.125" and fields[7] == "0.075"  # (0.20 + 0.05) / 2, se 0.075 over two pairs
    mean, se, wins, count = tune_fisv._paired({0: 0.5, 1: 0.45, 2: 0.99}, {0: 0.3, 1: 0.4})
    assert (round(mean, 6), round(se, 6), wins, count) == (0.125, 0.075, 2, 2)


def test_an_unknown_variant_is_a_clear_error():
    with pytest.raises(SystemExit, match="unknown variant 'no-such-thing'"):
        tune_fisv.parse_variant("no-such-thing")
