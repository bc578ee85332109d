"""Run folders: find them, read them (through :mod:`aqa.run_folder`, the contract with training),
recompute their measures from ``predictions.csv``.

Everything wrong with one folder is raised as a one-line :class:`~aqa.errors.UserError` naming the
folder, so the caller can warn and carry on with the other runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aqa import run_folder
from aqa.config import write_json
from aqa.errors import UserError
from aqa.metrics import spearman
from aqa.run_folder import RunIdentity
from evaluate.metrics import score_metrics

# Folders that evaluation itself writes next to runs; never searched for runs.
OUTPUT_FOLDERS = {"plots"}
BEST_ON_TEST_PROTOCOL = "best-on-test: epoch chosen by test rho (optimistic, as in published AQA tables)"
# A stored ρ that differs from the recomputed one by more than this is reported.
STORED_METRIC_TOLERANCE = 1e-6


@dataclass
class RunEvaluation:
    """One run's identity and its measures, recomputed from its predictions."""

    path: Path
    name: str
    identity: RunIdentity
    metrics: dict[str, Any]
    test_keys: list[str]
    true_scores: np.ndarray
    predicted: np.ndarray
    groups: list[str] | None
    split_digest: str | None = None  # labelled + test keys; None without split.json
    best_on_test: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    # trs: what its label-only gate chose and how clearly (metrics.json's gate_choice, gate_verdict)
    gate_choice: str | None = None
    gate_verdict: str | None = None
    # and what its graph guard did, when it ran (metrics.json's gate_graph_guard: "dropped the graph", ...)
    gate_graph_guard: str | None = None
    # and whose pseudo-labels taught the student (metrics.json's gate_teacher: "ema" or "ridge")
    gate_teacher: str | None = None

    # The identity's fields, which the summaries group and label runs by.
    dataset = property(lambda self: self.identity.dataset)
    target = property(lambda self: self.identity.target)
    method = property(lambda self: self.identity.method)
    ratio = property(lambda self: self.identity.ratio)
    seed = property(lambda self: self.identity.seed)
    cell = property(lambda self: self.identity.cell)


def find_run_dirs(paths: list[Path]) -> list[Path]:
    """Every run folder at or below ``paths``, sorted, without duplicates.

    A folder is a run folder when it holds one of :data:`aqa.run_folder.MARKER_FILES`; incomplete ones are
    returned too, so that evaluation can say what is missing instead of passing over them.
    Symbolic links to folders are followed, but every folder is visited once (by device and
    inode), so a link back up the tree (a cycle) ends the walk instead of looping forever.
    """
    found: dict[Path, None] = {}
    visited: set[tuple[int, int]] = set()
    for start in paths:
        start = Path(start)
        if not start.exists():
            raise UserError("no such folder", start)
        if not start.is_dir():
            raise UserError("not a folder (give a run folder or a folder of runs)", start)
        pending = deque([start])
        while pending:
            folder = pending.popleft()
            try:
                status = folder.stat()
            except OSError as error:  # e.g. a link whose target vanished, or a loop of links
                raise UserError(f"cannot read folder ({error.strerror})", folder) from None
            if (status.st_dev, status.st_ino) in visited:
                continue
            visited.add((status.st_dev, status.st_ino))
            try:
                children = sorted(os.scandir(folder), key=lambda entry: entry.name)
            except OSError as error:
                raise UserError(f"cannot list folder ({error.strerror})", folder) from None
            names = {child.name for child in children}
            if any(marker in names for marker in run_folder.MARKER_FILES):
                found[folder] = None
                continue
            for child in children:
                if _is_folder(child) and not child.name.startswith(".") and child.name not in OUTPUT_FOLDERS:
                    pending.append(Path(child.path))
    return sorted(found)


def _is_folder(entry: os.DirEntry) -> bool:
    """A folder, or a link to one; a link that loops onto itself or dangles is neither."""
    try:
        return entry.is_dir()
    except OSError:  # ELOOP: a cycle of links with no folder at its end
        return False


def _check_split(folder: Path, test_keys: list[str]) -> str | None:
    """The predictions must cover exactly the test videos of ``split.json``, if there is one.

    Returns a digest of the labelled and test keys (``None`` without split.json), so that runs
    compared seed by seed can be checked to share their split.
    """
    split = run_folder.read_split(folder)
    if split is None:
        return None
    expected = {str(key) for key in split["test"]}
    present = set(test_keys)
    if present != expected:
        missing, extra = sorted(expected - present), sorted(present - expected)
        parts = [f"predictions.csv has {len(present)} test rows, split.json lists {len(expected)} test videos"]
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}")
        if extra:
            parts.append(f"not in the split {', '.join(extra[:3])}{' …' if len(extra) > 3 else ''}")
        raise UserError("; ".join(parts), folder)
    labelled = split.get("labelled")
    if not isinstance(labelled, list):
        return None
    listing = json.dumps([sorted(map(str, labelled)), sorted(expected)])
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


def best_epoch_on_test(
    folder: Path, test_keys: list[str], true_scores: np.ndarray, groups: list[str] | None
) -> dict[str, Any]:
    """The epoch whose *test* ρ is highest, and its measures (the field's optimistic protocol)."""
    epochs, matrix = run_folder.read_epoch_predictions(folder, test_keys)
    rhos = [spearman(true_scores, predictions) for predictions in matrix]
    defined = [index for index, rho in enumerate(rhos) if rho is not None]
    if not defined:
        path = folder / run_folder.EPOCH_PREDICTIONS_FILE
        raise UserError("every epoch's test rho is undefined (constant predictions)", path)
    best = max(defined, key=lambda index: rhos[index])  # the first of equal maxima: the earliest epoch
    result = score_metrics(true_scores, matrix[best], groups)
    result.update(
        protocol=BEST_ON_TEST_PROTOCOL,
        epoch=epochs[best],
        n_epochs=len(epochs),
        last_epoch=epochs[-1],
    )
    return result


def _display_name(folder: Path) -> str:
    try:
        return os.path.relpath(folder)
    except ValueError:  # another drive on Windows
        return str(folder)


def evaluate_run(folder: Path, best_on_test: bool = False, write_back: bool = True) -> RunEvaluation:
    """Read one run folder, recompute its measures and (by default) store them in its metrics.json.

    With ``best_on_test`` the best-on-test measures are computed too; a run lacking
    ``epoch_predictions.csv`` is still evaluated and says so in ``notes``.
    """
    folder = Path(folder)
    stored = run_folder.read_metrics(folder)
    config = run_folder.read_config(folder)
    if not (folder / run_folder.PREDICTIONS_FILE).is_file():
        raise UserError("missing predictions.csv (run incomplete or still training)", folder)
    if stored is None and config is None:
        raise UserError("missing config.json and metrics.json (run incomplete)", folder)
    identity = run_folder.identity_from(folder, stored, config)
    test = run_folder.read_predictions(folder, "test")
    split_digest = _check_split(folder, test.keys)
    metrics = score_metrics(test.true, test.predicted, test.groups)
    run = RunEvaluation(
        path=folder,
        name=_display_name(folder),
        identity=identity,
        metrics=metrics,
        test_keys=test.keys,
        true_scores=test.true,
        predicted=test.predicted,
        groups=test.groups,
        split_digest=split_digest,
        gate_choice=_text_or_none(stored, "gate_choice"),
        gate_verdict=_text_or_none(stored, "gate_verdict"),
        gate_graph_guard=_text_or_none(stored, "gate_graph_guard"),
        gate_teacher=_text_or_none(stored, "gate_teacher"),
    )
    stored_rho = stored.get("spearman") if stored else None
    if isinstance(stored_rho, (int, float)) and (
        metrics["spearman"] is None or abs(stored_rho - metrics["spearman"]) > STORED_METRIC_TOLERANCE
    ):
        recomputed = "undefined" if metrics["spearman"] is None else f"{metrics['spearman']:.4f}"
        run.notes.append(f"metrics.json said spearman {stored_rho:.4f}, predictions.csv gives {recomputed}")
    if best_on_test:
        try:
            run.best_on_test = best_epoch_on_test(folder, test.keys, test.true, test.groups)
        except UserError as error:
            run.notes.append(f"left out of best-on-test: {error.problem}")
    if write_back:
        _write_metrics(folder / run_folder.METRICS_FILE, stored, identity, run)
    return run


def _text_or_none(stored: dict | None, name: str) -> str | None:
    """A text field of metrics.json, or None where it is absent or not text."""
    value = stored.get(name) if stored else None
    return value if isinstance(value, str) and value else None


def _finite_or_null(value: Any) -> Any:
    """``value`` with every NaN or infinite float (at any depth) replaced by ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(item) for item in value]
    return value


def _write_metrics(path: Path, stored: dict | None, identity: RunIdentity, run: RunEvaluation) -> None:
    updated = dict(stored or {})
    for name, value in identity.as_dict().items():
        updated.setdefault(name, value)
    # Per-class results of an earlier evaluation must not survive if the classes are gone.
    updated.pop("per_class", None)
    updated.pop("spearman_fisher_z", None)
    updated.pop("fisher_z_classes", None)
    updated.update(run.metrics)
    if run.best_on_test is not None:
        updated["best_on_test"] = run.best_on_test
    if updated == stored:
        return  # nothing new: leave the file (and its time stamp) alone
    # An older metrics.json may hold NaN/Infinity (not JSON); kept fields are written as null.
    updated = _finite_or_null(updated)
    try:
        write_json(path, updated)
    except OSError as error:
        run.notes.append(f"could not update metrics.json ({error.strerror})")
