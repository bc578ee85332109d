"""``trs``'s label-only gate: which pseudo-labels to trust, decided by cross-fitting on the labelled videos.

Right after the burn-in (the student, and the reference network when the configuration uses it)
and before the semi-supervised phase, :func:`run_gate`:

0. asks the graph guard (:mod:`train.methods.graph_guard`, ``semi.graph_guard``) whether a graph
   helps at all on these features; where it says no, the options without the graph are the
   only ones, the configured sources without the graph the default (``diagnostics.json``'s
   ``gate.graph_guard`` has its estimates), and with ``semi.teacher = "auto"`` (the default) the
   teacher source becomes the ridge (:class:`~train.methods.pseudo_labels.RidgeTeacherSource`),
   for the fold models and the semi-supervised phase alike (``gate.teacher``);
1. splits the *labelled* videos into ``semi.gate_folds`` folds (its own seed stream);
2. per fold trains a fold student with the burn-in recipe on the other folds (``semi.gate_epochs``
   labelled epochs, at most ``optim.epochs``; 0 = all of them) and, when an option uses the
   reference network, a fold reference the same way (``semi.gate_reference_epochs``, at most
   ``reference.epochs``);
3. labels the held-out fold and every unlabelled video with the run's own sources (the fold
   student as the teacher at the phase's start, the fold reference against exemplars of the
   training folds), fuses them as the run does, and refines them on the run's graph with only
   the training folds anchored;
4. scores each :class:`GateOption` by the Spearman of its pooled out-of-fold values against the
   held-out labels;
5. with ``semi.gate_ridge_check`` (on since trs version 11), where the guard kept the graph
   although its signal was below 0 and the EMA teacher teaches, scores the ridge teacher on the
   same folds (:func:`ridge_check`) and lets it teach, without the graph, where it beats the
   chosen option by more than ``semi.gate_ridge_margin`` margins (``gate.ridge_check``).

Steps 2-3 of each fold of each cross-fitting form one job (:func:`run_fold_jobs`), on one torch
thread wherever it runs: in forked workers when the run has several threads (started beside the
burn-in, :func:`start_gate_early`, since the jobs need only the configuration and the labelled
videos), in turn at the gate otherwise.

The *default* option (the configuration as given) is kept unless another beats it by more than
a margin (a plain argmax chases fold noise: docs/research/issue11-2026-12-01.md, section 2): on
Fisher's z scale (``semi.gate_scale = "fisher"``, the default), atanh of its estimate must beat the
default's by ``sqrt(1.06 / (n_labelled - 3))``, the spread of a Spearman on that scale; with
``"spearman"`` the estimates themselves by ``1 / sqrt(n_labelled)`` (research log, session 13).
With ``semi.gate_paired_z`` set, it is kept unless another's per-fold paired difference from it
is more than that many standard errors above zero (:func:`paired_choice`). Validation and test
videos are never looked at; the gate draws from its own generators and restores the global
torch RNG, so a gate that keeps the default leaves the run exactly as with ``semi.gate=false``.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np
import torch

from aqa.errors import UserError
from aqa.metrics import spearman
from train.graph import LABELLED_ANCHOR, refine_on_graph
from train.models import MixerHead, ReferenceNetwork, make_optimiser, regression_loss
from train.processes import die_with_parent
from train.views import ViewMaker, epoch_batches

GATE_STREAM = 4  # the gate's seed stream (train.methods.supervised.stream_seed)


@dataclass(frozen=True)
class GateOption:
    """Which sources feed the pseudo-labels and how strongly the graph refines them."""

    sources: tuple[str, ...]  # ("teacher",) or ("teacher", "reference")
    graph_strength: float  # 0: no graph refinement

    @property
    def name(self) -> str:
        return f"{'+'.join(self.sources)}, graph {self.graph_strength:g}"

    def to_state(self) -> dict:
        return {"sources": list(self.sources), "graph_strength": float(self.graph_strength)}


def default_option(config) -> GateOption:
    """What the configuration asks for (the option the gate keeps unless another clearly wins)."""
    semi = config.semi
    sources = ("teacher", "reference") if semi.use_reference else ("teacher",)
    strength = float(semi.graph_strength) if semi.use_graph else 0.0
    return GateOption(sources, strength)


def gate_options(config, without_graph: bool = False) -> list[GateOption]:
    """{configured sources, teacher only} x {configured graph strength, no graph}, default first.

    ``without_graph`` (the graph guard dropped it): only the options without the graph, the
    configured sources without the graph first."""
    default = default_option(config)
    if without_graph:
        default = GateOption(default.sources, 0.0)
    options = [default]
    for sources in dict.fromkeys([default.sources, ("teacher",)]):
        for strength in dict.fromkeys([default.graph_strength, 0.0]):
            option = GateOption(sources, strength)
            if option not in options:
                options.append(option)
    return options


def fold_assignment(count: int, folds: int, seed: int) -> np.ndarray:
    """Fold of each labelled position: a seeded permutation dealt round-robin (sizes differ by at most 1)."""
    order = np.random.default_rng(seed).permutation(count)
    fold_of = np.empty(count, dtype=np.int64)
    fold_of[order] = np.arange(count) % folds
    return fold_of


FISHER_CLIP = 0.999  # atanh is infinite at |rho| = 1


def gate_margin(count: int, scale: str) -> float:
    """The margin an option must beat the default by, on the rule's scale, with ``count`` labelled
    videos: 1/sqrt(n) (the spread of a Spearman near zero) or, on Fisher's z scale, sqrt(1.06 / (n - 3))
    (the spread of atanh of a Spearman, Fieller, Hartley and Pearson 1957)."""
    if scale == "fisher":
        return math.sqrt(1.06 / max(count - 3, 1))
    return 1.0 / math.sqrt(count)


def on_scale(estimates: dict[str, float | None], scale: str) -> dict[str, float | None]:
    """The estimates as the rule compares them: as they are, or atanh of them (clipped to +-0.999)."""
    if scale != "fisher":
        return dict(estimates)
    return {name: None if value is None else math.atanh(min(max(value, -FISHER_CLIP), FISHER_CLIP))
            for name, value in estimates.items()}


def margin_choice(scores: dict[str, float | None], default: str, margin: float) -> str:
    """``default`` unless the best-scoring option beats it by more than ``margin`` (None scores lose)."""
    value = {name: (-math.inf if score is None else score) for name, score in scores.items()}
    best = max(value, key=lambda name: (value[name], name == default))  # ties keep the default
    return best if value[best] - value[default] > margin else default


VERDICTS = {
    "switched": "another option beat the configured one out of fold",
    "switched to the ridge teacher": "the ridge teacher beat the chosen option out of fold (semi.gate_ridge_check)",
    "kept": "the configured option scored best out of fold",
    "kept, undecided": "another option scored higher out of fold, by less than the margin: with this many "
                       "labelled videos the gate cannot tell them apart, and keeps the configured one",
    "kept, not cross-fitted": "nothing to cross-fit (too few labelled videos, or one option)",
}


def out_of_fold_leader(outcome: dict) -> tuple[str | None, float]:
    """The option that scored best out of fold on the rule's scale, and its lead over the default
    there (paired rule: the largest mean per-fold difference); ``(None, 0)`` when none leads the
    default (ties included)."""
    default = outcome["default"]
    if outcome.get("rule") == "paired":
        means = {name: entry["mean"] for name, entry in (outcome.get("paired_differences") or {}).items()
                 if entry is not None}
        best = max(means, key=means.get, default=None)
        return (best, means[best]) if best is not None and means[best] > 0 else (None, 0.0)
    compared = on_scale(outcome.get("estimates") or {}, outcome.get("scale", "spearman"))
    if compared.get(default) is None:
        scored = {name: value for name, value in compared.items() if value is not None}
        best = max(scored, key=scored.get, default=None)
        return (best, math.inf) if best is not None else (None, 0.0)
    others = {name: value for name, value in compared.items() if name != default and value is not None}
    best = max(others, key=others.get, default=None)
    if best is None or others[best] <= compared[default]:
        return None, 0.0
    return best, others[best] - compared[default]


def gate_verdict(outcome: dict) -> str:
    """How the gate's choice came about, one of :data:`VERDICTS` (``metrics.json``'s ``gate_verdict``)."""
    if not outcome.get("estimates"):
        return "kept, not cross-fitted"
    if (outcome.get("ridge_check") or {}).get("switches"):
        return "switched to the ridge teacher"
    if outcome["chosen"] != outcome["default"]:
        return "switched"
    return "kept, undecided" if out_of_fold_leader(outcome)[0] is not None else "kept"


def describe_outcome(outcome: dict) -> str:
    """The gate's choice in one line for the run's log: what it chose and how clearly."""
    default, chosen, count = outcome["default"], outcome["chosen"], outcome["n_labelled"]
    verdict = gate_verdict(outcome)
    head = f"gate ({count} labelled videos): "
    if outcome.get("graph_guard") is not None:
        from train.methods.graph_guard import describe_guard

        head += describe_guard(outcome["graph_guard"]) + "; "
    check = outcome.get("ridge_check") or {}
    if check.get("switches"):
        estimate = check["estimate"]
        return (head + f"the ridge teacher scored {'undefined' if estimate is None else f'{estimate:.3f}'} out "
                f"of fold against '{check['compared_with']}' {_shown(outcome['estimates'], check['compared_with'])}"
                f" (lead needed {check['needed']:.3f}): the ridge teaches, '{outcome['chosen']}'")
    if outcome.get("teacher") == "ridge":
        head += "the teacher is the ridge; "
    # after the guard dropped the graph, the option the gate starts from is the configured one without it
    configured = "the guarded" if (outcome.get("graph_guard") or {}).get("drops_graph") else "the configured"
    if verdict == "kept, not cross-fitted":
        return head + f"kept {configured} '{default}' ({outcome.get('reason', 'nothing to cross-fit')})"
    estimates = outcome["estimates"]

    def shown(name: str) -> str:
        return _shown(estimates, name)

    if outcome.get("rule") == "paired":
        scale = f"paired rule, z = {outcome['z']:g}"
    else:
        scale = "on Fisher's z" if outcome.get("scale") == "fisher" else "on the Spearman scale"
        scale = f"margin {outcome['margin']:.3f} {scale}"
    if verdict == "switched":
        return (head + f"chose '{chosen}' (out of fold {shown(chosen)}) over {configured} '{default}' "
                f"({shown(default)}; {scale})")
    if verdict == "kept":
        return head + f"kept {configured} '{default}', the best out of fold ({shown(default)})"
    leader, lead = out_of_fold_leader(outcome)
    ahead = f"ahead by {lead:.3f}" if math.isfinite(lead) else "ahead of an undefined estimate"
    return (head + f"kept {configured} '{default}' ({shown(default)} out of fold); '{leader}' scored "
            f"{shown(leader)}, {ahead} ({scale}): too few labelled videos to tell them apart")


def _shown(estimates: dict, name: str) -> str:
    value = estimates.get(name)
    return "undefined" if value is None else f"{value:.3f}"


def _train_fold_student(method, positions: torch.Tensor, epochs: int, seed: int) -> MixerHead:
    """The burn-in recipe (:meth:`SupervisedMethod._supervised_epoch`) on the labelled ``positions`` only."""
    config = method.config
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    views = ViewMaker(method.tokens, config.views, generator)
    student = MixerHead(method.data.num_tokens, method.data.feature_dim, config.head)
    optimiser = make_optimiser(student.parameters(), config.optim)
    rows, targets = method.labelled[positions], method.labelled_targets[positions]
    student.train()
    for _ in range(epochs):
        for batch in epoch_batches(torch.arange(len(positions)), config.optim.batch_size,
                                   config.optim.min_steps_per_epoch, generator):
            value, log_variance = student(views.weak(rows[batch]))
            squared, nll = regression_loss(value, log_variance, targets[batch])
            method._step(squared + nll, student, optimiser)
    student.eval()
    return student


def _train_fold_reference(method, positions: torch.Tensor, epochs: int, seed: int) -> ReferenceNetwork:
    """The reference network's burn-in (:meth:`TRSMethod._reference_epoch`) on the labelled ``positions`` only."""
    config = method.config
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    network = ReferenceNetwork(method.data.feature_dim, config.reference)
    optimiser = make_optimiser(network.parameters(), config.optim)
    rows, targets = method.labelled[positions], method.labelled_targets[positions]
    for _ in range(epochs):
        method._reference_steps(network, optimiser, rows, targets, generator)
    network.eval()
    return network


def guard_record(method) -> dict | None:
    """The graph guard's record for ``method``'s run (:mod:`train.methods.graph_guard`), computed
    once per method object; None where it does not run (``semi.graph_guard`` off, or no graph
    configured)."""
    semi = method.config.semi
    if not (semi.graph_guard and default_option(method.config).graph_strength > 0):
        return None
    cached = getattr(method, "_graph_guard_record", None)
    if cached is None:
        from train.methods.graph_guard import graph_guard

        cached = graph_guard(method.data, method.config.seed, semi.graph_guard_repeats, semi.graph_guard_margin)
        method._graph_guard_record = cached
    return cached


@dataclass
class GatePlan:
    """What the gate will do for a run, known before any training: its options and fold jobs.

    ``decided`` is the outcome already, when there is nothing to cross-fit (too few labelled
    videos, one option); then ``jobs`` is empty."""

    outcome: dict  # the outcome's fields known in advance
    options: list[GateOption]
    jobs: list[FoldJob]
    student_epochs: int
    reference_epochs: int  # 0: no option uses the reference network
    decided: dict | None = None


def plan_gate(method) -> GatePlan:
    """The gate's options and fold jobs for ``method`` (a TRSMethod): they depend only on its
    configuration and labelled videos, so the jobs may start before the burn-in
    (:class:`FoldJobsInFlight`)."""
    from train.methods.supervised import stream_seed

    config, semi = method.config, method.config.semi
    count = len(method.labelled)
    guard = guard_record(method)
    options = gate_options(config, without_graph=guard is not None and guard["drops_graph"])
    default = options[0]
    # semi.teacher = "auto": the ridge teacher where the guard found the graph losing out of fold
    teacher = semi.teacher if semi.teacher != "auto" else (
        "ridge" if guard is not None and guard["drops_graph"] else "ema")
    outcome = {"folds": 0, "n_labelled": count, "margin": gate_margin(count, semi.gate_scale), "default": default.name,
               "options": {option.name: option.to_state() for option in options}, "teacher": teacher}
    if guard is not None:
        outcome = {**outcome, "graph_guard": guard, "configured": default_option(config).name}
    folds = min(semi.gate_folds, count // 2)  # at least two labelled videos per fold
    if folds < 2 or len(options) == 1:
        decided = {**outcome, "chosen": default.name, "estimates": {}, "fold_estimates": {},
                   "reason": "fewer than 4 labelled videos" if folds < 2 else "only one option"}
        return GatePlan(outcome, options, [], 0, 0, decided)
    gate_seed = stream_seed(config.seed, GATE_STREAM)
    uses_reference = any("reference" in option.sources for option in options)
    # At most the burn-in's epochs (fewer by default, for cost: train.config.SemiConfig).
    student_epochs = min(semi.gate_epochs or config.optim.epochs, config.optim.epochs)
    reference_epochs = min(semi.gate_reference_epochs or config.reference.epochs, config.reference.epochs)
    # Every (repeat, fold) in order: repeat 0 is the single cross-fitting of gate_repeats = 1,
    # each further one deals new folds.
    jobs = []
    for repeat in range(semi.gate_repeats):
        seed = gate_seed if repeat == 0 else stream_seed(gate_seed, 100 + repeat)
        fold_of = fold_assignment(count, folds, seed)
        for fold in range(folds):
            jobs.append(FoldJob(repeat, np.flatnonzero(fold_of != fold), np.flatnonzero(fold_of == fold),
                                stream_seed(seed, fold + 1)))
    outcome = {**outcome, "folds": folds, "repeats": semi.gate_repeats, "student_epochs": student_epochs,
               "reference_epochs": reference_epochs if uses_reference else 0}
    return GatePlan(outcome, options, jobs, student_epochs, reference_epochs if uses_reference else 0)


def run_gate(method, in_flight: FoldJobsInFlight | None = None) -> dict:
    """Cross-fit the options on the labelled videos of ``method`` (a TRSMethod after its burn-in).

    Returns the outcome (plain data, part of the run's state): per option its estimate (the pooled
    out-of-fold Spearman, averaged over ``semi.gate_repeats`` cross-fittings) and per-fold
    Spearman, the margin, the default and the chosen option. ``in_flight``: the run's fold jobs,
    started early (:class:`FoldJobsInFlight`); their results are used and their workers closed.
    (No wall time: a resumed run's diagnostics equal an uninterrupted run's; the gate unit's
    history record has it.)"""
    if in_flight is not None:  # started from this run's plan, which has jobs
        try:
            return decide(method, in_flight.plan, in_flight.results())
        finally:
            in_flight.close()
    plan = plan_gate(method)
    if plan.decided is not None:
        return plan.decided
    with torch.random.fork_rng(devices=[]):  # fold models seed the global RNG; the run's is left as it was
        held_values = run_fold_jobs(method, plan)
    return decide(method, plan, held_values)


def decide(method, plan: GatePlan, held_values: list[dict[str, np.ndarray]]) -> dict:
    """The outcome from each fold job's held-out values per option (in ``plan.jobs`` order)."""
    semi, options, outcome = method.config.semi, plan.options, plan.outcome
    count, default, margin = outcome["n_labelled"], options[0], outcome["margin"]
    truth = method.labelled_targets.double().numpy()
    per_fold: dict[str, list] = {option.name: [] for option in options}
    out_of_fold = [{option.name: np.zeros(count) for option in options} for _ in range(semi.gate_repeats)]
    for job, values_by_option in zip(plan.jobs, held_values):
        for name, values in values_by_option.items():
            out_of_fold[job.repeat][name][job.held] = values
            per_fold[name].append(spearman(truth[job.held], values))
    pooled = {option.name: [spearman(truth, repeat[option.name]) for repeat in out_of_fold] for option in options}
    estimates = {name: _mean_or_none(values) for name, values in pooled.items()}
    compared = on_scale(estimates, semi.gate_scale)
    candidates, start = graph_must_earn_its_place(options, compared, default, semi.gate_graph_margin, margin)
    names = [option.name for option in candidates]
    rule: dict = {"rule": "margin", "scale": semi.gate_scale}
    if semi.gate_paired_z is None:
        chosen = margin_choice({name: compared[name] for name in names}, start.name, margin)
    else:
        differences = paired_differences({name: per_fold[name] for name in names}, start.name)
        chosen = paired_choice(differences, start.name, semi.gate_paired_z)
        rule = {"rule": "paired", "z": semi.gate_paired_z, "paired_differences": differences}
    outcome = {**outcome, "estimates": estimates, "fold_estimates": per_fold, **rule, "chosen": chosen}
    guard = outcome.get("graph_guard") or {}
    if (semi.gate_ridge_check and semi.teacher == "auto" and outcome["teacher"] == "ema"
            and guard.get("signal") is not None and guard["signal"] < 0):
        outcome = ridge_check(method, plan, outcome)
    return outcome


def ridge_check(method, plan: GatePlan, outcome: dict) -> dict:
    """``semi.gate_ridge_check``: where the guard kept the graph although it lost out of fold
    (a signal below 0 but above ``-semi.graph_guard_margin``), so that the EMA teacher teaches,
    is the ridge teacher's pseudo-labelling clearly better than the option the gate chose?

    The ridge (:class:`~train.methods.pseudo_labels.RidgeTeacherSource`) is fitted on each fold
    job's training folds and labels its held-out fold, so its pooled out-of-fold Spearman is
    scored exactly as the gate's options are, on the same folds of the same cross-fittings. Where
    it beats the chosen option's estimate by more than ``semi.gate_ridge_margin`` gate margins
    (on the gate's scale), the run goes on as where the guard drops the graph: the ridge teaches
    and the chosen sources run without the graph (and the ridge takes ``semi.ridge_test_share``
    of the prediction). Why: on the embedded dives at 10 % labels the guard's signal is small
    there (-0.01 to -0.09 with 17 labels), the gate keeps the graph within its margin, and those
    runs end far below `ridge` and `supervised` (research log, session 23).
    ``gate.ridge_check`` records the estimate, its lead, the lead needed and whether it switched."""
    from train.methods.pseudo_labels import RidgeTeacherSource

    truth = method.labelled_targets.double().numpy()
    out_of_fold = [np.zeros(len(truth)) for _ in range(method.config.semi.gate_repeats)]  # as decide pools
    source = RidgeTeacherSource(method.config.ridge)
    for job in plan.jobs:
        train, held = torch.from_numpy(job.train), torch.from_numpy(job.held)
        features, weights, bias = source.fit(method.data, method.labelled[train], method.labelled_targets[train])
        out_of_fold[job.repeat][job.held] = features[method.labelled[held].numpy()] @ weights + bias
    estimate = _mean_or_none([spearman(truth, values) for values in out_of_fold])
    chosen = outcome["chosen"]
    compared = on_scale({"ridge": estimate, "chosen": outcome["estimates"].get(chosen)}, method.config.semi.gate_scale)
    if compared["ridge"] is None:
        lead = -math.inf
    elif compared["chosen"] is None:
        lead = math.inf
    else:
        lead = compared["ridge"] - compared["chosen"]
    needed = method.config.semi.gate_ridge_margin * outcome["margin"]
    switches = lead > needed
    record = {"estimate": estimate, "compared_with": chosen, "lead": lead if math.isfinite(lead) else None,
              "needed": needed, "switches": bool(switches)}
    if not switches:
        return {**outcome, "ridge_check": record}
    without_graph = GateOption(chosen_option(outcome).sources, 0.0).name
    return {**outcome, "ridge_check": record, "teacher": "ridge", "chosen": without_graph}


def paired_differences(fold_estimates: dict[str, list], default: str) -> dict[str, dict | None]:
    """Per option (not the default): mean and standard error of its per-fold Spearman minus the
    default's on the same held-out folds (folds where either is undefined left out); None with
    fewer than two such folds."""
    base = np.array([np.nan if value is None else value for value in fold_estimates[default]], dtype=float)
    result: dict[str, dict | None] = {}
    for name, values in fold_estimates.items():
        if name == default:
            continue
        difference = np.array([np.nan if value is None else value for value in values], dtype=float) - base
        difference = difference[np.isfinite(difference)]
        result[name] = None if len(difference) < 2 else {
            "mean": float(difference.mean()), "se": float(difference.std(ddof=1) / math.sqrt(len(difference))),
            "folds": int(len(difference))}
    return result


def paired_choice(differences: dict[str, dict | None], default: str, z: float) -> str:
    """``default`` unless an option's mean paired difference exceeds ``z`` standard errors (and 0);
    the largest such mean wins."""
    passing = {name: entry["mean"] for name, entry in differences.items()
               if entry is not None and entry["mean"] > 0 and entry["mean"] > z * entry["se"]}
    return max(passing, key=passing.get) if passing else default


@dataclass(frozen=True)
class FoldJob:
    """One held-out fold of one cross-fitting: fold models train on ``train``, label ``held``."""

    repeat: int
    train: np.ndarray  # labelled positions the fold models learn from
    held: np.ndarray  # labelled positions they label
    seed: int


def run_fold_jobs(method, plan: GatePlan) -> list[dict[str, np.ndarray]]:
    """Each job's held-out values per option (:func:`_label_held_out_fold`), in ``plan.jobs`` order.

    Every job runs on one torch thread, so its numbers do not depend on how many run at once:
    with ``W = min(torch threads of the run, jobs) > 1`` they run in ``W`` forked worker
    processes (:class:`FoldJobsInFlight`), otherwise one after the other here."""
    workers = _forked_workers(len(plan.jobs))
    if workers:
        in_flight = FoldJobsInFlight(method, plan, workers)
        try:
            return in_flight.results()
        finally:
            in_flight.close()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [_run_fold_job(method, plan, job) for job in plan.jobs]
    finally:
        torch.set_num_threads(threads)


def start_gate_early(method) -> FoldJobsInFlight | None:
    """The gate's fold jobs of ``method`` (a TRSMethod before its burn-in), started now in forked
    workers, while the run trains its burn-in on one thread; None where they would run in this
    process (one torch thread, or no fork) or there is nothing to cross-fit.

    The jobs need only the configuration and the labelled videos, so starting them early changes
    none of their numbers; the run's cores are busy meanwhile instead of idle in a burn-in that
    two threads speed up 1.2x (bench/bench_train_time.py)::

        run: burn-in, reference (1 thread) ........ gate: wait, decide | semi phase (T threads)
        W = min(T, jobs) workers x 1 thread: fold jobs ---------------->|
    """
    plan = plan_gate(method)  # cheap: seeds and fold assignments
    workers = _forked_workers(len(plan.jobs))
    return FoldJobsInFlight(method, plan, workers, run_threads=1) if workers else None


def _forked_workers(jobs: int) -> int:
    """How many forked one-thread workers run ``jobs`` fold jobs: one per torch thread of the run,
    at most one per job; 0 where they run in this process (one thread, no fork, one job)."""
    workers = min(torch.get_num_threads(), jobs)
    return workers if workers > 1 and _can_fork() else 0


class FoldJobsInFlight:
    """A run's fold jobs, computing in ``workers`` forked one-thread processes.

    ``run_threads``: the run's own torch threads until :meth:`close` (which restores them), for a
    run that trains meanwhile. :meth:`results` waits for the values; :meth:`close` ends the
    workers (jobs not started are dropped; a running job ends first) and must follow, also on
    an error or Ctrl-C. One in flight per process."""

    def __init__(self, method, plan: GatePlan, workers: int, run_threads: int | None = None):
        global _FORKED_GATE
        if _FORKED_GATE is not None:
            raise RuntimeError("another gate's fold jobs are in flight in this process")
        if any(option.graph_strength > 0 for option in plan.options):
            method.labelling.graph_laplacian(method.data)  # built once here, not once per worker
        self.plan = plan
        self._threads = torch.get_num_threads()
        self._pool = None
        _FORKED_GATE = (method, plan)  # what the forked workers inherit, without pickling the run
        try:
            # concurrent.futures, not multiprocessing.Pool: a worker that dies (killed, out of
            # memory) fails the gate instead of leaving it waiting for a result forever.
            self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                             initializer=_start_fold_worker, initargs=(os.getpid(),))
            self._futures = [self._pool.submit(_forked_fold_job, index) for index in range(len(plan.jobs))]
        except BaseException:
            self.close()
            raise
        if run_threads is not None:
            torch.set_num_threads(run_threads)

    def results(self) -> list[dict[str, np.ndarray]]:
        try:
            return [future.result() for future in self._futures]
        except BrokenProcessPool as error:
            raise UserError("a worker process of trs's gate died (killed, or out of memory?); "
                            "`--threads 1` runs the gate in the run's process") from error

    def close(self) -> None:
        global _FORKED_GATE
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        _FORKED_GATE = None
        torch.set_num_threads(self._threads)


def _run_fold_job(method, plan: GatePlan, job: FoldJob) -> dict[str, np.ndarray]:
    return _label_held_out_fold(method, plan.options, job.train, job.held, job.seed, plan.student_epochs,
                                plan.reference_epochs, plan.outcome["teacher"])


_FORKED_GATE: tuple | None = None  # what forked workers inherit from FoldJobsInFlight: (method, plan)


def _start_fold_worker(run_pid: int) -> None:
    torch.set_num_threads(1)
    die_with_parent(run_pid)  # a killed run leaves no worker behind


def _forked_fold_job(index: int) -> dict[str, np.ndarray]:
    method, plan = _FORKED_GATE
    return _run_fold_job(method, plan, plan.jobs[index])


def _can_fork() -> bool:
    """Forked workers share the run's features without copying them. Only on Linux (macOS lists
    fork, but its system libraries are not safe to use in a forked child), and only from the main
    thread: a run inside a thread (a Dask worker's executor) may share its process with threads
    holding locks that a forked child would inherit held."""
    return sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread()


def _label_held_out_fold(method, options: list[GateOption], train: np.ndarray, held: np.ndarray, fold_seed: int,
                         student_epochs: int, reference_epochs: int, teacher: str) -> dict[str, np.ndarray]:
    """Each option's pseudo-labels of the ``held`` labelled positions, from fold models trained on
    the ``train`` positions (a fold reference only when ``reference_epochs``), fused as the run
    fuses and refined on the run's graph with only the ``train`` positions anchored."""
    from train.methods.pseudo_labels import Context, build_sources
    from train.methods.supervised import stream_seed

    config = method.config
    train_positions = torch.from_numpy(train).long()
    student = _train_fold_student(method, train_positions, student_epochs, fold_seed)
    reference = (_train_fold_reference(method, train_positions, reference_epochs, stream_seed(fold_seed, 2))
                 if reference_epochs else None)
    generator = torch.Generator().manual_seed(stream_seed(fold_seed, 3))
    queries = torch.cat([method.labelled[torch.from_numpy(held)], method.unlabelled])
    context = Context(data=method.data, unlabelled=queries, labelled=method.labelled[train_positions],
                      labelled_targets=method.labelled_targets[train_positions],
                      views=ViewMaker(method.tokens, config.views, generator), generator=generator,
                      teacher=student, reference=reference)
    sources = build_sources(config, ("teacher", "reference") if reference is not None else ("teacher",), teacher)
    estimates = {source.name: source.estimate(context) for source in sources}
    # Graph nodes: the labelled videos (data.labelled order), then the unlabelled.
    query_nodes = np.concatenate([held, len(method.labelled) + np.arange(len(method.unlabelled))])
    truth = method.labelled_targets.double().numpy()
    held_values = {}
    for option in options:
        fused, confidence = method.labelling.fuse([estimates[name] for name in option.sources])
        values = fused.numpy()
        if option.graph_strength > 0:
            laplacian = method.labelling.graph_laplacian(method.data)  # built once per run
            node_values = np.zeros(len(laplacian))
            node_confidence = np.full(len(laplacian), LABELLED_ANCHOR)
            node_values[train] = truth[train]
            node_values[query_nodes] = values
            node_confidence[query_nodes] = (confidence / confidence.mean()).numpy()
            values = refine_on_graph(laplacian, node_values, node_confidence, option.graph_strength)[query_nodes]
        held_values[option.name] = values[:len(held)]
    return held_values


def _mean_or_none(values: list) -> float | None:
    """The mean of the repeats' estimates; undefined (None) if any repeat's is."""
    return None if any(value is None for value in values) else float(np.mean(values))


def graph_must_earn_its_place(options: list[GateOption], estimates: dict, default: GateOption,
                              graph_margin: float | None, margin: float) -> tuple[list[GateOption], GateOption]:
    """The options the margin rule chooses from, and the one it starts from.

    ``graph_margin`` None: all of them, from the default. Otherwise the graph stays among them only
    if its best out-of-fold estimate beats the best without it by more than ``graph_margin`` x
    ``margin``; when it does not, the choice is among the no-graph options, starting from the
    default's sources without the graph."""
    with_graph = [option for option in options if option.graph_strength > 0]
    without = [option for option in options if option.graph_strength == 0]
    if graph_margin is None or not with_graph or not without:
        return options, default

    def best(group):
        values = [estimates[option.name] for option in group if estimates[option.name] is not None]
        return max(values) if values else -math.inf

    if best(with_graph) - best(without) > graph_margin * margin:
        return options, default
    plain_default = next((option for option in without if option.sources == default.sources), without[0])
    return without, plain_default


def chosen_option(outcome: dict) -> GateOption:
    entry = outcome["options"][outcome["chosen"]]
    return GateOption(tuple(entry["sources"]), float(entry["graph_strength"]))
