"""Shared by the Fis-V bench scripts: the feature cache of the real Fis-V bank, and in-process runs.

The cache is made with the project's own ``pipeline.py import-features`` (one view,
``original``). Runs here call the training package directly (no run folder), which is what a
tuning loop needs; the table script (``bench/bench_fisv.py``) goes through ``pipeline.py sweep``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FISV_DIR = REPO_ROOT.parent / "shared" / "data" / "fisv-swin"
DEFAULT_CACHE = REPO_ROOT / "features" / "fisv-swin.h5"


def ensure_fisv_cache(fisv_dir: Path, cache: Path) -> Path:
    """Import the Fis-V bank into ``cache`` unless it is there (the import is a no-op if up to date)."""
    if not (fisv_dir / "train.txt").is_file():
        sys.exit(f"error: {fisv_dir}: no Fis-V bank (train.txt, test.txt, features/); pass --fisv-dir")
    if not cache.is_file():
        subprocess.run([sys.executable, str(REPO_ROOT / "pipeline.py"), "import-features", "--features-dir",
                        str(fisv_dir / "features"), "--out", str(cache), "--no-progress"], check=True)
    return cache


def config_digest(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def fit_without_test(config_dict: dict, threads: int = 1):
    """Train one configuration in this process (:func:`train.fitting.fit`, no run folder) on its
    data without the test rows, as ``tune`` does (so no variant can read them); the FitResult."""
    import torch

    from train.config import config_from_json
    from train.data import prepare_data
    from train.fitting import fit
    from train.tune import without_test

    torch.set_num_threads(threads)
    config = config_from_json(config_dict, "tuning")
    return fit(config, without_test(prepare_data(config)), progress=False)


def run_in_process(config_dict: dict, threads: int = 1) -> dict:
    """:func:`fit_without_test`'s validation and unlabelled measures, trs diagnostics and the
    chosen ridge penalty."""
    fitted = fit_without_test(config_dict, threads)
    config = fitted.config
    result = {"seconds": fitted.seconds, "validation_spearman": (fitted.validation or {}).get("spearman")}
    if fitted.unlabelled is not None:
        result["unlabelled_spearman"] = fitted.unlabelled["spearman"]
    if fitted.diagnostics is not None:
        last = fitted.diagnostics.get("last_refresh") or {}
        result["diagnostics"] = {key: value for key, value in last.items() if key != "epoch"}
        gate = fitted.diagnostics.get("gate") or {}
        if gate.get("estimates"):
            result["gate"] = {"chosen": gate["chosen"], "default": gate["default"], "margin": gate["margin"],
                              "teacher": gate.get("teacher"),
                              "estimates": gate["estimates"], "fold_estimates": gate.get("fold_estimates", {})}
    if config.method == "ridge":
        result["ridge_alpha"] = fitted.method.model_summary()["ridge_alpha"]
    return result


def load_results(path: Path) -> dict:
    results = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                results[record["id"]] = record
    return results


def append_result(path: Path, record: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
