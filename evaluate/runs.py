"""Run folders: find them, read them, recompute their measures from ``predictions.csv``.

A run folder (written by ``pipeline.py train``) holds ``config.json``, ``split.json``,
``predictions.csv`` (``key,split,true,pred,labelled,group``), ``metrics.json`` and, when training
kept them, ``epoch_predictions.csv`` (``epoch,key,true,pred``, test rows of every epoch).
Everything wrong with one folder is raised as a one-line :class:`~aqa.errors.UserError` naming the
folder, so the caller can warn and carry on with the other runs.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from aqa.config import read_json, write_json
from aqa.errors import UserError
from evaluate.metrics import score_metrics

# A folder holding any of these is a run folder (complete or not); its subfolders are not searched.
RUN_MARKERS = ("config.json", "predictions.csv", "metrics.json", "split.json")
IDENTITY_FIELDS = ("dataset", "target", "method", "ratio", "seed")
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
    dataset: str
    target: str
    method: str
    ratio: float
    seed: int | None
    metrics: dict[str, Any]
    test_keys: list[str]
    true_scores: np.ndarray
    predicted: np.ndarray
    groups: list[str] | None
    split_digest: str | None = None  # labelled + test keys; None without split.json
    best_on_test: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def cell(self) -> tuple[str, str, str, float]:
        return (self.dataset, self.target, self.method, self.ratio)


def find_run_dirs(paths: list[Path]) -> list[Path]:
    """Every run folder at or below ``paths``, sorted, without duplicates.

    A folder is a run folder when it holds one of :data:`RUN_MARKERS`; incomplete ones are
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
            if any(marker in names for marker in RUN_MARKERS):
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


def _find_field(data: Any, name: str) -> Any:
    """The value of ``name`` at the shallowest depth of a nested dict (breadth first)."""
    pending = deque([data])
    while pending:
        node = pending.popleft()
        if isinstance(node, dict):
            if name in node:
                return node[name]
            pending.extend(value for value in node.values() if isinstance(value, dict))
    return None


def _identity(folder: Path, metrics: dict | None, config: dict | None) -> dict[str, Any]:
    identity: dict[str, Any] = {}
    for name in IDENTITY_FIELDS:
        value = metrics.get(name) if metrics else None
        if value is None and config is not None:
            value = _find_field(config, name)
        if isinstance(value, dict):  # e.g. "dataset": {"name": "mtl-aqa", ...}
            value = value.get("name")
        identity[name] = value
    missing = [name for name in ("dataset", "target", "method", "ratio") if identity[name] in (None, "")]
    if missing:
        raise UserError(f"config.json/metrics.json do not say the run's {', '.join(missing)}", folder)
    try:
        identity["ratio"] = float(identity["ratio"])
    except (TypeError, ValueError):
        raise UserError(f"labelled ratio {identity['ratio']!r} is not a number", folder / "config.json") from None
    if identity["seed"] is not None:
        try:
            identity["seed"] = int(identity["seed"])
        except (TypeError, ValueError):
            raise UserError(f"seed {identity['seed']!r} is not an integer", folder / "config.json") from None
    for name in ("dataset", "target", "method"):
        identity[name] = str(identity[name])
    return identity


def _read_rows(path: Path, required: tuple[str, ...]):
    """``(file, reader, column index)`` of a CSV with the ``required`` columns (extra ones are fine)."""
    handle = open(path, newline="", encoding="utf-8")
    reader = csv.reader(handle)
    try:
        header = [name.strip() for name in next(reader, [])]
    except (csv.Error, UnicodeDecodeError) as error:
        handle.close()
        raise UserError(f"malformed CSV header ({error})", path) from None
    missing = [column for column in required if column not in header]
    if missing:
        handle.close()
        what = "empty file" if not header else f"no column {', '.join(missing)} (header: {','.join(header)})"
        raise UserError(what, path)
    return handle, reader, {name: index for index, name in enumerate(header)}


def read_test_predictions(path: Path) -> tuple[list[str], np.ndarray, np.ndarray, list[str] | None]:
    """Test rows of ``predictions.csv``: keys, true scores, predictions, classes (None if no column)."""
    if not path.is_file():
        raise UserError("missing predictions.csv (run incomplete or still training)", path.parent)
    keys: list[str] = []
    true_scores: list[float] = []
    predicted: list[float] = []
    groups: list[str] = []
    handle, reader, column = _read_rows(path, ("key", "split", "true", "pred"))
    key_at, split_at, true_at, pred_at = column["key"], column["split"], column["true"], column["pred"]
    group_at = column.get("group")
    width = len(column)
    try:
        with handle:
            for row in reader:
                if not row:
                    continue  # blank line
                if len(row) < width:
                    raise UserError(f"line {reader.line_num}: {len(row)} fields, the header has {width}", path)
                if row[split_at] != "test":
                    continue
                keys.append(row[key_at])
                try:
                    true_scores.append(float(row[true_at]))
                    predicted.append(float(row[pred_at]))
                except ValueError:
                    bad = row[true_at] if not _is_number(row[true_at]) else row[pred_at]
                    which = "true" if not _is_number(row[true_at]) else "pred"
                    raise UserError(f"line {reader.line_num}: {which} {bad!r} is not a number", path) from None
                if group_at is not None:
                    groups.append(row[group_at])
    except csv.Error as error:
        raise UserError(f"malformed CSV ({error})", path) from None
    except UnicodeDecodeError:
        raise UserError("not a UTF-8 text CSV file", path) from None
    if not keys:
        raise UserError("no test rows (the split column never says 'test')", path)
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        duplicated = sorted({key for key in keys if key in seen or seen.add(key)})
        raise UserError(f"test key(s) listed twice: {', '.join(duplicated[:3])}", path)
    true_array, predicted_array = np.asarray(true_scores), np.asarray(predicted)
    bad_predictions = int((~np.isfinite(predicted_array)).sum())
    if bad_predictions:
        raise UserError(f"{bad_predictions} of {len(keys)} test predictions are NaN or infinite", path)
    bad_labels = int((~np.isfinite(true_array)).sum())
    if bad_labels:
        raise UserError(f"{bad_labels} of {len(keys)} true test scores are NaN or infinite", path)
    return keys, true_array, predicted_array, (groups if group_at is not None and any(groups) else None)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_split(folder: Path, test_keys: list[str]) -> str | None:
    """The predictions must cover exactly the test videos of ``split.json``, if there is one.

    Returns a digest of the labelled and test keys (``None`` without split.json), so that runs
    compared seed by seed can be checked to share their split.
    """
    split_path = folder / "split.json"
    if not split_path.is_file():
        return None
    split = read_json(split_path)
    if not isinstance(split, dict) or not isinstance(split.get("test"), list):
        raise UserError("no 'test' list", split_path)
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
    path = folder / "epoch_predictions.csv"
    if not path.is_file():
        raise UserError(
            "no epoch_predictions.csv: train with --keep-epoch-predictions to evaluate best-on-test", folder
        )
    position = {key: index for index, key in enumerate(test_keys)}
    per_epoch: dict[int, np.ndarray] = {}
    filled: dict[int, int] = {}
    handle, reader, column = _read_rows(path, ("epoch", "key", "true", "pred"))
    epoch_at, key_at, pred_at = column["epoch"], column["key"], column["pred"]
    width = len(column)
    try:
        with handle:
            for row in reader:
                if not row:
                    continue
                line = reader.line_num
                if len(row) < width:
                    raise UserError(f"line {line}: {len(row)} fields, the header has {width}", path)
                try:
                    epoch = int(row[epoch_at])
                except ValueError:
                    raise UserError(f"line {line}: epoch {row[epoch_at]!r} is not an integer", path) from None
                index = position.get(row[key_at])
                if index is None:
                    raise UserError(f"line {line}: key {row[key_at]!r} is not a test row of predictions.csv", path)
                predictions = per_epoch.get(epoch)
                if predictions is None:
                    predictions = per_epoch[epoch] = np.full(len(test_keys), np.nan)
                    filled[epoch] = 0
                if not math.isnan(predictions[index]):
                    raise UserError(f"line {line}: key {row[key_at]!r} twice in epoch {epoch}", path)
                try:
                    predictions[index] = float(row[pred_at])
                except ValueError:
                    raise UserError(f"line {line}: pred {row[pred_at]!r} is not a number", path) from None
                filled[epoch] += 1
    except csv.Error as error:
        raise UserError(f"malformed CSV ({error})", path) from None
    except UnicodeDecodeError:
        raise UserError("not a UTF-8 text CSV file", path) from None
    if not per_epoch:
        raise UserError("no rows", path)
    incomplete = [epoch for epoch, count in filled.items() if count != len(test_keys)]
    if incomplete:
        raise UserError(
            f"epoch {incomplete[0]} has {filled[incomplete[0]]} of {len(test_keys)} test predictions", path
        )
    epochs = sorted(per_epoch)
    matrix = np.stack([per_epoch[epoch] for epoch in epochs])
    if not np.isfinite(matrix).all():
        raise UserError("NaN or infinite predictions", path)
    # ρ of every epoch at once: Pearson correlation of average ranks (= scipy's Spearman).
    ranked_true = stats.rankdata(true_scores)
    ranked_true = ranked_true - ranked_true.mean()
    ranked = stats.rankdata(matrix, axis=1)
    ranked -= ranked.mean(axis=1, keepdims=True)
    denominator = np.sqrt((ranked**2).sum(axis=1) * (ranked_true**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        rhos = np.where(denominator > 0, ranked @ ranked_true / denominator, np.nan)
    if np.isnan(rhos).all():
        raise UserError("every epoch's test rho is undefined (constant predictions)", path)
    best = int(np.nanargmax(rhos))  # the first of equal maxima: the earliest epoch
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
    metrics_path = folder / "metrics.json"
    stored = read_json(metrics_path) if metrics_path.is_file() else None
    if stored is not None and not isinstance(stored, dict):
        raise UserError("not a JSON object", metrics_path)
    config_path = folder / "config.json"
    config = read_json(config_path) if config_path.is_file() else None
    if not (folder / "predictions.csv").is_file():
        raise UserError("missing predictions.csv (run incomplete or still training)", folder)
    if stored is None and config is None:
        raise UserError("missing config.json and metrics.json (run incomplete)", folder)
    identity = _identity(folder, stored, config)
    keys, true_scores, predicted, groups = read_test_predictions(folder / "predictions.csv")
    split_digest = _check_split(folder, keys)
    metrics = score_metrics(true_scores, predicted, groups)
    run = RunEvaluation(
        path=folder,
        name=_display_name(folder),
        metrics=metrics,
        test_keys=keys,
        true_scores=true_scores,
        predicted=predicted,
        groups=groups,
        split_digest=split_digest,
        **identity,
    )
    stored_rho = stored.get("spearman") if stored else None
    if isinstance(stored_rho, (int, float)) and (
        metrics["spearman"] is None or abs(stored_rho - metrics["spearman"]) > STORED_METRIC_TOLERANCE
    ):
        recomputed = "undefined" if metrics["spearman"] is None else f"{metrics['spearman']:.4f}"
        run.notes.append(f"metrics.json said spearman {stored_rho:.4f}, predictions.csv gives {recomputed}")
    if best_on_test:
        try:
            run.best_on_test = best_epoch_on_test(folder, keys, true_scores, groups)
        except UserError as error:
            run.notes.append(f"left out of best-on-test: {error.problem}")
    if write_back:
        _write_metrics(metrics_path, stored, identity, run)
    return run


def _finite_or_null(value: Any) -> Any:
    """``value`` with every NaN or infinite float (at any depth) replaced by ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(item) for item in value]
    return value


def _write_metrics(path: Path, stored: dict | None, identity: dict[str, Any], run: RunEvaluation) -> None:
    updated = dict(stored or {})
    for name, value in identity.items():
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
