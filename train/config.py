"""Typed configuration of one training run, its presets, and ``--set`` overrides.

A :class:`TrainConfig` says everything that determines a run's numbers: where the features and
labels are, the target, the method, the labelled ratio and seed, and every hyper-parameter. It is
saved as the run folder's ``config.json`` (with a ``resolved`` section the run fills in: the
target actually used, the token count, the cache's recorded configuration, subset sizes), and a
run can be repeated from it (``pipeline.py train --config RUN/config.json``).

Two presets:

* ``default``: small heads chosen on validation splits carved from the Fis-V training split
  (``bench/tune_fisv.py``), for accuracy per CPU-second;
* ``paper``: the TRS paper code's head (MLP-Mixer depth 8, token hidden 512, channel hidden
  2048 over 1024-d tokens) and 150 labelled epochs (the semi-supervised methods add their
  unlabelled epochs after them).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from aqa.config import from_dict, to_dict
from aqa.errors import UserError

METHODS = ("trs", "supervised", "mean-teacher", "pseudo-label", "ridge")
SEMI_SUPERVISED_METHODS = ("trs", "mean-teacher", "pseudo-label")
PRESETS = ("default", "paper")
DATASET_KINDS = ("mtl-aqa", "fis-v", "manifest")
DIFFICULTY_MODES = ("auto", "on", "off")


@dataclass
class HeadConfig:
    """The student/teacher head: an MLP-Mixer over a fixed number of clip tokens."""

    # Videos with other clip counts are resampled (average pooling / linear interpolation) to
    # this many tokens; 0 means the median clip count of the dataset, capped at max_tokens.
    num_tokens: int = 0
    max_tokens: int = 16
    dim: int = 64  # token width after the input projection
    depth: int = 1  # mixer blocks
    token_hidden: int = 64  # hidden width of the token-mixing MLP
    channel_hidden: int = 128  # hidden width of the channel-mixing MLP
    dropout: float = 0.1
    input_dropout: float = 0.0  # dropout on the (standardised) input features
    input_norm: bool = True  # LayerNorm over each token's features before the projection


@dataclass
class ReferenceConfig:
    """The reference network: cross-attention from a video's tokens to an exemplar's tokens."""

    dim: int = 64
    heads: int = 4
    dropout: float = 0.1
    epochs: int = 150  # pairwise training epochs during burn-in (an epoch: n_labelled pairs)
    # Train on (a, b) and (b, a) at once and predict (g(a,b) - g(b,a)) / 2, so that the relative
    # score is antisymmetric by construction.
    antisymmetric: bool = True
    exemplars: int = 32  # exemplars per unlabelled video at each refresh (all labelled if fewer)


@dataclass
class ViewConfig:
    """Weak and strong views: cached views plus feature-space perturbations (in feature std units)."""

    use_cached_views: bool = True  # draw a random cached view (flip, shift, ...) for each sample
    weak_noise: float = 0.0
    strong_token_dropout: float = 0.15  # share of tokens zeroed
    strong_noise: float = 0.3  # Gaussian noise added to standardised features
    strong_channel_dropout: float = 0.1  # share of feature channels zeroed (same for all tokens)


@dataclass
class OptimConfig:
    """Optimisation. An epoch is one pass over the labelled subset (supervised, burn-in) or
    over the unlabelled videos (semi-supervised phase)."""

    # Labelled-only epochs: the whole of `supervised`, and the burn-in of the semi-supervised
    # methods, which therefore start from exactly the model `supervised` ends with (same seed).
    epochs: int = 100
    batch_size: int = 16
    unlabelled_batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    grad_clip: float = 5.0
    # Epochs are short with few labels; this many optimiser steps at least per supervised epoch.
    min_steps_per_epoch: int = 3


@dataclass
class SemiConfig:
    """Semi-supervised phases (trs, mean-teacher, pseudo-label)."""

    semi_epochs: int = 15  # epochs over the unlabelled videos after the burn-in (optim.epochs)
    unlabelled_weight: float = 1.0
    ema_decay: float = 0.99
    # trs switches (ablations)
    use_reference: bool = True
    use_memory: bool = True
    use_confidence: bool = True
    use_graph: bool = True
    mc_samples: int = 4  # MC-dropout passes of the teacher per refresh
    # Confidence memories keep each video's most confident output; stored confidences decay by
    # this factor each epoch so that a better later output can replace an early lucky one.
    memory_decay: float = 0.9
    # Graph refinement of the fused pseudo-labels over a k-nearest-neighbour graph of all
    # training videos (label-free): minimise sum c_i (p_i - q_i)^2 + strength * sum_ij w_ij (p_i - p_j)^2.
    # k = 3, strength 3: best of k in {3, 5} x strength in {1, 3} on Fis-V validation splits.
    graph_neighbours: int = 3
    graph_strength: float = 3.0
    # Build the graph from the per-channel standardised features (True) or the cached ones (False).
    graph_standardised: bool = True
    # "tokens": similarity = mean over token positions of the cosine similarity of time-aligned
    # tokens; "pooled": cosine similarity of mean-pooled features.
    graph_features: str = "tokens"
    max_confidence_weight: float = 3.0  # per-video loss weights are confidence / mean, clipped


@dataclass
class RidgeConfig:
    """Ridge regression on mean-pooled, standardised features (closed form)."""

    # Chosen on Fis-V validation splits (bench/tune_fisv.py): 100 beat 1, 10, 300, 1000 and the
    # leave-one-out choice. 0: choose by leave-one-out error on the labelled subset.
    alpha: float = 100.0
    alphas: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
    # Pool the per-channel standardised features (True) or the features as cached (False).
    standardise: bool = True


@dataclass
class TrainConfig:
    """Everything that determines one run (saved as ``config.json``)."""

    features: str = ""
    dataset: str = "mtl-aqa"  # mtl-aqa, fis-v or manifest
    data_root: str | None = None
    manifest: str | None = None
    target: str | None = None  # None: the dataset's default target
    difficulty_aware: str = "auto"  # auto: on where every video's difficulty is known
    method: str = "trs"
    preset: str = "default"
    ratio: float = 0.2
    seed: int = 0
    # Share of the train split held out as a validation set (true labels, never trained on):
    # for choosing hyper-parameters without the test split.
    validation_fraction: float = 0.0
    keep_epoch_predictions: bool = False
    head: HeadConfig = field(default_factory=HeadConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    views: ViewConfig = field(default_factory=ViewConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    semi: SemiConfig = field(default_factory=SemiConfig)
    ridge: RidgeConfig = field(default_factory=RidgeConfig)
    # Filled in by the run (never read back as input): what the options resolved to.
    resolved: dict = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        """What a run is, for finished-run checks: the config without what the run resolved."""
        data = to_dict(self)
        data.pop("resolved", None)
        return data


def preset_config(preset: str, method: str) -> TrainConfig:
    """The hyper-parameters of ``preset`` for ``method`` (data fields left empty)."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    if method not in METHODS:
        raise UserError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
    config = TrainConfig(method=method, preset=preset)
    # The baselines tuned with the same care as trs, on Fis-V validation splits
    # (bench/tune_fisv.py, 10 seeds x TES/PCS x 10 %/25 %): both lose to supervised the longer
    # and the harder they train on their own predictions, so the best settings are light ones.
    if method == "mean-teacher":
        config.semi = dataclasses.replace(config.semi, semi_epochs=5, ema_decay=0.999)
    elif method == "pseudo-label":
        config.semi = dataclasses.replace(config.semi, unlabelled_weight=0.1)
    if preset == "paper":
        # The paper code's head: 1024-d tokens, mixer depth 8, token hidden 512, channel hidden
        # 2048; 150 epochs in all.
        config.head = HeadConfig(num_tokens=0, max_tokens=16, dim=1024, depth=8, token_hidden=512,
                                 channel_hidden=2048, dropout=0.1)
        config.reference = ReferenceConfig(dim=1024, heads=8, dropout=0.1, epochs=50)
        config.optim = OptimConfig(epochs=150, batch_size=16, unlabelled_batch_size=32, lr=1e-4, weight_decay=1e-2)
        config.semi = dataclasses.replace(config.semi, semi_epochs=50)
    return config


def _field_type(cls, name: str):
    return typing.get_type_hints(cls)[name]


def _parse_value(text: str, hint, where: str):
    origin = typing.get_origin(hint)
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        if text.lower() in ("none", "null", ""):
            return None
        hint = args[0]
        origin = typing.get_origin(hint)
    try:
        if hint is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{text!r} is not a boolean")
        if hint is int:
            return int(text)
        if hint is float:
            return float(text)
        if hint is str:
            return text
        if origin is tuple:
            (item_type, *_rest) = typing.get_args(hint)
            return tuple(_parse_value(part.strip(), item_type, where) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise UserError(f"--set {where}: {error}") from None
    raise UserError(f"--set {where}: cannot set a field of type {hint}")


def apply_overrides(config: TrainConfig, assignments: list[str] | tuple[str, ...]) -> TrainConfig:
    """Apply ``section.field=value`` assignments (``--set optim.lr=3e-4``) to a copy of ``config``."""
    data = to_dict(config)
    for assignment in assignments:
        if "=" not in assignment:
            raise UserError(f"--set {assignment!r}: expected SECTION.FIELD=VALUE (e.g. optim.lr=3e-4)")
        path, text = assignment.split("=", 1)
        names = path.strip().split(".")
        cls, node = TrainConfig, data
        for depth, name in enumerate(names):
            known = {item.name for item in dataclasses.fields(cls)}
            if name not in known or name == "resolved":
                choices = ", ".join(sorted(known - {"resolved"}))
                raise UserError(f"--set {path}: no field {name!r} (fields here: {choices})")
            hint = _field_type(cls, name)
            if depth < len(names) - 1:
                if not dataclasses.is_dataclass(hint):
                    raise UserError(f"--set {path}: {name!r} has no sub-fields")
                cls, node = hint, node[name]
            else:
                if dataclasses.is_dataclass(hint):
                    raise UserError(f"--set {path}: {name!r} is a section; set one of its fields")
                node[name] = _parse_value(text.strip(), hint, path)
    return from_dict(TrainConfig, data)


def config_from_json(data: dict, source) -> TrainConfig:
    """A TrainConfig from a saved ``config.json`` (its ``resolved`` section is dropped)."""
    if not isinstance(data, dict):
        raise UserError("not a training configuration (expected a JSON object)", source)
    data = dict(data)
    data.pop("resolved", None)
    try:
        return from_dict(TrainConfig, data, source)
    except TypeError as error:
        raise UserError(f"not a training configuration ({error})", source) from None


def build_config(config_file=None, overrides=(), **options) -> TrainConfig:
    """The run's TrainConfig from command-line options.

    Without ``config_file``: the preset of ``method`` (default ``trs``, preset ``default``) with
    the given data fields. With it (a saved ``config.json``): that configuration, with only the
    options given explicitly (not None) replaced. ``overrides`` (``--set``) apply last.
    """
    from aqa.config import read_json

    given = {name: value for name, value in options.items() if value is not None}
    if config_file:
        config = config_from_json(read_json(config_file), config_file)
    else:
        config = preset_config(given.get("preset", "default"), given.get("method", "trs"))
        if "dataset" not in given:
            given["dataset"] = "manifest" if given.get("manifest") else "mtl-aqa"
    unknown = sorted(set(given) - {item.name for item in dataclasses.fields(TrainConfig)})
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}")
    config = dataclasses.replace(config, **given)
    return apply_overrides(config, list(overrides))
