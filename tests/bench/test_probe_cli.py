"""bench/probe_cli.py, the command line the validation-split probes share: every (cell, seed,
variant) runs once, a second call runs only what the results file lacks, and --report reads the
records (--report-seeds: of those seeds only)."""

from __future__ import annotations

import concurrent.futures
import json

import pytest

from bench import probe_cli


def fake_run(task: tuple) -> dict:
    dataset, target, ratio, seed, variant = task
    return {"dataset": dataset, "target": target, "ratio": ratio, "seed": seed, "variant": variant,
            "validation_spearman": seed / 10, "seconds": 0.0}


def fake_report(records: list[dict]) -> str:
    return "seeds " + ",".join(str(seed) for seed in sorted({record["seed"] for record in records}))


@pytest.fixture
def probe(monkeypatch, tmp_path):
    # Threads instead of processes: the fake run need not be importable in a fresh worker.
    monkeypatch.setattr(probe_cli, "ProcessPoolExecutor", concurrent.futures.ThreadPoolExecutor)
    monkeypatch.setattr(probe_cli, "ensure_fisv_cache", lambda *paths: None)
    results = tmp_path / "probe.jsonl"

    def call(*arguments: str, **options) -> int:
        return probe_cli.probe_main(["--results", str(results), *arguments], "a probe", ["a", "b"], results,
                                    fake_run, fake_report, **options)

    return call, results


def keys(results) -> list[tuple]:
    records = [json.loads(line) for line in results.read_text().splitlines()]
    return [(r["target"], r["ratio"], r["seed"], r["variant"]) for r in records]


def test_every_cell_seed_and_variant_runs_once_and_a_second_call_fills_only_the_gaps(probe, capsys):
    call, results = probe
    assert call("--dataset", "fis-v", "--seeds", "0-1", "--variants", "a") == 0
    first = keys(results)
    assert len(first) == 8 == len(set(first))  # 4 Fis-V cells x 2 seeds x 1 variant
    assert {(target, ratio) for target, ratio, _, _ in first} == {("TES", 0.1), ("TES", 0.25), ("PCS", 0.1),
                                                                 ("PCS", 0.25)}
    assert call("--dataset", "fis-v", "--seeds", "0-2", "--variants", "a,b") == 0
    every = keys(results)
    assert every[:8] == first  # appended, never rewritten
    assert len(every) == 24 == len(set(every))  # 4 cells x 3 seeds x 2 variants, nothing run twice
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(printed) == 24 and set(printed[0]) == {"target", "ratio", "seed", "variant", "validation_spearman",
                                                     "seconds"}


def test_the_report_reads_every_record_or_only_the_seeds_asked_for(probe, capsys):
    call, results = probe
    call("--dataset", "fis-v", "--seeds", "0-3", "--variants", "a")
    capsys.readouterr()
    assert call("--report") == 0
    assert capsys.readouterr().out.strip() == "seeds 0,1,2,3"
    assert call("--report", "--report-seeds", "1-2") == 0
    assert capsys.readouterr().out.strip() == "seeds 1,2"


def test_the_demo_needs_its_features(probe, monkeypatch, tmp_path):
    call, _ = probe
    monkeypatch.setattr(probe_cli, "DEMO_CACHE", tmp_path / "missing.h5")
    with pytest.raises(SystemExit) as stopped:
        call("--dataset", "demo", "--seeds", "0")
    assert "missing.h5" in str(stopped.value) and "make extract" in str(stopped.value)


def test_the_demo_cell_takes_the_probe_s_labelled_ratio(probe, monkeypatch, tmp_path):
    call, results = probe
    features = tmp_path / "demo.h5"
    features.touch()
    monkeypatch.setattr(probe_cli, "DEMO_CACHE", features)
    for ratio in (0.2, 0.25):
        assert call("--dataset", "demo", "--seeds", "0", "--variants", "a", demo_ratio=ratio) == 0
    assert keys(results) == [("final_score", 0.2, 0, "a"), ("final_score", 0.25, 0, "a")]
