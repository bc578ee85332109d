"""Generated run folders in the layout `pipeline.py train` writes (the run-folder contract)."""

from __future__ import annotations

import csv
import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from aqa.metrics import spearman


def write_run(
    folder: Path,
    *,
    dataset: str = "synth",
    target: str = "score",
    method: str = "trs",
    ratio: float = 0.2,
    seed: int = 0,
    n_train: int = 40,
    n_test: int = 30,
    noise: float = 10.0,
    groups: list[str] | None = None,
    predicted: np.ndarray | None = None,
    epochs: int | None = None,
    nested_config: bool = True,
    with_group_column: bool = True,
    stored_spearman: float | None | str = "same",
    extra_metrics: dict | None = None,
) -> dict:
    """Write one complete run folder; returns the test arrays for direct checks."""
    # str hashes change between processes; crc32 keeps every generated run the same on every machine.
    name = f"{dataset}/{target}/{method}/{ratio}/{seed}/{folder.name}"
    generator = np.random.default_rng(zlib.crc32(name.encode()))
    folder.mkdir(parents=True, exist_ok=True)
    train_keys = [f"tr{index:03d}" for index in range(n_train)]
    test_keys = [f"te{index:03d}" for index in range(n_test)]
    n_labelled = max(1, int(round(ratio * n_train)))
    train_true = generator.uniform(20, 100, n_train)
    test_true = np.round(generator.uniform(20, 100, n_test), 1)
    if predicted is None:
        predicted = test_true + generator.normal(0, noise, n_test)
    test_groups = groups if groups is not None else [""] * n_test
    identity = {"dataset": dataset, "target": target, "method": method, "ratio": ratio, "seed": seed}
    if nested_config:
        config = {
            "data": {"dataset": dataset, "target": target, "cache": "features/x.h5"},
            "method": method,
            "ratio": ratio,
            "seed": seed,
            "optim": {"epochs": epochs or 10, "lr": 1e-3},
        }
    else:
        config = dict(identity)
    (folder / "config.json").write_text(json.dumps(config))
    split = {"labelled": train_keys[:n_labelled], "unlabelled": train_keys[n_labelled:], "test": test_keys}
    (folder / "split.json").write_text(json.dumps(dict(split, validation=[])))
    header = ["key", "split", "true", "pred", "labelled"] + (["group"] if with_group_column else []) + ["extra"]
    with open(folder / "predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for index, key in enumerate(train_keys):
            row = [key, "train", train_true[index], train_true[index] + 1, int(index < n_labelled)]
            writer.writerow(row + ([""] if with_group_column else []) + ["x"])
        for index, key in enumerate(test_keys):
            row = [key, "test", repr(float(test_true[index])), repr(float(predicted[index])), 0]
            writer.writerow(row + ([test_groups[index]] if with_group_column else []) + ["x"])
    if stored_spearman == "same":  # what training writes: the same ρ evaluate recomputes
        stored_spearman = spearman(test_true, predicted) if np.isfinite(predicted).all() else None
    metrics = dict(identity, spearman=stored_spearman, rl2=1.0, mse=2.0, n_test=n_test, n_labelled=n_labelled,
                   n_unlabelled=n_train - n_labelled, preset="quick", wall_seconds=3.5)  # fmt: skip
    metrics.update(extra_metrics or {})  # e.g. trs's gate_choice and gate_verdict
    (folder / "metrics.json").write_text(json.dumps(metrics))
    epoch_predictions = None
    if epochs:
        # Later epochs get closer to the truth, with noise, so the best epoch is not always the last.
        epoch_predictions = np.stack(
            [test_true + generator.normal(0, noise * (1.5 - epoch / (2 * epochs)), n_test) for epoch in range(epochs)]
        )
        epoch_predictions[-1] = predicted
        with open(folder / "epoch_predictions.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["epoch", "key", "true", "pred"])
            for epoch in range(epochs):
                for index, key in enumerate(test_keys):
                    writer.writerow([epoch, key, test_true[index], repr(float(epoch_predictions[epoch, index]))])
    return {"true": test_true, "pred": np.asarray(predicted), "groups": test_groups, "epochs": epoch_predictions}


@pytest.fixture
def make_run():
    return write_run
