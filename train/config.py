"""Typed configuration of one training run, its presets, and ``--set`` overrides.

A :class:`TrainConfig` says everything that determines a run's numbers, in two parts: *which
data* (:class:`DataSpec`: the features and labels, the target, the labelled ratio and seed, the
validation share) and *how to train on it* (the method, its preset, every hyper-parameter). It is
saved as the run folder's ``config.json`` (with a ``resolved`` section the run fills in: the
target actually used, the token count, the cache's recorded configuration, subset sizes), and a
run can be repeated from it (``pipeline.py train --config RUN/config.json``). ``config.json`` is flat: the data fields sit
beside ``method`` and ``preset`` at its top level, as they always have.

Two presets:

* ``default``: small heads chosen on validation splits carved from the Fis-V training split
  (``bench/tune_fisv.py``), for accuracy per CPU-second;
* ``paper``: the TRS paper code's head (MLP-Mixer depth 8, token hidden 512, channel hidden
  2048 over 1024-d tokens) and 150 labelled epochs (the semi-supervised methods add their
  unlabelled epochs after them).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from aqa.config import CheckedConfig, ConfigValueError, describe_type, from_dict, require, to_dict
from aqa.config import validate as validate_sections
from aqa.errors import UserError
from train.search_spaces import Choice, FloatRange, IntRange, SearchDimension

# The choices are types, so that a saved config.json is checked against them like any other value.
Method = Literal["trs", "supervised", "mean-teacher", "pseudo-label", "ridge"]
Preset = Literal["default", "paper"]
DatasetKind = Literal["mtl-aqa", "fis-v", "manifest"]
DifficultyMode = Literal["auto", "on", "off"]
GraphFeatures = Literal["tokens", "pooled"]
Fusion = Literal["precision", "balanced"]
PseudoSpread = Literal["as_is", "std", "quantiles"]
GateScale = Literal["spearman", "fisher"]
TeacherKind = Literal["ema", "ridge", "auto"]
METHODS = typing.get_args(Method)
PRESETS = typing.get_args(Preset)
DATASET_KINDS = typing.get_args(DatasetKind)
DIFFICULTY_MODES = typing.get_args(DifficultyMode)
# Real videos give tens of clips (Fis-V's Swin features: 34-36, MTL-AQA: 10); a token count in
# the millions is a typo that would try to allocate tens of gigabytes of resampled features.
MAX_TOKENS = 4096


def _positive(config, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        require(value > 0, name, f"must be positive, got {value!r}")


def _non_negative(config, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        require(value >= 0, name, f"must not be negative, got {value!r}")


def _share(config, *names: str, one_allowed: bool = False) -> None:
    """Dropout-like shares: in [0, 1) (a dropout of 1 zeroes everything), or [0, 1] if allowed."""
    for name in names:
        value = getattr(config, name)
        if one_allowed:
            require(0 <= value <= 1, name, f"must be in [0, 1], got {value!r}")
        else:
            require(0 <= value < 1, name, f"must be in [0, 1), got {value!r}")


@dataclass
class HeadConfig(CheckedConfig):
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

    def check(self) -> None:
        _non_negative(self, "num_tokens")
        _positive(self, "max_tokens", "dim", "depth", "token_hidden", "channel_hidden")
        for name in ("num_tokens", "max_tokens"):
            value = getattr(self, name)
            require(value <= MAX_TOKENS, name, f"must be at most {MAX_TOKENS} (videos have tens of clips), got {value!r}")
        _share(self, "dropout", "input_dropout")


@dataclass
class ReferenceConfig(CheckedConfig):
    """The reference network: cross-attention from a video's tokens to an exemplar's tokens."""

    dim: int = 64
    heads: int = 4
    dropout: float = 0.1
    # Pairwise training epochs during burn-in (an epoch: n_labelled pairs). 50: with the reference
    # learning in the semi-supervised phase (below), 50 burn-in epochs were as good as 150 on Fis-V
    # validation splits and cheaper (docs/research/issue11-2026-12-01.md, sessions 6-7).
    epochs: int = 50
    # Train on (a, b) and (b, a) at once and predict (g(a,b) - g(b,a)) / 2, so that the relative
    # score is antisymmetric by construction.
    antisymmetric: bool = True
    exemplars: int = 32  # exemplars per unlabelled video at each refresh (all labelled if fewer)
    # Keep training the reference in every semi-supervised epoch, after the refresh, on pairs
    # (training video, labelled exemplar): labelled videos at their labels, unlabelled ones at
    # their current pseudo-labels (loss weighted by the pseudo-label's weight). false: the
    # reference is frozen after its burn-in (the paper's reading, and the `paper` preset).
    semi_training: bool = True
    # Share of the reference network in the test-time prediction: (1 - share) * student + share *
    # reference (each test video against every labelled exemplar of its pool). 0: the student
    # alone (the paper's reading, and the `paper` preset). 0.5: on fresh Fis-V validation splits
    # the learning reference and the student averaged beat the student alone in all four cells
    # (research log, session 7).
    test_share: float = 0.5

    def check(self) -> None:
        _positive(self, "dim", "heads", "exemplars")
        _non_negative(self, "epochs")
        _share(self, "dropout")
        _share(self, "test_share", one_allowed=True)
        require(self.dim % self.heads == 0, "dim",
                f"must be a multiple of reference.heads ({self.heads}), got {self.dim}")


@dataclass
class ViewConfig(CheckedConfig):
    """Weak and strong views: cached views plus feature-space perturbations (in feature std units)."""

    use_cached_views: bool = True  # draw a random cached view (flip, shift, ...) for each sample
    weak_noise: float = 0.0
    strong_token_dropout: float = 0.15  # share of tokens zeroed
    strong_noise: float = 0.3  # Gaussian noise added to standardised features
    strong_channel_dropout: float = 0.1  # share of feature channels zeroed (same for all tokens)

    def check(self) -> None:
        _non_negative(self, "weak_noise", "strong_noise")
        _share(self, "strong_token_dropout", "strong_channel_dropout")


@dataclass
class OptimConfig(CheckedConfig):
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
    # Masked-clip recovery (train.models.MaskedRecovery) as a second loss of every labelled-only
    # step, with this weight, on recovery_batch labelled videos drawn from its own seed stream;
    # 0: off, the training of every recorded table. A regulariser of the head, not a use of the
    # unlabelled videos (drawn from all training videos it helped less): on validation splits
    # (research log, session 14; bench/masked_pretrain_probe.py) weight 1 gave `supervised`
    # +0.014 (seeds 10-19) and +0.013 (seeds 20-29) over the dives and Fis-V's four cells, per-cell
    # means from -0.008 to +0.038; `trs` +0.004 (dives +0.024, Fis-V -0.007 to +0.006). Off until
    # every table is re-measured with it. The semi-supervised phases and trs's gate fold students
    # train without it.
    recovery_weight: float = 0.0
    recovery_mask_share: float = 0.5  # share of each video's clip tokens masked (at least one)
    recovery_batch: int = 32

    def check(self) -> None:
        _non_negative(self, "epochs", "weight_decay", "grad_clip", "min_steps_per_epoch",
                      "recovery_weight")  # grad_clip 0: off
        _positive(self, "batch_size", "unlabelled_batch_size", "lr", "recovery_batch")
        require(0 < self.recovery_mask_share < 1, "recovery_mask_share",
                f"must be between 0 and 1 (a share of the clip tokens), got {self.recovery_mask_share!r}")


@dataclass
class SemiConfig(CheckedConfig):
    """Semi-supervised phases (trs, mean-teacher, pseudo-label)."""

    semi_epochs: int = 15  # epochs over the unlabelled videos after the burn-in (optim.epochs)
    unlabelled_weight: float = 1.0
    ema_decay: float = 0.99
    # trs switches (ablations)
    use_reference: bool = True
    use_memory: bool = True
    use_confidence: bool = True
    use_graph: bool = True
    # What the "teacher" pseudo-label source is: "ema", the EMA of the student with MC dropout (the
    # paper's); "ridge", a closed-form ridge on the labelled videos' time-segment means with the
    # run's `ridge` section (train.methods.pseudo_labels.RidgeTeacherSource); "auto", decided at
    # the gate: "ridge" where the graph guard drops the graph, else "ema" (without a computed
    # guard, e.g. semi.gate=false: "ema"). "auto" since trs version 9, adopted by a rule written
    # before its runs (research log, session 20: validation seeds 30-39, dives +0.078 and +0.046 per split at 10 and 20 % labels, Fis-V untouched: no split dropped).
    teacher: TeacherKind = "auto"
    mc_samples: int = 4  # MC-dropout passes of the teacher per refresh
    # Share of the ridge (the `ridge` teacher's closed form on the labelled videos) in the EMA
    # teacher's pseudo-labels, where the teacher is the EMA teacher: values (1 - share) * EMA +
    # share * ridge, confidences the EMA teacher's (one linear fit has no per-video spread). Two
    # unlike learners (a token-mixing head, a linear model on segment means) err differently, so
    # their mean should be the better teacher. 0: the EMA teacher alone (trs up to version 11, and
    # the `paper` preset). 0.5 since trs version 12, adopted by a rule written before its runs
    # (research log, session 24: validation seeds 130-149, dives +0.006 per run, Fis-V +0.001).
    teacher_ridge_share: float = 0.5
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
    graph_features: GraphFeatures = "tokens"
    # Share of the graph in the test-time prediction, when the run's pseudo-labels went through
    # the graph (the gate kept it): each scored video is placed on the graph, and its
    # `graph_neighbours` most similar training videos' values (labels, and the last refined
    # pseudo-labels) are averaged; the prediction is (1 - share) * (student, blended with the
    # reference) + share * that mean. 0: off (the `paper` preset). 0.5: on Fis-V validation splits
    # it beat the run's prediction without it in all four cells, on the seeds it was chosen on
    # (10-19) and on seeds 0-9 (+0.007 to +0.034 per cell over 20 seeds; bench/graph_share_probe.py).
    graph_test_share: float = 0.5
    # Share of the ridge in the test-time prediction where the run's teacher is the ridge
    # (`teacher` resolved to "ridge": on features where the graph guard dropped the graph): the
    # prediction is (1 - share) * (student, blended with the reference and the graph) + share *
    # the ridge the teacher fitted on the labelled videos. 0: off (the `paper` preset). 0.5 since
    # trs version 10, adopted by a rule written before its runs (research log, session 22): the
    # student does not reach the ridge it learns from on the dives. Where the teacher is the EMA
    # teacher (Fis-V) it changes nothing.
    ridge_test_share: float = 0.5
    max_confidence_weight: float = 3.0  # per-video loss weights are confidence / mean, clipped
    # How the sources' pseudo-labels are fused: "precision": weighted by their confidences as
    # they are (1 / variance; a source with larger variances counts less everywhere);
    # "balanced": each source's confidences divided by their mean first, so that every source
    # weighs the same on average and confidences only move weight between videos.
    # "balanced" by default since the reference learns in the semi-supervised phase: by raw
    # precision the teacher dominates everywhere (the reference's spread over 32 exemplars is large).
    fusion: Fusion = "balanced"
    # The pseudo-labels' spread, after the graph: "as_is"; "std": stretched (about their mean) to
    # the labelled targets' standard deviation and moved to their mean; "quantiles": each
    # pseudo-label replaced by the labelled targets' quantile at its rank. Pseudo-labels are
    # shrunk towards the mean (their largest errors are on the videos far from it; README,
    # "Do the confidences rank pseudo-label error?"), so on unlabelled videos the student is
    # otherwise pulled towards the mean that the labels do not pull it to.
    pseudo_spread: PseudoSpread = "as_is"
    # trs's label-only gate (train/methods/gate.py), after the burn-in: k-fold cross-fitting on
    # the labelled videos compares the configured pseudo-labels with teacher-only ones and with
    # the graph off, and keeps the configured option unless another beats its out-of-fold
    # Spearman by more than a margin (gate_scale below). false: today's trs exactly.
    gate: bool = True
    gate_folds: int = 3  # folds of the labelled videos (fewer when there are too few labels)
    # Cross-fittings, each dealing new folds, their pooled estimates averaged: 3 by default. One
    # cross-fitting's estimates are noisy enough to flip the choice both ways (validation splits:
    # it kept a graph that cost 0.17 on the demo's dives and dropped ones that helped on Fis-V);
    # three cost 16 s more at MTL-AQA size (trs 55 s instead of 39 s, bench/bench_train_time.py).
    # Their 3 x gate_folds fold jobs run in forked one-thread workers when the run has several
    # threads, started beside the burn-in (train.methods.gate.start_gate_early): burn-in, reference
    # and gate 34 -> 29 s at MTL-AQA size, the run 0.88x (bench/bench_train_time.py, BENCHMARKS.md).
    gate_repeats: int = 3
    # Epochs of the fold models (the burn-in recipe otherwise), at most the burn-in's; 0: all of
    # optim.epochs / reference.epochs.
    # 30 by default (burn-in: 100 / 150), to keep the default trs run within 60 s at MTL-AQA size
    # on 2 cores: 50 / 50 made the gate 18 s and the run 61.5 s (bench/bench_train_time.py).
    gate_epochs: int = 30  # labelled epochs of each fold student
    gate_reference_epochs: int = 30  # pairwise epochs of each fold reference
    # None: the graph is one option among the others (kept as the default unless another beats it
    # by the margin). A number g: the graph must earn its place: its best out-of-fold estimate must
    # beat the best without it by more than g margins (on gate_scale), or the gate chooses without it.
    gate_graph_margin: float | None = None
    # None: the margin rule above (pooled estimates, gate_scale). A number z: the paired
    # rule: per held-out fold of every cross-fitting, an option's Spearman minus the default's on
    # the same videos; an option replaces the default when the mean of those differences exceeds
    # z standard errors of it (sd / sqrt(folds x repeats)), the largest such mean winning. Off:
    # on validation splits it was no better than the margin rule (z = 1, 1.5 worse; research
    # log, session 4).
    gate_paired_z: float | None = None
    # The scale the margin rule (and the graph's own margin) compares estimates on. "fisher":
    # atanh of the estimates, margin sqrt(1.06 / (n - 3)), the spread of a Spearman on Fisher's z
    # scale (Fieller, Hartley and Pearson 1957), which unlike 1/sqrt(n) holds for correlations far
    # from zero. "spearman": the estimates as they are, margin 1/sqrt(n) (the rule before
    # 2026-12-06). Chosen under a rule written down before the outcomes (research log, session 13;
    # bench/gate_rule_study.py --rule fisher): on 100 validation splits of the demo's dives it drops
    # 5 of the 7 graphs the old rule kept (each +0.22 to +0.28 validation rho; +0.0124 per split),
    # and on 80 Fis-V validation splits it chooses as the old rule did in every one. The paired
    # rule (gate_paired_z) compares per-fold differences and ignores the scale.
    gate_scale: GateScale = "fisher"
    # The graph guard (train/methods/graph_guard.py), before the gate's fold jobs: 10 repeats of
    # 5-fold cross-fitting of a ridge on the labelled videos' 3-segment means with and without a
    # mild graph penalty; where the graph loses out of fold by more than graph_guard_margin
    # (Spearman), the gate chooses among the options without the graph. Adopted by a rule
    # pre-registered before its runs (trs version 8; research log, session 19): on validation
    # splits it dropped the graph in 18 of 20 dive splits (+0.047 and +0.040 per split at 10 and
    # 20 % labels) and in none of 40 Fis-V splits. false: trs version 7's gate.
    graph_guard: bool = True
    # Negative: stricter, the graph must gain more than -margin out of fold to stay.
    graph_guard_margin: float = 0.1
    graph_guard_repeats: int = 10
    # Where the guard kept the graph although its signal was below 0, and semi.teacher is "auto":
    # the gate also scores the ridge teacher on its own folds (train.methods.gate.ridge_check) and,
    # where the ridge's out-of-fold Spearman beats the chosen option's by more than
    # gate_ridge_margin gate margins (on gate_scale), the ridge teaches and the graph is dropped,
    # as where the guard drops it. On since trs version 11, adopted by a rule written before its
    # runs (research log, session 23: validation seeds 100-119, dives +0.029 / +0.008 per split at
    # 10 / 20 % labels, Fis-V's 80 runs -0.0003); half a margin failed its own rule on seeds 90-99
    # (Fis-V TES 10 % -0.029). false: trs version 10.
    gate_ridge_check: bool = True
    gate_ridge_margin: float = 1.0

    def check(self) -> None:
        _non_negative(self, "semi_epochs", "unlabelled_weight", "graph_strength", "gate_epochs",
                      "gate_reference_epochs")
        _positive(self, "mc_samples", "graph_neighbours", "max_confidence_weight", "gate_repeats",
                  "graph_guard_repeats")
        require(math.isfinite(self.gate_ridge_margin), "gate_ridge_margin",
                f"must be a finite number of gate margins, got {self.gate_ridge_margin!r}")
        require(math.isfinite(self.graph_guard_margin), "graph_guard_margin",
                f"must be a finite difference of Spearman correlations, got {self.graph_guard_margin!r}")
        require(self.gate_folds >= 2, "gate_folds", f"must be at least 2, got {self.gate_folds!r}")
        require(self.gate_graph_margin is None or math.isfinite(self.gate_graph_margin), "gate_graph_margin",
                f"must be a finite number of margins (or null: no separate rule), got {self.gate_graph_margin!r}")
        require(self.gate_paired_z is None or (math.isfinite(self.gate_paired_z) and self.gate_paired_z >= 0),
                "gate_paired_z", f"must be a non-negative number of standard errors (or null: the margin rule), "
                f"got {self.gate_paired_z!r}")
        _share(self, "ema_decay", "memory_decay", "graph_test_share", "ridge_test_share", "teacher_ridge_share",
               one_allowed=True)


@dataclass
class RidgeConfig(CheckedConfig):
    """Ridge regression on standardised features averaged per time segment (closed form)."""

    # Chosen on Fis-V validation splits (bench/tune_fisv.py): 100 beat 1, 10, 300, 1000 and the
    # leave-one-out choice. "auto": choose from `alphas` by leave-one-out error on the labelled subset.
    alpha: float | Literal["auto"] = 100.0
    alphas: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
    # Pool the per-channel standardised features (True) or the features as cached (False).
    standardise: bool = True
    # Cut each video's tokens in time into this many runs, average each, and regress on them side
    # by side (train.data.segment_means; at most one run per token). 1: one mean over the video.
    # 3 since ridge version 3: it beat 1 on validation splits of the dives and of Fis-V (research
    # log, session 19: +0.006 to +0.162 per cell, mean +0.064).
    segments: int = 3

    def check(self) -> None:
        # A penalty of 0 (or less) is no ridge at all: the closed form divides by zero.
        require(self.alpha == "auto" or self.alpha > 0, "alpha",
                f"must be a positive penalty, or 'auto' to choose one from ridge.alphas by leave-one-out; "
                f"got {self.alpha!r}")
        require(len(self.alphas) > 0, "alphas", "is empty: give at least one candidate penalty (e.g. 1,10,100)")
        bad = [alpha for alpha in self.alphas if not alpha > 0]
        require(not bad, "alphas", f"candidate penalties must be positive, got {bad[0] if bad else None!r}")
        require(self.segments >= 1, "segments",
                f"must be a whole number of time segments, at least 1; got {self.segments!r}")


@dataclass
class DataSpec(CheckedConfig):
    """Which data a run trains and is measured on: the same for every method compared on it."""

    features: str = ""  # the feature cache (stage 1)
    dataset: DatasetKind = "mtl-aqa"  # the annotation kind: how the labels are read
    data_root: str | None = None  # mtl-aqa, fis-v: the annotation folder
    manifest: str | None = None  # manifest: the CSV of labels and splits
    target: str | None = None  # None: the dataset's default target
    difficulty_aware: DifficultyMode = "auto"  # auto: on where every video's difficulty is known
    ratio: float = 0.2  # share of the train split's scored videos that keep their labels
    seed: int = 0  # the labelled subset's draw (and every random stream of training)
    # Share of the train split held out as a validation set (true labels, never trained on):
    # for choosing hyper-parameters without the test split.
    validation_fraction: float = 0.0

    def check(self) -> None:
        # `not 0 < x` rather than `x <= 0`: NaN fails every comparison and must be refused too.
        require(0 < self.ratio <= 1, "ratio", f"must be in (0, 1], got {self.ratio!r}")
        require(self.seed >= 0, "seed", f"must not be negative, got {self.seed!r}")
        require(0 <= self.validation_fraction < 1, "validation_fraction",
                f"must be in [0, 1), got {self.validation_fraction!r}")

    def data_fields(self) -> dict[str, Any]:
        """The :class:`DataSpec` fields and their values (e.g. to give another config the same data)."""
        return {item.name: getattr(self, item.name) for item in dataclasses.fields(DataSpec)}


@dataclass
class TrainConfig(DataSpec):
    """Everything that determines one run (saved as ``config.json``): its :class:`DataSpec` fields,
    then the method, its preset and the hyper-parameters."""

    method: Method = "trs"
    preset: Preset = "default"
    keep_epoch_predictions: bool = False
    head: HeadConfig = field(default_factory=HeadConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    views: ViewConfig = field(default_factory=ViewConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    semi: SemiConfig = field(default_factory=SemiConfig)
    ridge: RidgeConfig = field(default_factory=RidgeConfig)
    # Filled in by the run (never read back as input): what the options resolved to.
    resolved: dict = field(default_factory=dict)

    def validate(self) -> None:
        """Refuse a configuration that cannot make a run, before any data is read: a choice out of
        its list, any field out of range (again: a field may have been changed in place since the
        config was built), or missing inputs. One :class:`UserError` naming the problem."""
        for name, value, choices in (("method", self.method, METHODS), ("preset", self.preset, PRESETS),
                                     ("dataset", self.dataset, DATASET_KINDS)):
            if value not in choices:
                raise UserError(f"unknown {name} {value!r} (choose from {', '.join(choices)})")
        if self.difficulty_aware not in DIFFICULTY_MODES:
            raise UserError(f"difficulty_aware must be one of {', '.join(DIFFICULTY_MODES)}, "
                            f"got {self.difficulty_aware!r}")
        validate_sections(self)
        if not self.features:
            raise UserError("no feature cache given (--features)")
        if self.dataset == "manifest":
            if not self.manifest:
                raise UserError("--manifest CSV is required with --dataset manifest")
        elif not self.data_root:
            raise UserError(f"--data-root is required with --dataset {self.dataset}")

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
        # The reference as the paper reads: frozen after its burn-in, the student alone at test time.
        config.reference = ReferenceConfig(dim=1024, heads=8, dropout=0.1, epochs=50, semi_training=False,
                                           test_share=0.0)
        config.optim = OptimConfig(epochs=150, batch_size=16, unlabelled_batch_size=32, lr=1e-4, weight_decay=1e-2)
        config.semi = dataclasses.replace(config.semi, semi_epochs=50, fusion="precision", graph_test_share=0.0,
                                          ridge_test_share=0.0, teacher_ridge_share=0.0)
    return config


# What `pipeline.py tune` searches for each method (train/tune.py), around the defaults above:
# the fields that moved the validation Spearman in the hand-made Fis-V grids (bench/tune_fisv.py).
# Data fields and the head's token count are never searched: they change the data, not the training.
SEARCH_SPACES: dict[str, tuple[SearchDimension, ...]] = {
    "trs": (
        FloatRange("semi.graph_strength", 0.3, 10.0, log=True),
        IntRange("semi.graph_neighbours", 2, 10),
        Choice("semi.graph_features", ("tokens", "pooled")),
        IntRange("reference.epochs", 30, 300, log=True),
        FloatRange("semi.unlabelled_weight", 0.3, 3.0, log=True),
        IntRange("semi.semi_epochs", 5, 30),
    ),
    "mean-teacher": (
        Choice("semi.ema_decay", (0.99, 0.995, 0.999, 0.9995)),
        FloatRange("semi.unlabelled_weight", 0.1, 3.0, log=True),
        IntRange("semi.semi_epochs", 2, 30, log=True),
    ),
    "pseudo-label": (
        FloatRange("semi.unlabelled_weight", 0.03, 3.0, log=True),
        IntRange("semi.semi_epochs", 2, 30, log=True),
    ),
    "supervised": (
        FloatRange("optim.lr", 1e-4, 1e-2, log=True),
        IntRange("optim.epochs", 30, 300, log=True),
        FloatRange("head.dropout", 0.0, 0.5),
    ),
    "ridge": (
        FloatRange("ridge.alpha", 0.1, 1e4, log=True),
        Choice("ridge.standardise", (True, False)),
        Choice("ridge.segments", (1, 2, 3, 4, 6)),
    ),
}


def _field_type(cls, name: str):
    return typing.get_type_hints(cls)[name]


_BOOLEAN_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _parse_value(text: str, hint):
    """The value that ``--set FIELD=TEXT`` means for a field of type ``hint``; raises ValueError.

    Only the spelling is handled here; the value then goes through the same type and range
    checks as a saved config.json (:func:`aqa.config.from_dict`).
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.lower() in ("none", "null", ""):
            return None
        for alternative in args:
            if alternative is type(None):
                continue
            try:
                return _parse_value(text, alternative)
            except ValueError:
                continue
        raise ValueError(text)
    if origin is typing.Literal:
        if text not in args:
            raise ValueError(text)
        return text
    if hint is bool:
        if text.lower() not in _BOOLEAN_WORDS:
            raise ValueError(text)
        return _BOOLEAN_WORDS[text.lower()]
    if hint is int:
        return int(text)
    if hint is float:
        return float(text)
    if hint is str:
        return text
    if origin is tuple:
        return tuple(_parse_value(part.strip(), args[0]) for part in text.split(",") if part.strip())
    raise ValueError(text)


def apply_overrides(config: TrainConfig, assignments: list[str] | tuple[str, ...]) -> TrainConfig:
    """Apply ``section.field=value`` assignments (``--set optim.lr=3e-4``) to a copy of ``config``.

    Each assignment is checked as it is applied, by the checks a saved config.json goes through,
    so an error names the assignment: ``--set optim.epochs=-1: must not be negative, got -1``.
    """
    data = to_dict(config)
    checked = None
    for assignment in assignments:
        if "=" not in assignment:
            raise UserError(f"--set {assignment!r}: expected SECTION.FIELD=VALUE (e.g. optim.lr=3e-4)")
        path, text = assignment.split("=", 1)
        path, text = path.strip(), text.strip()
        names = path.split(".")
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
                try:
                    node[name] = _parse_value(text, hint)
                except ValueError:
                    raise UserError(f"--set {path}={text}: expected {describe_type(hint)}, got {text!r}") from None
        try:
            checked = from_dict(TrainConfig, data)
        except ConfigValueError as error:
            detail = error.detail if error.field == path else error.problem
            raise UserError(f"--set {path}={text}: {detail}") from None
    return checked if checked is not None else from_dict(TrainConfig, data)


# Fields added with a default that changes what a method's runs compute, and the value that a
# saved configuration of that method without them ran with: read so, an older run folder repeats
# as it ran and is never taken for a finished run of today's default (other methods read the
# default: the field changes nothing for them, and their finished runs stay finished).
_ADDED_WITH_NEW_DEFAULTS = {("trs", "semi", "graph_test_share"): 0.0, ("trs", "semi", "gate_scale"): "spearman",
                            ("trs", "semi", "graph_guard"): False, ("trs", "semi", "teacher"): "ema",
                            ("trs", "semi", "ridge_test_share"): 0.0, ("trs", "semi", "gate_ridge_check"): False,
                            ("trs", "semi", "teacher_ridge_share"): 0.0, ("ridge", "ridge", "segments"): 1}


def config_from_json(data: dict, source) -> TrainConfig:
    """A TrainConfig from a saved ``config.json`` (its ``resolved`` section is dropped)."""
    if not isinstance(data, dict):
        raise UserError("not a training configuration (expected a JSON object)", source)
    data = dict(data)
    data.pop("resolved", None)
    for (method, section, name), value in _ADDED_WITH_NEW_DEFAULTS.items():
        if data.get("method") == method and isinstance(data.get(section), dict) and name not in data[section]:
            data[section] = {**data[section], name: value}
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
    try:
        config = dataclasses.replace(config, **given)
    except ConfigValueError as error:
        if error.field not in given:
            raise
        # A value given as an option: name the option the user typed.
        raise UserError(f"--{error.field.replace('_', '-')} {error.detail}") from None
    return apply_overrides(config, list(overrides))
