"""A tiny generated dataset for the bench probes' tests (tests/helpers/tiny_data.py), and the
default preset of a method on it with the fast training flags."""

from __future__ import annotations

import dataclasses

import pytest

from tiny_data import FAST, write_dataset


@pytest.fixture(scope="session")
def tiny_manifest_dataset(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("tiny-bench")
    cache, manifest, keys, scores = write_dataset(folder)
    return {"cache": cache, "manifest": manifest, "keys": keys, "scores": scores}


@pytest.fixture(scope="session")
def tiny_config(tiny_manifest_dataset):
    """``tiny_config(method, *assignments, validation_fraction=0.2)``: ``method``'s default preset
    on the tiny dataset (half of its training videos labelled, seed 0) with the fast flags and
    ``assignments`` applied."""
    from train.config import apply_overrides, preset_config

    def make(method: str, *assignments: str, validation_fraction: float = 0.2):
        config = dataclasses.replace(preset_config("default", method), features=str(tiny_manifest_dataset["cache"]),
                                     dataset="manifest", manifest=str(tiny_manifest_dataset["manifest"]), ratio=0.5,
                                     seed=0, validation_fraction=validation_fraction)
        return apply_overrides(config, [*FAST, *assignments])

    return make
