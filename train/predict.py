"""Scoring videos with a finished run: its final model on features made the way its own were.

A run's predictions are only meaningful on features from the same stage 1 configuration
(backbone and weights, precision, preprocessing, clip layout, views) that it was trained on, and
after the same transform: clips resampled to the run's token count
(:func:`train.data.resample_tokens`), standardised with the training videos' statistics
(:func:`train.data.standardise_tokens`), the canonical view only, the head in evaluation mode,
the target de-standardised (and multiplied back by the difficulty for a difficulty-aware run).
:func:`load_run` reads all of that from the run folder (``config.json``, ``checkpoint.pt``,
loaded with ``weights_only=True`` and checked before use); :func:`check_features` refuses a cache
made otherwise; :func:`predict` reproduces the run's own ``predictions.csv`` numbers exactly.

This module reads caches only; making features for new video files is stage 1's job (the
command line runs it with :func:`extraction_settings` and hands the cache here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from aqa import __version__, run_folder
from aqa.cache import FeatureCache, config_differences
from aqa.errors import UserError
from train.config import METHODS, TrainConfig, config_from_json
from train.data import resample_tokens, ridge_features, standardise_tokens

# The cache configuration fields that determine the features' numbers. The dataset's description
# is not one of them: new videos come from elsewhere.
FEATURE_FIELDS = ("backbone", "precision", "preprocessing", "clip_layout", "views")
CONFIG = run_folder.CONFIG_FILE
CHECKPOINT = run_folder.CHECKPOINT_FILE


@dataclass
class Prediction:
    """One video's predicted score and its uncertainty (in the score's units; NaN for ridge)."""

    key: str
    score: float
    std: float  # exp(log_variance / 2), de-standardised like the score
    log_variance: float  # the head's raw output, in standardised target units


@dataclass
class Exemplars:
    """A ``trs`` run's reference network and labelled exemplars, for its share of the prediction."""

    reference: object  # train.models.ReferenceNetwork, in eval mode
    tokens: object  # torch float32 [exemplars, num_tokens, dim], standardised canonical view
    targets: object  # torch float32 [exemplars], standardised targets
    difficulty: np.ndarray | None  # float64 [exemplars] (difficulty-aware runs: same-difficulty pools)
    share: float  # reference.test_share


@dataclass
class GraphNodes:
    """A ``trs`` run's graph nodes (its training videos), for the graph's share of the prediction."""

    tokens: object  # torch float32 [nodes, num_tokens, dim], standardised canonical view
    values: object  # torch float32 [nodes], labels and last pseudo-labels (standardised targets)
    neighbours: int  # semi.graph_neighbours
    features: str  # semi.graph_features
    share: float  # semi.graph_test_share


@dataclass
class TrainedRun:
    """What scoring needs from a finished run folder, checked."""

    run_dir: Path
    config: TrainConfig
    cache_config: dict  # the configuration of the features the run was trained on
    num_tokens: int
    feature_mean: np.ndarray  # float32 [dim]
    feature_std: np.ndarray
    difficulty_aware: bool
    target_mean: float = 0.0
    target_std: float = 1.0
    student: object = None  # train.models.MixerHead, in eval mode (neural methods)
    ridge_weights: np.ndarray | None = None  # float64 [segments * dim] (ridge; trs whose teacher was the ridge)
    ridge_bias: float = 0.0
    ridge_share: float = 0.0  # trs: semi.ridge_test_share where its teacher was the ridge, else 0
    exemplars: Exemplars | None = None  # trs with reference.test_share > 0
    graph: GraphNodes | None = None  # trs whose graph shared the predictions (semi.graph_test_share)

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def feature_dim(self) -> int:
        return int(self.feature_mean.shape[0])

    @property
    def has_uncertainty(self) -> bool:
        return self.student is not None


# --------------------------------------------------------------------------- reading a run


def _read_config(run_dir: Path) -> tuple[TrainConfig, dict]:
    path = run_dir / CONFIG
    if not run_dir.is_dir():
        raise UserError("run folder not found" if not run_dir.exists() else "not a folder, expected a run folder",
                        run_dir)
    raw = run_folder.read_config(run_dir)
    if raw is None:
        raise UserError(f"not a run folder (no {CONFIG}; give the folder `pipeline.py train --run-dir` wrote)",
                        run_dir)
    missing = [name for name in run_folder.FINISHED_FILES if not (run_dir / name).is_file()]
    if missing:
        raise UserError(f"not a finished run (no {missing[0]})", run_dir)
    config = config_from_json(raw, path)
    resolved = raw.get("resolved") if isinstance(raw, dict) else None
    if not isinstance(resolved, dict) or not resolved:
        raise UserError(f"{CONFIG} has no resolved section: not a finished run of this version", path)
    version = resolved.get("software_version")
    if version != __version__:
        raise UserError(f"run was trained by software version {version!r}, this is {__version__}; "
                        "score it with that version or train it again", path)
    return config, resolved


def _recorded_cache_config(config: TrainConfig, resolved: dict, run_dir: Path) -> dict:
    """The run's record of its features' configuration; the cache it names when not recorded."""
    recorded = resolved.get("cache_config")
    if isinstance(recorded, dict) and recorded:
        return recorded
    from aqa.cache import open_cache

    try:
        return dict(open_cache(config.features).config)
    except UserError as error:
        raise UserError(f"the run recorded no features configuration and its cache cannot be read ({error})",
                        run_dir / CONFIG) from None


def _tensor(state: dict, name: str, path: Path, dtype, shape: tuple | None = None):
    import torch

    value = state.get(name)
    if not isinstance(value, torch.Tensor):
        raise UserError(f"not a finished run's checkpoint: {name} is {type(value).__name__}, expected a tensor", path)
    if value.dtype != dtype or (shape is not None and tuple(value.shape) != shape) or value.dim() != 1:
        raise UserError(f"checkpoint {name} is a {value.dtype} tensor of shape {list(value.shape)}, expected "
                        f"{dtype} {list(shape) if shape else '[dim]'}", path)
    array = value.numpy()
    if not np.isfinite(array).all():
        raise UserError(f"checkpoint {name} holds NaN or infinite values", path)
    return array


def _number(state: dict, name: str, path: Path, positive: bool = False) -> float:
    value = state.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
            positive and not value > 0):
        shown = repr(value) if isinstance(value, (int, float, str)) or value is None else type(value).__name__
        raise UserError(f"checkpoint {name} is {shown[:40]}, expected a {'positive ' if positive else ''}number", path)
    return float(value)


def _build_module(state: dict, name: str, make, path: Path):
    """``make()``'s module with the checkpoint's ``name`` weights, checked key by key, in evaluation mode."""
    import torch

    weights = state.get(name)
    if not isinstance(weights, dict):
        raise UserError(f"checkpoint has no {name} model ({name} is {type(weights).__name__})", path)
    with torch.random.fork_rng(devices=[]):  # building draws initial weights; leave the caller's RNG alone
        module = make()
    template = module.state_dict()
    missing = sorted(set(template) - set(weights))
    unexpected = sorted(str(key) for key in set(weights) - set(template))
    if missing or unexpected:
        what = f"lacks {missing[0]!r}" if missing else f"has {unexpected[0]!r}, which the {name} does not"
        raise UserError(f"checkpoint {name} does not fit the run's {name} ({what})", path)
    for key, tensor in template.items():
        value = weights[key]
        if not isinstance(value, torch.Tensor) or value.shape != tensor.shape or value.dtype != tensor.dtype:
            shown = f"{value.dtype} {list(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise UserError(f"checkpoint {name} {key} is {shown}, the run's {name} has {tensor.dtype} "
                            f"{list(tensor.shape)}", path)
    module.load_state_dict(weights)
    module.eval()
    return module


def _build_student(state: dict, config: TrainConfig, num_tokens: int, dim: int, path: Path):
    """The run's student head with the checkpoint's weights, in evaluation mode."""
    from train.models import MixerHead

    return _build_module(state, "student", lambda: MixerHead(num_tokens, dim, config.head), path)


def _exemplars(state: dict, config: TrainConfig, num_tokens: int, dim: int, difficulty_aware: bool,
               path: Path) -> Exemplars:
    """The reference network and the labelled exemplars a ``trs`` run with ``reference.test_share``
    compares every scored video with (:meth:`train.methods.trs.TRSMethod.prediction_fields`)."""
    import torch

    from train.models import ReferenceNetwork

    reference = _build_module(state, "reference", lambda: ReferenceNetwork(dim, config.reference), path)
    tokens = _video_tokens(state, "exemplar_tokens", "exemplars", num_tokens, dim, path)
    count = (len(tokens),)
    targets = torch.from_numpy(_tensor(state, "exemplar_targets", path, _float32(), count))
    difficulty = _tensor(state, "exemplar_difficulty", path, _float64(), count) if difficulty_aware else None
    return Exemplars(reference, tokens, targets, difficulty, config.reference.test_share)


def _video_tokens(state: dict, name: str, rows: str, num_tokens: int, dim: int, path: Path):
    """``state[name]``: finite float32 tokens ``[rows, num_tokens, dim]`` of at least one video."""
    import torch

    tokens = state.get(name)
    if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.float32 or tokens.dim() != 3 or \
            tuple(tokens.shape[1:]) != (num_tokens, dim) or len(tokens) < 1:
        shown = f"{tokens.dtype} {list(tokens.shape)}" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise UserError(f"checkpoint {name} is {shown}, expected float32 [{rows}, {num_tokens}, {dim}]", path)
    if not torch.isfinite(tokens).all():
        raise UserError(f"checkpoint {name} holds NaN or infinite values", path)
    return tokens


def _graph_nodes(state: dict, config: TrainConfig, num_tokens: int, dim: int, path: Path) -> GraphNodes:
    """The graph's nodes a ``trs`` run whose graph shared its predictions places every scored video
    among (:meth:`train.methods.trs.TRSMethod.prediction_fields`)."""
    import torch

    tokens = _video_tokens(state, "graph_node_tokens", "nodes", num_tokens, dim, path)
    values = torch.from_numpy(_tensor(state, "graph_node_values", path, _float32(), (len(tokens),)))
    return GraphNodes(tokens, values, config.semi.graph_neighbours, config.semi.graph_features,
                      config.semi.graph_test_share)


def load_run(run_dir) -> TrainedRun:
    """A finished run folder's model and feature transform, each part checked; else one
    :class:`UserError` saying what is wrong (not a run, another version, a damaged checkpoint)."""
    from train.methods import STATE_FORMAT
    from train.run import load_checkpoint

    run_dir = Path(run_dir)
    config, resolved = _read_config(run_dir)
    path = run_dir / CHECKPOINT
    state = load_checkpoint(path)
    if state.get("format") != STATE_FORMAT or state.get("final") is not True:
        raise UserError(f"not the final checkpoint of a finished run of this version (format "
                        f"{state.get('format')!r:.20}, this version reads {STATE_FORMAT})", path)
    method = state.get("method")
    if method != config.method or method not in METHODS:
        raise UserError(f"checkpoint is of method {method!r:.40}, the run's {CONFIG} says {config.method!r}", path)
    stored = state.get("config")
    try:
        same = config_from_json(stored, path).identity() == config.identity()
    except UserError:
        same = False
    if not same:
        raise UserError(f"checkpoint was saved by a run of another configuration than {run_dir / CONFIG}", path)
    num_tokens = state.get("num_tokens")
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 1:
        raise UserError(f"checkpoint num_tokens is {num_tokens!r:.40}, expected a positive whole number", path)
    mean = _tensor(state, "feature_mean", path, _float32())
    std = _tensor(state, "feature_std", path, _float32(), tuple(mean.shape))
    if not (std > 0).all():
        raise UserError("checkpoint feature_std has values that are not positive", path)
    run = TrainedRun(run_dir=run_dir, config=config, cache_config=_recorded_cache_config(config, resolved, run_dir),
                     num_tokens=num_tokens, feature_mean=mean, feature_std=std,
                     difficulty_aware=bool(resolved.get("difficulty_aware")))
    if method == "ridge":
        segments = min(config.ridge.segments, num_tokens)  # train.data.segment_means
        run.ridge_weights = _tensor(state, "ridge_weights", path, _float64(), (segments * len(mean),))
        run.ridge_bias = _number(state, "ridge_bias", path)
    else:
        run.target_mean = _number(state, "target_mean", path)
        run.target_std = _number(state, "target_std", path, positive=True)
        run.student = _build_student(state, config, num_tokens, len(mean), path)
        if method == "trs" and config.reference.test_share > 0 and state.get("reference") is not None:
            run.exemplars = _exemplars(state, config, num_tokens, len(mean), run.difficulty_aware, path)
        # The run says whether its graph shared the predictions (checkpoints from before it could
        # say nothing and predicted without it).
        share = _number(state, "graph_test_share", path) if method == "trs" and "graph_test_share" in state else 0.0
        if share not in (0.0, config.semi.graph_test_share):
            raise UserError(f"checkpoint graph_test_share is {share:g}, the run's {CONFIG} says "
                            f"{config.semi.graph_test_share:g}", path)
        if share > 0:
            run.graph = _graph_nodes(state, config, num_tokens, len(mean), path)
        # Likewise the ridge's share (checkpoints from before trs version 10 predicted without it).
        share = _number(state, "ridge_test_share", path) if method == "trs" and "ridge_test_share" in state else 0.0
        if share not in (0.0, config.semi.ridge_test_share):
            raise UserError(f"checkpoint ridge_test_share is {share:g}, the run's {CONFIG} says "
                            f"{config.semi.ridge_test_share:g}", path)
        if share > 0:
            run.ridge_share = share
            segments = min(config.ridge.segments, num_tokens)  # train.data.segment_means
            run.ridge_weights = _tensor(state, "ridge_weights", path, _float64(), (segments * len(mean),))
            run.ridge_bias = _number(state, "ridge_bias", path)
    return run


def _float32():
    import torch

    return torch.float32


def _float64():
    import torch

    return torch.float64


# --------------------------------------------------------------------------- the features


def feature_config(cache_config: Mapping) -> dict:
    """The part of a cache's configuration that determines its numbers (see ``FEATURE_FIELDS``)."""
    return {name: cache_config[name] for name in FEATURE_FIELDS if name in cache_config}


def check_features(cache: FeatureCache, run: TrainedRun) -> None:
    """Refuse a cache whose features were made otherwise than the run's, naming both."""
    differences = config_differences(feature_config(cache.config), feature_config(run.cache_config))
    if differences:
        raise UserError(f"features made with other settings than those run {run.run_dir} was trained on "
                        f"({'; '.join(differences[:3])}{'; ...' if len(differences) > 3 else ''}); "
                        "extract them with the run's settings", cache.path)


def extraction_settings(run: TrainedRun) -> dict:
    """The run's features' stage 1 settings, as ``extract`` options (``resize``, ``crop``,
    ``clip_length``, ``clip_stride``, ``views``, ``precision``) and the backbone's identity
    (``backbone``, ``weights_sha256``), so that new videos are extracted the same way."""
    recorded = run.cache_config
    backbone = recorded.get("backbone") if isinstance(recorded.get("backbone"), dict) else {}
    preprocessing, layout = recorded.get("preprocessing"), recorded.get("clip_layout")
    views = recorded.get("views")
    if not (backbone.get("weights_sha256") and isinstance(preprocessing, dict) and isinstance(layout, dict)
            and isinstance(views, list) and views):
        kind = backbone.get("name") if backbone else recorded.get("backbone")
        raise UserError(f"the run was trained on features that stage 1 did not extract from videos "
                        f"(backbone {kind!r:.60}); give --features with a cache of the same kind",
                        run.run_dir / CONFIG)
    try:
        return {
            "resize": int(preprocessing["resize_short_side"]), "crop": int(preprocessing["crop"]),
            "clip_length": int(layout["clip_length"]), "clip_stride": int(layout["stride"]),
            "views": ",".join(views[1:]) or "none", "precision": str(recorded.get("precision", "fp32")),
            "backbone": str(backbone.get("name")), "weights_sha256": str(backbone["weights_sha256"]),
        }
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"the run's features configuration is incomplete ({type(error).__name__}: {error})",
                        run.run_dir / CONFIG) from None


# --------------------------------------------------------------------------- scoring


def _tokens(run: TrainedRun, cache: FeatureCache, keys: list[str]) -> np.ndarray:
    """float32 ``[videos, num_tokens, dim]``: the canonical view, as training transformed it."""
    raw = cache.load_all(keys)
    bad = [key for key in keys if not np.isfinite(raw[key]).all()]
    if bad:
        raise UserError(f"video {bad[0]!r} has NaN or infinite features", cache.path)
    wrong = [key for key in keys if raw[key].shape[2] != run.feature_dim]
    if wrong:
        raise UserError(f"video {wrong[0]!r} has {raw[wrong[0]].shape[2]}-d features, the run was trained on "
                        f"{run.feature_dim}-d", cache.path)
    # All views resampled, as in training, then the canonical one (view 0): what the model predicts from.
    tokens = np.stack([resample_tokens(raw[key], run.num_tokens)[0] for key in keys]).astype(np.float32)
    return standardise_tokens(tokens, run.feature_mean, run.feature_std)


def _difficulties(run: TrainedRun, keys: list[str], difficulty: Mapping[str, float] | None) -> np.ndarray:
    if not run.difficulty_aware:
        return np.ones(len(keys))
    difficulty = difficulty or {}
    missing = [key for key in keys if key not in difficulty]
    if missing:
        raise UserError(f"the run regresses score / difficulty: give video {missing[0]!r}'s difficulty "
                        f"(--difficulty {missing[0]}=D)", run.run_dir)
    values = np.array([float(difficulty[key]) for key in keys], dtype=np.float64)
    if not (np.isfinite(values) & (values > 0)).all():
        raise UserError("a difficulty must be a positive number")
    return values


def _head_outputs(run: TrainedRun, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(standardised value, log-variance), float64 each, computed as the trainer's inference does."""
    import torch

    from train.methods.supervised import INFERENCE_BATCH, predict_in_batches

    count = len(tokens)
    inputs = torch.from_numpy(tokens)
    if count % INFERENCE_BATCH == 1:
        # A batch of one row takes the matrix-vector path, whose sums round differently from the
        # matrix-matrix one of the trainer's batches: score the last video beside a copy of itself.
        # That kept the trainer's digits on the CPUs it was written on; on others any change of batch
        # shape may still round differently (float32 rounding; tests/train/test_predict.py).
        inputs = torch.cat([inputs, inputs[-1:]])
    value, log_variance = predict_in_batches(run.student, torch.arange(len(inputs)), lambda rows: inputs[rows])
    return value[:count].double().numpy(), log_variance[:count].double().numpy()


def _with_reference(exemplars: Exemplars, tokens: np.ndarray, value: np.ndarray,
                    difficulty: np.ndarray | None) -> np.ndarray:
    """The student's standardised ``value`` blended with the reference network's, as
    :meth:`train.methods.trs.TRSMethod.predict_scores` blends them."""
    import torch

    from train.methods.pseudo_labels import exemplar_pools, score_against_exemplars
    from train.methods.trs import blend_predictions

    pools = exemplar_pools(exemplars.difficulty, difficulty, len(exemplars.tokens), len(tokens))
    by_reference, _, _ = score_against_exemplars(exemplars.reference, torch.from_numpy(tokens), exemplars.tokens,
                                                 exemplars.targets, pools)
    return blend_predictions(torch.from_numpy(value), by_reference, exemplars.share).numpy()


def _with_graph(graph: GraphNodes, tokens: np.ndarray, value: np.ndarray) -> np.ndarray:
    """``value`` blended with the graph's, as :meth:`train.methods.trs.TRSMethod.predict_scores` does."""
    import torch

    from train.methods.trs import blend_predictions, graph_prediction

    by_graph = graph_prediction(tokens, graph.tokens.numpy(), graph.values.numpy(), graph.neighbours, graph.features)
    return blend_predictions(torch.from_numpy(value), by_graph, graph.share).numpy()


def _ridge_values(run: TrainedRun, tokens: np.ndarray) -> np.ndarray:
    """The run's ridge on ``tokens``: each video's canonical tokens averaged per time segment (in
    the features' own units unless the run standardised them), times the weights, plus the bias
    (the ``ridge`` method's scores; a ``trs`` run's teacher ridge in standardised target units)."""
    return ridge_features(tokens, run.config.ridge, run.feature_mean, run.feature_std) @ run.ridge_weights + run.ridge_bias


def _with_ridge(run: TrainedRun, tokens: np.ndarray, value: np.ndarray) -> np.ndarray:
    """``value`` blended with the run's ridge teacher's, as :meth:`train.methods.trs.TRSMethod.predict_scores` does."""
    import torch

    from train.methods.trs import blend_predictions

    return blend_predictions(torch.from_numpy(value), torch.from_numpy(_ridge_values(run, tokens)),
                             run.ridge_share).numpy()


def predict(run: TrainedRun, cache: FeatureCache, keys: list[str] | None = None,
            difficulty: Mapping[str, float] | None = None) -> list[Prediction]:
    """Each video's predicted score (in the score's own units) and uncertainty, in ``keys`` order
    (default: every video of the cache); the cache must have been made like the run's."""
    check_features(cache, run)
    keys = list(cache.keys if keys is None else keys)
    if not keys:
        raise UserError("no videos to score", cache.path)
    missing = [key for key in keys if key not in cache]
    if missing:
        raise UserError(f"no video {missing[0]!r} in the cache" + (f" (nor {len(missing) - 1} more)"
                                                                   if len(missing) > 1 else ""), cache.path)
    scale = _difficulties(run, keys, difficulty)
    tokens = _tokens(run, cache, keys)
    if run.student is None:
        scores = _ridge_values(run, tokens) * scale  # train.methods.ridge.RidgeMethod.predict_scores
        return [Prediction(key, float(score), math.nan, math.nan) for key, score in zip(keys, scores)]
    value, log_variance = _head_outputs(run, tokens)
    if run.exemplars is not None:
        value = _with_reference(run.exemplars, tokens, value, scale if run.difficulty_aware else None)
    if run.graph is not None:
        value = _with_graph(run.graph, tokens, value)
    if run.ridge_share > 0:
        value = _with_ridge(run, tokens, value)
    # SupervisedMethod.predict_scores: de-standardise the target, then undo the difficulty division.
    scores = (value * run.target_std + run.target_mean) * scale
    stds = np.exp(0.5 * log_variance) * run.target_std * scale
    return [Prediction(key, float(score), float(std), float(log_var))
            for key, score, std, log_var in zip(keys, scores, stds, log_variance)]


def predictions_csv(predictions: list[Prediction]) -> str:
    """``key,pred,std,log_variance``: one row per video, numbers as in ``predictions.csv``."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["key", "pred", "std", "log_variance"])
    number = run_folder.format_number  # as predictions.csv writes them: every digit, empty if not finite
    for row in predictions:
        writer.writerow([row.key, number(row.score), number(row.std), number(row.log_variance)])
    return out.getvalue()


def predictions_table(predictions: list[Prediction]) -> str:
    """A fixed-width table for the terminal (4 decimals; the CSV keeps every digit)."""
    width = max([3] + [len(row.key) for row in predictions])
    lines = [f"{'key':<{width}}  {'pred':>10}  {'std':>10}  {'log_var':>8}"]
    for row in predictions:
        std = f"{row.std:10.4f}" if math.isfinite(row.std) else f"{'-':>10}"
        log_var = f"{row.log_variance:8.3f}" if math.isfinite(row.log_variance) else f"{'-':>8}"
        lines.append(f"{row.key:<{width}}  {row.score:10.4f}  {std}  {log_var}")
    return "\n".join(lines)


__all__ = ["FEATURE_FIELDS", "Exemplars", "Prediction", "TrainedRun", "check_features", "extraction_settings", "feature_config",
           "load_run", "predict", "predictions_csv", "predictions_table"]
