"""Fixtures shared by every test package: where the real inputs and the I3D weights are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ../shared folder (real clips, annotations, the Fis-V bank)."""
    path = Path(os.environ.get("TRS_AQA_SHARED", REPO_ROOT.parent / "shared"))
    if not path.is_dir():
        pytest.fail(f"{path}: the shared data folder is missing (set TRS_AQA_SHARED)")
    return path


@pytest.fixture(scope="session")
def i3d_weights_path() -> Path:
    """The converted Kinetics-400 I3D weights that `make weights` writes (make test runs it first)."""
    path = Path(os.environ.get("TRS_AQA_WEIGHTS", REPO_ROOT / "weights" / "i3d_kinetics400_rgb.pt"))
    if not path.is_file():
        pytest.fail(f"{path}: I3D weights missing; run `make weights` (make test does)")
    return path
