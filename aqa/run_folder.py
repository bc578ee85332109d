"""The run folder: what ``pipeline.py train`` writes and ``evaluate`` (and ``predict``) read.

The twin of :mod:`aqa.cache`: one module owns the files, their columns and a run's identity, so
that the stage writing a run and the stages reading it cannot drift apart. Training builds a run
in ``.<name>.partial/`` beside it (``.<name>.lock`` is held while it does) and renames it into
place when every file is written; a finished run folder holds:

* ``config.json``: the training configuration (``train.config.TrainConfig``) plus what it
  ``resolved`` to (``resolved.dataset_name``, ``resolved.target``, the cache's configuration, the
  software version). Its top-level ``dataset`` is the *annotation kind* (``mtl-aqa``, ``fis-v``,
  ``manifest``), not the dataset's name.
* ``split.json``: ``{"labelled", "unlabelled", "test"[, "validation"]}`` lists of video keys.
* ``predictions.csv``: :data:`PREDICTION_COLUMNS` = ``key,split,true,pred,labelled,group``, one row
  per train video (``split`` = ``train``; labelled, unlabelled and validation videos, in that
  order) then per test video (``test``), in the score's own units. Numbers are written with
  ``repr`` (round-trip exact); ``true`` is empty where a train video has no score; ``labelled``
  is ``1``/``0``; ``group`` is the video's class or empty.
* ``metrics.json``: the final model's test measures (``spearman``, ``rl2``, ``mse``; no model
  selection on test), the run's identity (:class:`RunIdentity`: ``dataset`` = the dataset's
  *name*, ``target``, ``method``, ``preset``, ``ratio``, ``seed``), sizes (``n_test``,
  ``n_labelled``, ``n_unlabelled``, ``n_validation``), ``epochs``, ``wall_seconds``,
  ``torch_threads``, ``protocol``, the model's summary, ``validation_*`` measures when a
  validation set was carved and ``unlabelled_spearman`` when at least two unlabelled videos have
  a known score. Written last: its presence marks the run finished. Evaluation recomputes the
  measures from ``predictions.csv`` and writes them back (with per-class and best-on-test
  results).
* ``checkpoint.pt``: the final training state (tensors and plain data; loads with
  ``torch.load(weights_only=True)``).
* ``diagnostics.json`` (``trs`` only): pseudo-label quality against the unlabelled videos' labels.
* ``epoch_predictions.csv`` (only with ``keep_epoch_predictions``): :data:`EPOCH_PREDICTION_COLUMNS`
  = ``epoch,key,true,pred`` for every test video after every epoch, for evaluation's clearly
  labelled best-on-test mode.

Every problem a reader finds is one :class:`~aqa.errors.UserError` naming the file or folder.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aqa.config import read_json, write_json
from aqa.errors import UserError
from aqa.files import atomic_write_text

CONFIG_FILE = "config.json"
SPLIT_FILE = "split.json"
PREDICTIONS_FILE = "predictions.csv"
METRICS_FILE = "metrics.json"
CHECKPOINT_FILE = "checkpoint.pt"
DIAGNOSTICS_FILE = "diagnostics.json"
EPOCH_PREDICTIONS_FILE = "epoch_predictions.csv"

# A run folder is finished when it holds all of these (metrics.json is written last).
FINISHED_FILES = (CONFIG_FILE, SPLIT_FILE, PREDICTIONS_FILE, METRICS_FILE, CHECKPOINT_FILE)
# A folder holding any of these is a run folder (finished or not).
MARKER_FILES = (CONFIG_FILE, PREDICTIONS_FILE, METRICS_FILE, SPLIT_FILE)

PREDICTION_COLUMNS = ("key", "split", "true", "pred", "labelled", "group")
EPOCH_PREDICTION_COLUMNS = ("epoch", "key", "true", "pred")


@dataclass(frozen=True)
class RunIdentity:
    """Which cell of a results table a run belongs to, and which seed it is.

    ``dataset`` is the dataset's *name* (``metrics.json``'s ``dataset``, ``config.json``'s
    ``resolved.dataset_name``), not config.json's annotation kind. ``seed`` and ``preset`` are
    ``None`` only for hand-made folders that do not say them.
    """

    dataset: str
    target: str
    method: str
    ratio: float
    seed: int | None
    preset: str | None = None

    @property
    def cell(self) -> tuple[str, str, str, float]:
        return (self.dataset, self.target, self.method, self.ratio)

    def as_dict(self) -> dict[str, Any]:
        """The identity fields as ``metrics.json`` holds them."""
        return asdict(self)


# --------------------------------------------------------------------------- writing


def is_finished(folder: str | Path) -> bool:
    """True when ``folder`` holds every file of a finished run (:data:`FINISHED_FILES`)."""
    folder = Path(folder)
    return all((folder / name).is_file() for name in FINISHED_FILES)


def format_number(value: float) -> str:
    """A score as the CSV files hold it: ``repr`` (exact round trip), empty when not finite."""
    return "" if not math.isfinite(value) else repr(float(value))


def predictions_csv(rows: Iterable[tuple[str, str, float, float, bool, str]]) -> str:
    """``predictions.csv``'s text from ``(key, split, true, pred, labelled, group)`` rows."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(PREDICTION_COLUMNS)
    for key, split, true, pred, labelled, group in rows:
        writer.writerow([key, split, format_number(true), format_number(pred), int(labelled), group])
    return out.getvalue()


def epoch_predictions_csv(rows: Iterable[tuple[int, str, float, float]]) -> str:
    """``epoch_predictions.csv``'s text from ``(epoch, key, true, pred)`` rows."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EPOCH_PREDICTION_COLUMNS)
    for epoch, key, true, pred in rows:
        writer.writerow([epoch, key, format_number(true), format_number(pred)])
    return out.getvalue()


def write_predictions(folder: str | Path, rows: Iterable[tuple[str, str, float, float, bool, str]]) -> Path:
    """Publish ``predictions.csv`` in ``folder`` atomically (see :func:`predictions_csv`)."""
    return atomic_write_text(Path(folder) / PREDICTIONS_FILE, predictions_csv(rows))


def write_epoch_predictions(folder: str | Path, rows: Iterable[tuple[int, str, float, float]]) -> Path:
    """Publish ``epoch_predictions.csv`` in ``folder`` atomically."""
    return atomic_write_text(Path(folder) / EPOCH_PREDICTIONS_FILE, epoch_predictions_csv(rows))


def write_metrics(folder: str | Path, metrics: Mapping[str, Any]) -> Path:
    """Publish ``metrics.json`` atomically (sorted keys; NaN/inf as ``null``). Training writes it
    last, because its presence marks the run finished."""
    return write_json(Path(folder) / METRICS_FILE, dict(metrics))


# --------------------------------------------------------------------------- reading


def read_metrics(folder: str | Path) -> dict | None:
    """``metrics.json`` of ``folder`` as a dict, ``None`` when there is none."""
    path = Path(folder) / METRICS_FILE
    if not path.is_file():
        return None
    metrics = read_json(path)
    if not isinstance(metrics, dict):
        raise UserError("not a JSON object", path)
    return metrics


def read_config(folder: str | Path) -> dict | None:
    """``config.json`` of ``folder`` as a dict, ``None`` when there is none."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        return None
    config = read_json(path)
    if not isinstance(config, dict):
        raise UserError("not a JSON object", path)
    return config


def _identity_in_config(config: Mapping) -> dict[str, Any]:
    """The identity fields where ``config.json`` keeps them: ``resolved`` holds the dataset's name
    and the target it resolved to; a config written without ``resolved`` (by hand, or before it
    existed) has only its top-level ``dataset`` (the annotation kind) to stand in for the name."""
    resolved = config.get("resolved") if isinstance(config.get("resolved"), dict) else {}
    return {
        "dataset": resolved.get("dataset_name") or config.get("dataset"),
        "target": config.get("target") or resolved.get("target"),
        "method": config.get("method"),
        "ratio": config.get("ratio"),
        "seed": config.get("seed"),
        "preset": config.get("preset"),
    }


def identity_from(folder: str | Path, metrics: Mapping | None, config: Mapping | None) -> RunIdentity:
    """A run's identity from its ``metrics.json`` and, for what that lacks, its ``config.json``."""
    folder = Path(folder)
    from_config = _identity_in_config(config) if config is not None else {}
    values: dict[str, Any] = {}
    for name in ("dataset", "target", "method", "ratio", "seed", "preset"):
        value = metrics.get(name) if metrics else None
        values[name] = from_config.get(name) if value is None else value
    missing = [name for name in ("dataset", "target", "method", "ratio") if values[name] in (None, "")]
    if missing:
        raise UserError(f"config.json/metrics.json do not say the run's {', '.join(missing)}", folder)
    try:
        ratio = float(values["ratio"])
    except (TypeError, ValueError):
        raise UserError(f"labelled ratio {values['ratio']!r} is not a number", folder / CONFIG_FILE) from None
    seed = values["seed"]
    if seed is not None:
        try:
            seed = int(seed)
        except (TypeError, ValueError):
            raise UserError(f"seed {seed!r} is not an integer", folder / CONFIG_FILE) from None
    preset = None if values["preset"] in (None, "") else str(values["preset"])
    return RunIdentity(dataset=str(values["dataset"]), target=str(values["target"]), method=str(values["method"]),
                       ratio=ratio, seed=seed, preset=preset)


def read_identity(folder: str | Path) -> RunIdentity:
    """The identity of the run in ``folder`` (see :func:`identity_from`)."""
    folder = Path(folder)
    metrics, config = read_metrics(folder), read_config(folder)
    if metrics is None and config is None:
        raise UserError("missing config.json and metrics.json (run incomplete)", folder)
    return identity_from(folder, metrics, config)


def read_split(folder: str | Path) -> dict | None:
    """``split.json`` of ``folder`` (a dict with a ``test`` list), ``None`` when there is none."""
    path = Path(folder) / SPLIT_FILE
    if not path.is_file():
        return None
    split = read_json(path)
    if not isinstance(split, dict) or not isinstance(split.get("test"), list):
        raise UserError("no 'test' list", path)
    return split


@dataclass
class Predictions:
    """The rows of one split of ``predictions.csv``."""

    keys: list[str]
    true: np.ndarray  # float64; NaN where a (train) video has no score
    predicted: np.ndarray  # float64, all finite
    groups: list[str] | None  # None when there is no group column or every group is empty


def _open_csv(path: Path, required: tuple[str, ...]):
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


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_predictions(folder: str | Path, split: str = "test") -> Predictions:
    """The ``split`` rows of ``predictions.csv`` in ``folder``, checked: every prediction finite,
    no key twice, and for the test split every true score finite too."""
    path = Path(folder) / PREDICTIONS_FILE
    if not path.is_file():
        raise UserError("missing predictions.csv (run incomplete or still training)", path.parent)
    keys: list[str] = []
    true_scores: list[float] = []
    predicted: list[float] = []
    groups: list[str] = []
    handle, reader, column = _open_csv(path, ("key", "split", "true", "pred"))
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
                if row[split_at] != split:
                    continue
                keys.append(row[key_at])
                true_text = row[true_at] if row[true_at] or split == "test" else "nan"  # no score: empty
                try:
                    true_scores.append(float(true_text))
                    predicted.append(float(row[pred_at]))
                except ValueError:
                    which, bad = ("true", true_text) if not _is_number(true_text) else ("pred", row[pred_at])
                    raise UserError(f"line {reader.line_num}: {which} {bad!r} is not a number", path) from None
                if group_at is not None:
                    groups.append(row[group_at])
    except csv.Error as error:
        raise UserError(f"malformed CSV ({error})", path) from None
    except UnicodeDecodeError:
        raise UserError("not a UTF-8 text CSV file", path) from None
    if not keys:
        raise UserError(f"no {split} rows (the split column never says '{split}')", path)
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        duplicated = sorted({key for key in keys if key in seen or seen.add(key)})
        raise UserError(f"{split} key(s) listed twice: {', '.join(duplicated[:3])}", path)
    true_array, predicted_array = np.asarray(true_scores), np.asarray(predicted)
    bad_predictions = int((~np.isfinite(predicted_array)).sum())
    if bad_predictions:
        raise UserError(f"{bad_predictions} of {len(keys)} {split} predictions are NaN or infinite", path)
    bad_labels = int((~np.isfinite(true_array)).sum())
    if bad_labels and split == "test":
        raise UserError(f"{bad_labels} of {len(keys)} true test scores are NaN or infinite", path)
    return Predictions(keys, true_array, predicted_array, groups if group_at is not None and any(groups) else None)


def read_epoch_predictions(folder: str | Path, test_keys: list[str]) -> tuple[list[int], np.ndarray]:
    """``epoch_predictions.csv`` of ``folder`` as ``(epochs, matrix)``: ``matrix[i]`` holds the
    predictions of ``epochs[i]`` in the order of ``test_keys``. Every epoch must predict every
    test video exactly once, with finite numbers."""
    folder = Path(folder)
    path = folder / EPOCH_PREDICTIONS_FILE
    if not path.is_file():
        raise UserError(
            "no epoch_predictions.csv: train with --keep-epoch-predictions to evaluate best-on-test", folder
        )
    position = {key: index for index, key in enumerate(test_keys)}
    per_epoch: dict[int, np.ndarray] = {}
    filled: dict[int, int] = {}
    handle, reader, column = _open_csv(path, EPOCH_PREDICTION_COLUMNS)
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
    return epochs, matrix
