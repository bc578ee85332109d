"""Tiny generated datasets for stage 2 tests (tests/helpers/tiny_data.py): a feature cache whose
scores are a known function of the features, and a CSV manifest with the labels and the split."""

from __future__ import annotations

import pytest

from tiny_data import FAST, set_flags, write_dataset
from training import one_torch_thread


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    cache, manifest, keys, scores = write_dataset(folder)
    return {"cache": cache, "manifest": manifest, "keys": keys, "scores": scores, "folder": folder}


@pytest.fixture(scope="session")
def fast_flags() -> list[str]:
    """--set flags that make every neural method train in about a second."""
    return set_flags(FAST)


@pytest.fixture(scope="session")
def dataset_writer():
    """The generator of tiny datasets (see :func:`write_dataset`)."""
    return write_dataset


@pytest.fixture
def one_thread():
    """One torch thread for the test (fast on tiny tensors), restored afterwards so no later test inherits it."""
    with one_torch_thread():
        yield
