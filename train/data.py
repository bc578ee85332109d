"""Everything a run trains on, checked before anything is written.

:func:`prepare_data` reads the labels (MTL-AQA pickles, Fis-V lists or a CSV manifest), opens the
label-free feature cache, checks that the two agree, draws the labelled subset, and returns one
:class:`TrainingData` with the features resampled to a fixed number of tokens. Every problem with
the input (missing keys on either side, a ratio outside (0, 1], a labelled subset with a single
score value, NaN or infinite features or scores, an unknown target column) is a one-line
:class:`~aqa.errors.UserError` raised before a run folder exists.

The split protocol: the train split's labelled videos are shuffled with ``numpy``'s generator
seeded by the run seed; the first ``validation_fraction`` of them (if any) are held out with
their labels as a validation set, the next ``ratio`` of the rest (at least two) are the labelled
subset, everything else in the train split is unlabelled. The same seed gives every method the
same subset, so methods compare on identical splits.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aqa.annotations import Dataset, load_fisv, load_manifest, load_mtl_aqa
from aqa.cache import FeatureCache, open_cache
from aqa.errors import UserError
from train.config import DataSpec, TrainConfig

MAX_LISTED_KEYS = 5
# Keys of the split-draw generator besides the seed, so that other draws from the same seed differ.
_SPLIT_STREAM = 0x5B1


@dataclass
class TrainingData:
    """Features, targets and the split of one run, in one consistent order (``keys``)."""

    dataset_name: str
    target: str
    difficulty_aware: bool
    keys: list[str]
    tokens: np.ndarray  # float32 [videos, views, num_tokens, dim], standardised
    scores: np.ndarray  # float64 [videos], the target in its own units; NaN where not annotated
    difficulty: np.ndarray | None  # float64 [videos] or None
    groups: list[str]
    labelled: np.ndarray  # int indices into keys
    unlabelled: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    view_names: list[str]
    clip_counts: np.ndarray  # int [videos], before resampling
    cache_config: dict = field(default_factory=dict)
    feature_mean: np.ndarray | None = None  # the standardisation applied to `tokens`
    feature_std: np.ndarray | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[2])

    @property
    def feature_dim(self) -> int:
        return int(self.tokens.shape[3])

    def training_target(self, indices: np.ndarray) -> np.ndarray:
        """What the heads regress: the score, or score / difficulty when difficulty-aware."""
        values = self.scores[indices]
        if self.difficulty_aware:
            values = values / self.difficulty[indices]
        return values

    def to_score(self, indices: np.ndarray, predicted_target: np.ndarray) -> np.ndarray:
        """Predictions in the score's own units (undoes the difficulty-aware division)."""
        predicted_target = np.asarray(predicted_target, dtype=np.float64)
        if self.difficulty_aware:
            return predicted_target * self.difficulty[indices]
        return predicted_target

    def split_lists(self) -> dict[str, list[str]]:
        lists = {name: [self.keys[index] for index in getattr(self, name)]
                 for name in ("labelled", "unlabelled", "test")}
        if len(self.validation):
            lists["validation"] = [self.keys[index] for index in self.validation]
        return lists

    def summary(self) -> dict:
        return {
            "dataset_name": self.dataset_name,
            "target": self.target,
            "difficulty_aware": self.difficulty_aware,
            "num_tokens": self.num_tokens,
            "feature_dim": self.feature_dim,
            "views": list(self.view_names),
            "clip_counts": {"min": int(self.clip_counts.min()), "max": int(self.clip_counts.max()),
                            "median": float(np.median(self.clip_counts))},
            "n_labelled": int(len(self.labelled)),
            "n_unlabelled": int(len(self.unlabelled)),
            "n_validation": int(len(self.validation)),
            "n_test": int(len(self.test)),
            "cache_config": self.cache_config,
        }


def load_labels(config: DataSpec) -> Dataset:
    """The labels ``config`` names (a :class:`~train.config.DataSpec`; a TrainConfig is one)."""
    if config.dataset == "mtl-aqa":
        return load_mtl_aqa(config.data_root, layout="none")
    if config.dataset == "fis-v":
        return load_fisv(config.data_root)
    return load_manifest(config.manifest)


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    return shown + (f", ... ({len(keys) - MAX_LISTED_KEYS} more)" if len(keys) > MAX_LISTED_KEYS else "")


def _check_agreement(dataset: Dataset, cache: FeatureCache, used_keys: list[str]) -> None:
    cached = set(cache.keys)
    annotated = set(dataset.keys())
    missing_from_cache = sorted(key for key in used_keys if key not in cached)
    not_annotated = sorted(key for key in cached if key not in annotated)
    if missing_from_cache or not_annotated:
        parts = []
        if missing_from_cache:
            parts.append(f"{len(missing_from_cache)} annotated video(s) missing from the cache ({_listed(missing_from_cache)})")
        if not_annotated:
            parts.append(f"{len(not_annotated)} cached video(s) not in the annotations {dataset.origin} ({_listed(not_annotated)})")
        raise UserError("cache and annotations disagree: " + "; ".join(parts), cache.path)


def resolve_target(config: DataSpec, dataset: Dataset) -> str:
    target = config.target or dataset.default_target
    names = dataset.target_names()
    if target not in names:
        raise UserError(f"unknown target column {target!r} (this dataset has: {', '.join(names) or 'none'})",
                        dataset.origin)
    return target


def _resolve_difficulty(config: DataSpec, dataset: Dataset, target: str, records) -> bool:
    known = [record.difficulty for record in records]
    all_known = all(value is not None for value in known)
    if config.difficulty_aware == "off":
        return False
    if config.difficulty_aware == "auto":
        # Score / difficulty is the execution quality only for the total score (CoRe's reading);
        # an execution-only target (MTL-AQA's judges' sum) already excludes difficulty.
        if not (all_known and target == dataset.default_target):
            return False
    elif not all_known:
        missing = [record.key for record in records if record.difficulty is None]
        raise UserError(f"difficulty-aware target asked for, but {len(missing)} video(s) have no difficulty "
                        f"({_listed(missing)})", dataset.origin)
    bad = [record.key for record in records if not (math.isfinite(record.difficulty) and record.difficulty > 0)]
    if bad:
        raise UserError(f"difficulty must be a positive number for a difficulty-aware target; "
                        f"{len(bad)} video(s) are not ({_listed(bad)})", dataset.origin)
    return True


def draw_split(train_labelled_keys: list[str], ratio: float, seed: int, validation_fraction: float = 0.0):
    """``(labelled, unlabelled, validation)`` key lists from the train split's labelled keys."""
    keys = sorted(train_labelled_keys)
    generator = np.random.default_rng([int(seed), _SPLIT_STREAM])
    order = [keys[index] for index in generator.permutation(len(keys))]
    n_validation = int(round(validation_fraction * len(order)))
    validation, rest = order[:n_validation], order[n_validation:]
    n_labelled = int(round(ratio * len(rest)))
    n_labelled = min(len(rest), max(2, n_labelled))
    return rest[:n_labelled], rest[n_labelled:], validation


def _physical_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX
        return None


def check_token_memory(num_videos: int, num_views: int, num_tokens: int, dim: int, where) -> None:
    """Refuse a token count whose resampled features (one float32 array) would not fit in half of
    this machine's memory, before allocating it: a typo must not exhaust the machine."""
    needed = num_videos * num_views * num_tokens * dim * 4
    memory = _physical_memory_bytes()
    if memory and needed > memory // 2:
        raise UserError(
            f"{num_tokens} tokens per video would need {needed / 2**30:.1f} GiB for the resampled features "
            f"({num_videos} videos x {num_views} views x {num_tokens} tokens x {dim} channels, float32), more than "
            f"half of this machine's {memory / 2**30:.1f} GiB; use fewer (--set head.num_tokens=N or head.max_tokens=N)",
            where)


# Training standardises its targets: their squares must stay well inside float64. Real scores are
# between about 1e-3 and 1e4; beyond these bounds the arithmetic overflows or keeps no digits.
_LARGEST_SCORE = 1e100
_SMALLEST_SCORE_SPREAD = 1e-100


def check_score_scale(targets: np.ndarray, num_labelled: int, target: str, origin) -> None:
    """Refuse scores too large or too close together for training to compute with (``targets``:
    what the heads regress, in ``keys`` order, the labelled videos first; NaN where unscored)."""
    known = targets[np.isfinite(targets)]
    largest = float(np.abs(known).max(initial=0.0))
    if largest > _LARGEST_SCORE:
        raise UserError(f"the {target} values reach {largest:.3g}, beyond what training can compute with "
                        f"(|value| <= {_LARGEST_SCORE:g}); rescale the scores", origin)
    labelled = targets[:num_labelled]
    span = float(labelled.max() - labelled.min())  # no overflow: both are within the bound above
    if span < _SMALLEST_SCORE_SPREAD:
        raise UserError(f"the labelled {target} values span only {span:.3g} (max - min), too little for training "
                        f"to compute with (at least {_SMALLEST_SCORE_SPREAD:g}); rescale the scores", origin)


def training_statistics(tokens: np.ndarray, training: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of ``tokens`` ``[videos, views, T, D]`` over the ``training`` videos'
    canonical view: label-free, and without the validation or test videos, so the same transform
    serves every method. A channel that does not vary keeps std 1."""
    canonical = tokens[training, 0].reshape(-1, tokens.shape[-1]).astype(np.float64)
    mean = canonical.mean(axis=0)
    std = canonical.std(axis=0)
    std = np.where(std > 1e-6 * max(1.0, float(std.max(initial=0.0))), std, 1.0)
    return mean, std


def standardise_tokens(tokens: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(tokens - mean) / std`` per channel, in place on float32 ``tokens`` (returned): the one
    transform training applies, shared with :mod:`train.predict` so new videos get the same numbers."""
    tokens -= mean.astype(np.float32)
    tokens /= std.astype(np.float32)
    return tokens


def resample_tokens(features: np.ndarray, num_tokens: int) -> np.ndarray:
    """``[views, clips, dim]`` -> ``[views, num_tokens, dim]``: average pooling over equal
    time spans when there are more clips, linear interpolation when there are fewer."""
    views, clips, dim = features.shape
    if clips == num_tokens:
        return features
    if clips > num_tokens:
        # Adaptive average pooling: token t averages clips floor(t*C/T) .. ceil((t+1)*C/T) - 1.
        out = np.empty((views, num_tokens, dim), dtype=np.float32)
        for token in range(num_tokens):
            start = (token * clips) // num_tokens
            stop = -((-(token + 1) * clips) // num_tokens)
            out[:, token] = features[:, start:stop].mean(axis=1)
        return out
    positions = np.linspace(0, clips - 1, num_tokens) if clips > 1 else np.zeros(num_tokens)
    low = np.floor(positions).astype(int)
    high = np.minimum(low + 1, clips - 1)
    weight = (positions - low).astype(np.float32)[None, :, None]
    return (features[:, low] * (1 - weight) + features[:, high] * weight).astype(np.float32)


def segment_means(tokens: np.ndarray, segments: int) -> np.ndarray:
    """``[videos, num_tokens, dim]`` -> ``[videos, n * dim]``: the tokens cut in time into ``n =
    min(segments, num_tokens)`` contiguous runs of nearly equal length (the earlier runs one token
    longer where they do not divide), each averaged, concatenated in time order. ``segments = 1``
    is the plain mean over time. Judges score what happens when (a dive's entry, a program's
    second half), which a single mean over the whole video blurs."""
    pieces = np.array_split(np.asarray(tokens), min(int(segments), tokens.shape[1]), axis=1)
    return np.concatenate([piece.mean(axis=1) for piece in pieces], axis=1)


def ridge_features(tokens: np.ndarray, ridge, feature_mean: np.ndarray, feature_std: np.ndarray) -> np.ndarray:
    """What ridge regresses on: float64 ``[videos, segments * dim]`` from the canonical standardised
    tokens ``[videos, num_tokens, dim]`` (``ridge`` is the run's RidgeConfig), mean-pooled per time
    segment, in the features' own units unless ``ridge.standardise``."""
    pooled = segment_means(tokens, ridge.segments).astype(np.float64)
    if not ridge.standardise:
        # Pooling is per channel and linear, so each segment's mean is undone like one token.
        dim = len(feature_mean)
        pooled = (pooled.reshape(len(pooled), -1, dim) * feature_std + feature_mean).reshape(len(pooled), -1)
    return pooled


def prepare_data(config: TrainConfig) -> TrainingData:
    """Read, check and align labels and features; draw the split. Writes nothing.

    ``config`` is a validated one (:meth:`TrainConfig.validate`, which the entry points run):
    the data fields say which data, ``head.num_tokens`` / ``head.max_tokens`` how it is resampled."""
    dataset = load_labels(config)
    target = resolve_target(config, dataset)
    features_path = Path(config.features)
    cache = open_cache(features_path)

    records = [record for record in dataset.records if record.split in ("train", "test")]
    if not records:
        raise UserError("no video has a train or test split (add a split column)", dataset.origin)
    test_records = [record for record in records if record.split == "test"]
    if not test_records:
        raise UserError("no video is in the test split", dataset.origin)
    unscored_test = [record.key for record in test_records if target not in record.targets]
    if unscored_test:
        raise UserError(f"{len(unscored_test)} test video(s) have no {target} score ({_listed(unscored_test)})",
                        dataset.origin)
    _check_agreement(dataset, cache, [record.key for record in records])
    difficulty_aware = _resolve_difficulty(config, dataset, target, records)

    train_labelled = [record.key for record in records if record.split == "train" and target in record.targets]
    train_unscored = [record.key for record in records if record.split == "train" and target not in record.targets]
    if len(train_labelled) < 2:
        raise UserError(f"the train split has {len(train_labelled)} video(s) with a {target} score; at least 2 are needed",
                        dataset.origin)
    labelled_keys, unlabelled_keys, validation_keys = draw_split(train_labelled, config.ratio, config.seed,
                                                                 config.validation_fraction)
    unlabelled_keys = sorted(unlabelled_keys + train_unscored)
    by_key = dataset.by_key()
    labelled_scores = {by_key[key].targets[target] for key in labelled_keys}
    if len(labelled_scores) < 2:
        raise UserError(f"the labelled subset ({len(labelled_keys)} videos, ratio {config.ratio}, seed {config.seed}) "
                        f"has a single {target} value ({labelled_scores.pop()}): nothing to learn a ranking from; "
                        "use a larger --ratio or another --seed", dataset.origin)

    keys = sorted(labelled_keys) + unlabelled_keys + sorted(validation_keys) + sorted(r.key for r in test_records)
    raw = cache.load_all(keys)
    bad_features = [key for key in keys if not np.isfinite(raw[key]).all()]
    if bad_features:
        raise UserError(f"{len(bad_features)} video(s) have NaN or infinite features ({_listed(bad_features)})", features_path)
    shapes = {raw[key].shape[0] for key in keys}
    if len(shapes) != 1:
        raise UserError(f"videos have different numbers of views ({sorted(shapes)})", features_path)
    clip_counts = np.array([raw[key].shape[1] for key in keys])
    if clip_counts.min() < 1:
        raise UserError("a video has no clips", features_path)
    num_tokens = config.head.num_tokens or int(min(config.head.max_tokens, max(1, round(float(np.median(clip_counts))))))

    check_token_memory(len(keys), int(next(iter(shapes))), num_tokens, int(raw[keys[0]].shape[2]), features_path)
    tokens = np.stack([resample_tokens(raw[key], num_tokens) for key in keys]).astype(np.float32, copy=False)
    del raw
    scores = np.array([by_key[key].targets.get(target, math.nan) for key in keys], dtype=np.float64)
    difficulty = None
    if difficulty_aware:
        difficulty = np.array([by_key[key].difficulty for key in keys], dtype=np.float64)
    check_score_scale(scores / difficulty if difficulty_aware else scores, len(labelled_keys), target, dataset.origin)

    n_labelled, n_unlabelled, n_validation = len(labelled_keys), len(unlabelled_keys), len(validation_keys)
    labelled = np.arange(n_labelled)
    unlabelled = np.arange(n_labelled, n_labelled + n_unlabelled)
    validation = np.arange(n_labelled + n_unlabelled, n_labelled + n_unlabelled + n_validation)
    test = np.arange(n_labelled + n_unlabelled + n_validation, len(keys))

    mean, std = training_statistics(tokens, np.concatenate([labelled, unlabelled]))
    standardise_tokens(tokens, mean, std)

    view_names = cache.view_names
    if len(view_names) != tokens.shape[1]:
        view_names = [f"view{index}" for index in range(tokens.shape[1])]
    # The name the features were recorded under (e.g. "synth-dive" for the synthetic dives in the
    # MTL-AQA layout) says which data this is better than the annotation format does.
    recorded = cache.config.get("dataset")
    dataset_name = recorded.get("name") if isinstance(recorded, dict) and recorded.get("name") else dataset.name
    return TrainingData(
        dataset_name=dataset_name,
        target=target,
        difficulty_aware=difficulty_aware,
        keys=keys,
        tokens=tokens,
        scores=scores,
        difficulty=difficulty,
        groups=[by_key[key].group or "" for key in keys],
        labelled=labelled,
        unlabelled=unlabelled,
        validation=validation,
        test=test,
        view_names=view_names,
        clip_counts=clip_counts,
        cache_config=dict(cache.config),
        feature_mean=mean.astype(np.float32),
        feature_std=std.astype(np.float32),
    )
