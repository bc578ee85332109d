"""A tiny generated dataset for the bench probes' tests (tests/helpers/tiny_data.py)."""

from __future__ import annotations

import pytest

from tiny_data import FAST, write_dataset


@pytest.fixture(scope="session")
def tiny_manifest_dataset(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("tiny-bench")
    cache, manifest, keys, scores = write_dataset(folder)
    return {"cache": cache, "manifest": manifest, "keys": keys, "scores": scores}


@pytest.fixture(scope="session")
def fast_assignments() -> list[str]:
    """``--set`` assignments that make every neural method train in about a second."""
    return list(FAST)
