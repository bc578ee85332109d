"""bench/finetune_probe.py: the report pairs variants per seed, only over seeds both ran; each
protocol (validation, validation-45, test) labels its own share of the training dives."""

from __future__ import annotations

import pytest

from bench import finetune_probe


def record(seed: int, variant: str, spearman: float) -> dict:
    return {"dataset": "demo", "target": "final_score", "ratio": 0.2, "seed": seed, "variant": variant,
            "validation_spearman": spearman}


def rows(text: str) -> dict[str, list[str]]:
    table = {}
    for line in text.splitlines()[2:]:
        parts = [part.strip() for part in line.strip("|").split("|")]
        table[parts[1]] = parts[2:]
    return table


def test_the_report_pairs_variants_by_seed_and_skips_unpaired_seeds():
    records = [record(10, "ft-sup", 0.80), record(10, "ft-mt", 0.85), record(11, "ft-sup", 0.70),
               record(11, "ft-mt", 0.69), record(12, "ft-mt", 0.99),  # no ft-sup partner: left out
               record(10, "frozen-sup", 0.60)]
    table = rows(finetune_probe.report(records))
    delta, wins, count, baseline = table["ft-mt − ft-sup"]
    assert delta == "+0.0200 ± 0.0300" and wins == "1/2" and count == "2" and baseline == "0.750"
    assert table["ft-sup − frozen-sup"][1:3] == ["1/1", "1"]
    assert "frozen-mt − frozen-sup" not in table  # never ran


def test_each_protocol_refuses_a_ratio_it_does_not_label():
    for protocol, (_, ratio) in finetune_probe.PROTOCOLS.items():
        with pytest.raises(SystemExit, match=f"labels {ratio:g}"):
            finetune_probe.probe_config("supervised", "final_score", ratio + 0.05, 0, protocol)
