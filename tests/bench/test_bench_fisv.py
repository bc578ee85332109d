"""bench/bench_fisv.py's tables: the numbers the README's Fis-V section quotes (paired Δ, wins, label
efficiency, what the gate did) from run folders, and the seeded resplit manifests."""

from __future__ import annotations

import csv
import json

import pytest

from bench import bench_fisv
from train.methods.gate import gate_margin


def record(spearman: float, gate: dict | None = None) -> dict:
    return {"spearman": spearman, "wall_seconds": 1.0, **({"diagnostics": {"gate": gate}} if gate else {})}


def cells(table_lines: list[str]) -> dict[tuple[str, str], list[str]]:
    rows = {}
    for line in table_lines:
        parts = [part.strip() for part in line.strip("|").split("|")]
        if len(parts) > 2 and parts[0] in bench_fisv.TARGETS:
            rows[(parts[0], parts[1])] = parts[2:]
    return rows


def test_the_efficiency_table_pairs_seeds_and_measures_the_share_of_the_gap_closed():
    table, full = {}, {}
    for seed, (trs, supervised) in enumerate([(0.5, 0.4), (0.6, 0.4), (0.7, 0.6)]):
        table[("TES", 0.1, "trs", seed)] = record(trs)
        table[("TES", 0.1, "supervised", seed)] = record(supervised)
    table[("TES", 0.1, "trs", 3)] = record(0.9)  # no supervised partner: left out of every paired column
    for seed in (0, 1):
        full[("TES", 1.0, "supervised", seed)] = record(0.8)
    row = cells(bench_fisv.efficiency_table("t", table, full, [0, 1, 2, 3], [0, 1]))[("TES", "10%")]
    trs, supervised, delta, wins, ceiling, efficiency = row
    assert trs == "0.600 ± 0.100" and supervised == "0.467 ± 0.115"
    assert delta == "+0.133 ± 0.058" and wins == "3/3" and ceiling == "0.800 ± 0.000"
    assert efficiency == "+40 %"  # 0.1333 / (0.8 - 0.4667)
    # Without a ceiling, or when supervised already reaches it, there is no efficiency.
    assert cells(bench_fisv.efficiency_table("t", table, {}, [0, 1, 2], [0, 1]))[("TES", "10%")][-1] == "—"
    full = {("TES", 1.0, "supervised", 0): record(0.3)}
    assert cells(bench_fisv.efficiency_table("t", table, full, [0, 1, 2], [0]))[("TES", "10%")][-1] == "—"


def test_collect_reads_the_sweep_layout_with_diagnostics(tmp_path):
    folder = tmp_path / "fis-v" / "PCS" / "trs" / "r0.25" / "s2"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"spearman": 0.61, "wall_seconds": 40.0}))
    (folder / "diagnostics.json").write_text(json.dumps({"gate": {"chosen": "x"}}))
    (tmp_path / "fis-v" / "PCS" / "supervised" / "r0.25" / "s2").mkdir(parents=True)  # unfinished: no metrics
    table = bench_fisv.collect(tmp_path, [0, 1, 2])
    assert list(table) == [("PCS", 0.25, "trs", 2)]
    assert table[("PCS", 0.25, "trs", 2)]["diagnostics"]["gate"]["chosen"] == "x"


def gate(estimates: dict, chosen: str, n: int = 30) -> dict:
    options = {name: {"sources": ["teacher"], "graph_strength": 0.0 if name.endswith("graph 0") else 3.0}
               for name in estimates}
    return {"n_labelled": n, "margin": gate_margin(n, "fisher"), "default": "teacher, graph 3", "chosen": chosen,
            "estimates": estimates, "options": options, "rule": "margin", "scale": "fisher"}


def test_the_gate_summary_groups_runs_by_what_the_gate_saw_and_pairs_them_with_supervised():
    graph, plain = "teacher, graph 3", "teacher, graph 0"
    table = {
        ("TES", 0.1, "trs", 0): record(0.50, gate({graph: 0.30, plain: 0.35}, graph)),  # no-graph ahead, kept
        ("TES", 0.1, "trs", 1): record(0.40, gate({graph: 0.40, plain: 0.30}, graph)),  # graph best
        ("TES", 0.1, "trs", 2): record(0.20, gate({graph: 0.10, plain: 0.60}, plain)),  # switched
        ("TES", 0.1, "trs", 3): record(0.90, gate({graph: 0.1, plain: 0.2}, graph)),  # no partner: left out
    }
    for seed, value in enumerate([0.30, 0.45, 0.25]):
        table[("TES", 0.1, "supervised", seed)] = record(value)
    lines = bench_fisv.gate_lines([table, {}])
    assert "Verdicts: kept 1, kept, undecided 1, switched 1." in lines
    rows = {line.split("|")[1].strip(): [part.strip() for part in line.split("|")[2:-1]] for line in lines
            if line.startswith("| ") and not line.startswith("| gate")}
    assert rows["switched"] == ["1", "-0.050", "0/1"]
    assert rows["kept, a no-graph option ahead out of fold"] == ["1", "+0.200", "1/1"]
    assert rows["kept, otherwise"] == ["1", "-0.050", "0/1"]
    assert bench_fisv.gate_lines([{("TES", 0.1, "supervised", 0): record(0.3)}]) == []  # no gate, no section


def write_labels(folder, keys):
    folder.mkdir()
    lines = [f"{key} {10 + key} {20 + key} 0" for key in keys]
    (folder / "train.txt").write_text("\n".join(lines[:6]) + "\n")
    (folder / "test.txt").write_text("\n".join(lines[6:]) + "\n")


def test_resplit_manifests_are_seeded_and_keep_every_program(tmp_path):
    fisv = tmp_path / "fisv"
    write_labels(fisv, [9, 3, 7, 1, 10, 2, 8, 4, 6, 5])
    first = bench_fisv.write_resplit_manifest(fisv, tmp_path / "a" / "manifest.csv", 1, train_count=6)
    again = bench_fisv.write_resplit_manifest(fisv, tmp_path / "b" / "manifest.csv", 1, train_count=6)
    other = bench_fisv.write_resplit_manifest(fisv, tmp_path / "c" / "manifest.csv", 2, train_count=6)
    assert first.read_bytes() == again.read_bytes() and first.read_bytes() != other.read_bytes()
    with open(first, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["key"]) for row in rows] == list(range(1, 11))
    assert sum(row["split"] == "train" for row in rows) == 6
    assert all(row["TES"] == str(10 + int(row["key"])) and row["PCS"] == str(20 + int(row["key"])) for row in rows)
    assert all(row["path"].endswith(f"features/{row['key']}.npy") for row in rows)


@pytest.mark.parametrize("seeds", [[0], [0, 1, 2, 3, 4]])
def test_the_main_table_counts_wins_only_over_paired_seeds(seeds):
    table = {}
    for seed in seeds:
        table[("PCS", 0.25, "trs", seed)] = record(0.6 + 0.01 * seed)
        table[("PCS", 0.25, "supervised", seed)] = record(0.61)
    table[("PCS", 0.25, "trs", 9)] = record(0.99)  # a trs run without its supervised partner
    line = next(line for line in bench_fisv.render(table, [*seeds, 9], "cmd").splitlines()
                if line.startswith("| PCS | 25%"))
    wins = sum(0.6 + 0.01 * seed > 0.61 for seed in seeds)
    assert line.rstrip().endswith(f"| {wins}/{len(seeds)} |")
