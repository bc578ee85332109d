"""Hyper-parameters chosen on validation splits: an Optuna study over a method's search space.

``pipeline.py tune`` (and :func:`run_tuning`) searches the space declared for a method in
:data:`train.config.SEARCH_SPACES`. Every trial trains the method, for every seed, on a split of
the *train* split: a validation share held out (true labels, never trained on), the labelled
subset of ``ratio`` drawn from the rest, the remainder unlabelled: the same draw as
``train --validation-fraction`` (:func:`train.data.draw_split`). The trial's value is the mean
over seeds of validation Spearman(method) - validation Spearman(``supervised`` with default
settings) on the same splits: a paired difference, so seed-to-seed luck of the draw cancels.
The supervised baseline is trained once per seed and study and kept in the study.

The test split is never read for any number: the data a trial trains on has its test rows cut
off before the method is made (:func:`without_test`), so no code path can reach them.

The study lives in an SQLite database (Optuna's RDB storage): a killed tune resumes where it
stopped, and several processes may work on one study at once. Its name is derived from what
the command asks for (data, method, ratio, seeds, validation share, sampler seed, base settings,
search space), so the same command finds its study again and a different one never mixes into
it. ``--trials N`` is the study's total: a rerun with a larger N adds trials, one with the same
N only writes the report again.

Reproducibility: the sampler is TPE, re-seeded before each trial from ``--seed`` and the number
of trials already in the study, so a fresh study run by one process gives the same trials and
values on CPU for the same command and data (the same torch thread count assumed). Several
processes on one study interleave their trials in an order of their own and so draw other
points: parallel work is for speed, not for an exactly repeatable sequence.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from aqa.config import CheckedConfig, ConfigValueError, require, to_dict, write_json
from aqa.errors import UserError
from aqa.files import atomic_write_bytes
from aqa.progress import progress_bar
from train.config import METHODS, SEARCH_SPACES, TrainConfig, apply_overrides, preset_config
from train.search_spaces import SearchDimension, assignment

# TPE draws this many trials at random before it models the results (Optuna's default is 10,
# too many for the short studies a CPU affords); a constant, so that adding trials to a study
# never changes how its earlier ones were drawn.
STARTUP_TRIALS = 5
# A trial killed without a chance to say so (kill -9, power cut) is marked failed once its
# heartbeat has been silent this long; its place is then taken by a new trial.
HEARTBEAT_SECONDS = 30
HEARTBEAT_GRACE_SECONDS = 120
MAX_TRIALS = 10_000
BASELINE = "supervised"
# Study user attribute under which the supervised baseline of one seed is kept.
_BASELINE_ATTR = "baseline_seed_{seed}"


@dataclass
class TuneConfig(CheckedConfig):
    """One tuning command (saved as ``tune_config.json`` beside its outputs)."""

    base: TrainConfig  # the method, the data and every setting the search does not change
    trials: int = 20  # the study's total of finished trials
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    sampler_seed: int = 0
    study_db: str = "tune.db"
    out: str = "tune"
    params: tuple[str, ...] = ()  # a subset of the method's search space; empty: all of it
    top: int = 10  # rows of the top-trials table

    def check(self) -> None:
        require(1 <= self.trials <= MAX_TRIALS, "trials", f"must be in 1..{MAX_TRIALS}, got {self.trials!r}")
        require(len(self.seeds) > 0, "seeds", "is empty: give at least one seed (e.g. 0-4)")
        require(all(seed >= 0 for seed in self.seeds), "seeds", "must not be negative")
        require(len(set(self.seeds)) == len(self.seeds), "seeds", f"repeat a seed: {list(self.seeds)}")
        require(self.sampler_seed >= 0, "sampler_seed", f"must not be negative, got {self.sampler_seed!r}")
        require(self.top >= 1, "top", f"must be at least 1, got {self.top!r}")
        require(0 < self.base.validation_fraction < 1, "validation_fraction",
                f"tuning needs a validation share in (0, 1), got {self.base.validation_fraction!r}")

    def space(self) -> tuple[SearchDimension, ...]:
        """The dimensions searched: the method's declared space, or the ``params`` part of it."""
        declared = SEARCH_SPACES[self.base.method]
        if not self.params:
            return declared
        by_path = {dimension.path: dimension for dimension in declared}
        unknown = [path for path in self.params if path not in by_path]
        if unknown:
            raise UserError(f"--params: {unknown[0]!r} is not in the search space of {self.base.method} "
                            f"({', '.join(by_path)})")
        return tuple(by_path[path] for path in dict.fromkeys(self.params))

    def baseline_config(self) -> TrainConfig:
        """``supervised`` on the same data with the base's settings (its preset is the same for
        every method, apart from the semi-supervised fields it does not read)."""
        baseline = preset_config(self.base.preset, BASELINE)
        sections = {item.name: getattr(self.base, item.name) for item in dataclasses.fields(TrainConfig)
                    if item.name not in ("method", "resolved")}
        return dataclasses.replace(baseline, **sections)

    def identity(self) -> dict:
        """What makes a study the same study (not the trial count, the output folder or the table)."""
        return {"base": self.base.identity(), "seeds": list(self.seeds), "sampler_seed": self.sampler_seed,
                "space": [dimension.describe() for dimension in self.space()],
                "baseline": self.baseline_config().identity(), "startup_trials": STARTUP_TRIALS}

    def study_name(self) -> str:
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:12]
        return f"{self.base.method}-r{self.base.ratio:g}-{digest}"


def make_tune_config(base: TrainConfig, *, trials: int, seeds: list[int], sampler_seed: int, study_db: str,
                     out: str, params: tuple[str, ...] = (), top: int = 10) -> TuneConfig:
    """A checked :class:`TuneConfig`; every problem is one :class:`UserError` naming the option."""
    if base.method not in METHODS:
        raise UserError(f"unknown method {base.method!r} (choose from {', '.join(METHODS)})")
    try:
        config = TuneConfig(base=base, trials=trials, seeds=tuple(seeds), sampler_seed=sampler_seed,
                            study_db=str(study_db), out=str(out), params=tuple(params), top=top)
    except ConfigValueError as error:
        name = {"sampler_seed": "seed"}.get(error.field, error.field).replace("_", "-")
        raise UserError(f"--{name} {error.detail}") from None
    base.validate()
    config.space()  # an unknown --params entry
    _check_output_paths(config)
    return config


def _check_output_paths(config: TuneConfig) -> None:
    """Refuse a study database or an output folder that cannot be made, before any training."""
    database = Path(config.study_db)
    if database.is_dir():
        raise UserError("--study-db is a folder; give a file (e.g. tune.db)", database)
    for parent in (database.parent, *database.parent.parents):
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"--study-db: {parent} is a file, not a folder", database)
            break
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise UserError("--out is a file; give a folder", out)
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"--out: {parent} is a file, not a folder", out)
            break


# --------------------------------------------------------------------------- data and training


def without_test(data):
    """``data`` with its test rows cut off (they are the last rows of ``data.keys``): what a
    trial trains and measures on. Training reads only the labelled, unlabelled and validation
    rows, so the numbers are those of the full data; this makes it impossible to read the test
    labels, not merely unlikely."""
    keep = len(data.keys) - len(data.test)
    if len(data.test) and not np.array_equal(data.test, np.arange(keep, len(data.keys))):
        raise AssertionError("the test rows are expected last")  # prepare_data's layout changed
    return dataclasses.replace(
        data, keys=data.keys[:keep], tokens=data.tokens[:keep], scores=data.scores[:keep].copy(),
        difficulty=None if data.difficulty is None else data.difficulty[:keep], groups=data.groups[:keep],
        clip_counts=data.clip_counts[:keep], test=np.arange(0, dtype=data.test.dtype),
    )


class ValidationRunner:
    """Trains configurations on validation splits, preparing each seed's data once."""

    def __init__(self):
        self._data: dict[tuple, object] = {}

    def data_for(self, config: TrainConfig):
        from train.data import prepare_data

        key = (json.dumps(config.data_fields(), sort_keys=True, default=str), config.head.num_tokens,
               config.head.max_tokens)
        if key not in self._data:
            self._data[key] = without_test(prepare_data(config))
        return self._data[key]

    def validation_spearman(self, config: TrainConfig) -> tuple[float | None, float]:
        """``(validation ρ, seconds)`` of one run of ``config`` (no run folder; ρ None if undefined)."""
        from train.fitting import fit

        config.validate()
        result = fit(config, self.data_for(config), progress=False)
        return (result.validation or {}).get("spearman"), result.seconds


class TrialFailed(Exception):
    """A trial whose training diverged or whose validation ρ is undefined (constant predictions)."""


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    mean = float(np.mean(values))
    return mean, (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def trial_config(base: TrainConfig, params: dict, seed: int) -> TrainConfig:
    """The base configuration of one seed with a trial's values applied as ``--set`` would."""
    config = dataclasses.replace(base, seed=seed)
    return apply_overrides(config, [assignment(path, value) for path, value in params.items()])


# --------------------------------------------------------------------------- the study


def _optuna():
    try:
        import optuna
    except ImportError:
        raise UserError("tune needs Optuna: pip install -e '.[tune]' (or optuna)") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the command reports each trial itself
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def open_storage(study_db: str | Path):
    """Optuna's RDB storage on the SQLite file ``study_db`` (created if missing)."""
    optuna = _optuna()
    import sqlalchemy.exc

    path = Path(study_db).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(
            url=f"sqlite:///{path}", heartbeat_interval=HEARTBEAT_SECONDS, grace_period=HEARTBEAT_GRACE_SECONDS,
            # Several processes write to one file: wait for the lock rather than fail at once.
            engine_kwargs={"connect_args": {"timeout": 60}},
        )
    except (sqlalchemy.exc.SQLAlchemyError, RuntimeError, ValueError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"not an Optuna study database ({first})", path) from None
    except OSError as error:
        raise UserError(f"cannot open the study database ({error.strerror or error})", path) from None


def trial_seed(sampler_seed: int, trials_before: int) -> int:
    """The sampler's seed for the trial after ``trials_before`` others: a fresh random stream
    per trial that depends only on the command's seed and the trial's place."""
    return int(np.random.SeedSequence([sampler_seed, trials_before]).generate_state(1)[0])


def counted_trials(study) -> list:
    """The trials that count towards ``--trials``: complete ones and those that failed on their
    own (diverged, undefined ρ). A trial that was killed is not counted: its place is taken again."""
    from optuna.trial import TrialState

    return [trial for trial in study.get_trials(deepcopy=False)
            if trial.state == TrialState.COMPLETE or (trial.state == TrialState.FAIL and "error" in trial.user_attrs)]


@dataclass
class TuneResult:
    study_name: str
    study_db: str
    ran: int  # trials run by this call
    complete: int  # complete trials in the study
    failed: int
    best: dict | None  # {"number", "value", "params", ...} of the best complete trial
    written: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def _baselines(study, config: TuneConfig, runner: ValidationRunner, log) -> dict[int, float]:
    """Validation ρ of the supervised baseline for each seed: from the study when another
    process (or an earlier call) trained it, else trained now and stored there."""
    baseline = config.baseline_config()
    values = {}
    for seed in config.seeds:
        name = _BASELINE_ATTR.format(seed=seed)
        stored = study.user_attrs.get(name)
        if stored is None:
            rho, seconds = runner.validation_spearman(dataclasses.replace(baseline, seed=seed))
            if rho is None:
                raise UserError(f"the supervised baseline's validation Spearman is undefined for seed {seed} "
                                "(constant predictions): nothing to compare trials with; use another seed or a "
                                "larger --validation-fraction")
            stored = {"validation_spearman": rho, "seconds": seconds}
            study.set_user_attr(name, stored)
            log(f"tune: supervised baseline, seed {seed}: validation spearman {rho:.4f} ({seconds:.1f} s)")
        values[seed] = float(stored["validation_spearman"])
    return values


def _objective(config: TuneConfig, runner: ValidationRunner, baselines: dict[int, float]):
    space = config.space()

    def objective(trial) -> float:
        from train.fitting import TrainingDiverged

        params = {dimension.path: dimension.suggest(trial) for dimension in space}
        rhos, deltas, seconds = [], [], 0.0
        for seed in config.seeds:
            try:
                rho, took = runner.validation_spearman(trial_config(config.base, params, seed))
            except TrainingDiverged as error:
                trial.set_user_attr("error", f"seed {seed}: {error}")
                raise TrialFailed(str(error)) from None
            seconds += took
            if rho is None:
                trial.set_user_attr("error", f"seed {seed}: validation Spearman undefined (constant predictions)")
                raise TrialFailed("validation Spearman undefined")
            rhos.append(rho)
            deltas.append(rho - baselines[seed])
        rho_mean, rho_std = _mean_std(rhos)
        delta_mean, delta_std = _mean_std(deltas)
        for name, value in {"seeds": list(config.seeds), "validation_spearman": rhos,
                            "validation_spearman_mean": rho_mean, "validation_spearman_std": rho_std,
                            "paired_delta": deltas, "paired_delta_mean": delta_mean, "paired_delta_std": delta_std,
                            "seconds": seconds}.items():
            trial.set_user_attr(name, value)
        return delta_mean

    return objective


def run_tuning(config: TuneConfig, *, progress: bool | None = None,
               log: Callable[[str], None] = print) -> TuneResult:
    """Run (or resume) ``config``'s study until it has ``config.trials`` counted trials, then
    write the report into ``config.out``."""
    optuna = _optuna()
    started = time.perf_counter()
    storage = open_storage(config.study_db)
    name = config.study_name()
    identity = json.dumps(config.identity(), sort_keys=True)
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    except Exception as error:  # a database of another Optuna schema, a locked or broken file
        raise UserError(f"cannot open study {name} ({str(error).splitlines()[0]})", config.study_db) from None
    if study.user_attrs.get("identity", identity) != identity:
        raise UserError(f"study {name} in this database was made by another command; use another --study-db",
                        config.study_db)
    study.set_user_attr("identity", identity)

    runner = ValidationRunner()
    baselines = _baselines(study, config, runner, log)
    objective = _objective(config, runner, baselines)
    ran = 0
    done = len(counted_trials(study))
    bar = progress_bar(config.trials, enabled=progress, desc=f"tune {config.base.method}", unit="trial",
                       dynamic_ncols=True, leave=True, initial=min(done, config.trials))
    try:
        while done < config.trials:
            study.sampler = optuna.samplers.TPESampler(seed=trial_seed(config.sampler_seed, len(study.trials)),
                                                       n_startup_trials=STARTUP_TRIALS)
            mine: list = []  # this process's trial (others may finish theirs meanwhile)
            study.optimize(objective, n_trials=1, catch=(TrialFailed,), gc_after_trial=False,
                           callbacks=[lambda _study, trial: mine.append(trial)])
            ran += 1
            _log_trial(mine[-1], log)
            done = len(counted_trials(study))
            bar.update(min(done, config.trials) - bar.n)
            if any(trial.state.name == "COMPLETE" for trial in study.get_trials(deepcopy=False)):
                bar.set_postfix({"best Δρ": f"{study.best_value:+.4f}"}, refresh=False)
    finally:
        bar.close()
    written, notes = write_report(study, config, baselines)
    for note in notes:
        log(f"tune: {note}")
    complete = [trial for trial in study.get_trials(deepcopy=False) if trial.state.name == "COMPLETE"]
    failed = len(counted_trials(study)) - len(complete)
    best = _best(complete)
    return TuneResult(study_name=name, study_db=str(config.study_db), ran=ran, complete=len(complete),
                      failed=failed, best=best, written=written, seconds=time.perf_counter() - started)


def _log_trial(trial, log) -> None:
    attrs = trial.user_attrs
    shown = ", ".join(f"{path}={_shown(value)}" for path, value in trial.params.items())
    if trial.state.name == "COMPLETE":
        log(f"trial {trial.number}: Δρ {_pm(attrs['paired_delta_mean'], attrs['paired_delta_std'])}, "
            f"validation ρ {_pm(attrs['validation_spearman_mean'], attrs['validation_spearman_std'], signed=False)} "
            f"({attrs['seconds']:.1f} s)  {shown}")
    else:
        log(f"trial {trial.number}: failed ({attrs.get('error', trial.state.name.lower())})  {shown}")


def _best(complete: list) -> dict | None:
    if not complete:
        return None
    # Ties go to the earlier trial, so the choice does not depend on the order trials finished in.
    best = max(complete, key=lambda trial: (trial.value, -trial.number))
    return {"number": best.number, "value": best.value, "params": dict(best.params), **best.user_attrs}


# --------------------------------------------------------------------------- the report


def _shown(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _pm(mean: float, std: float | None, signed: bool = True) -> str:
    shown = f"{mean:+.4f}" if signed else f"{mean:.4f}"
    return f"{shown} ± {std:.4f}" if std is not None else shown


def best_config(config: TuneConfig, params: dict) -> TrainConfig:
    """The base configuration with the best trial's values, for ``train --config``: on the whole
    train split (no validation share held out) and the first tuning seed."""
    tuned = trial_config(config.base, params, config.seeds[0])
    return dataclasses.replace(tuned, validation_fraction=0.0)


def top_trials_rows(study, top: int) -> list[dict]:
    complete = [trial for trial in study.get_trials(deepcopy=False) if trial.state.name == "COMPLETE"]
    complete.sort(key=lambda trial: (-trial.value, trial.number))
    rows = []
    for rank, trial in enumerate(complete[:top], start=1):
        attrs = trial.user_attrs
        rows.append({
            "rank": rank, "trial": trial.number,
            "params": "; ".join(f"{path}={_shown(value)}" for path, value in trial.params.items()),
            "validation_spearman_mean": attrs["validation_spearman_mean"],
            "validation_spearman_std": attrs["validation_spearman_std"],
            "paired_delta_mean": attrs["paired_delta_mean"], "paired_delta_std": attrs["paired_delta_std"],
            "seconds": attrs["seconds"],
        })
    return rows


def _csv_text(rows: list[dict]) -> str:
    columns = ["rank", "trial", "params", "validation_spearman_mean", "validation_spearman_std",
               "paired_delta_mean", "paired_delta_std", "seconds"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: ("" if row[key] is None else row[key]) for key in columns})
    return buffer.getvalue()


def _markdown_text(rows: list[dict], config: TuneConfig, baselines: dict[int, float], counts: str) -> str:
    base = config.base
    values = [baselines[seed] for seed in config.seeds]
    mean, std = _mean_std(values)
    lines = [
        f"# tune: {base.method}, ratio {base.ratio:g}, target {base.target or 'default'}",
        "",
        f"Validation splits of the train split ({base.validation_fraction:g} held out), seeds "
        f"{', '.join(map(str, config.seeds))}; {counts}. `supervised` (default settings) on the same splits: "
        f"validation ρ {mean:.4f}" + (f" ± {std:.4f}" if std is not None else "") + ". Mean ± std over seeds.",
        "",
        "| rank | trial | validation ρ | paired Δρ vs supervised | parameters |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        rho = f"{row['validation_spearman_mean']:.4f}" + (
            f" ± {row['validation_spearman_std']:.4f}" if row["validation_spearman_std"] is not None else "")
        lines.append(f"| {row['rank']} | {row['trial']} | {rho} | "
                     f"{_pm(row['paired_delta_mean'], row['paired_delta_std'])} | `{row['params']}` |")
    if not rows:
        lines.append("| — | — | — | — | no complete trial |")
    return "\n".join(lines) + "\n"


def _figure_bytes(axes) -> bytes:
    figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
    figure.set_size_inches(8, 5)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")  # "tight": the legend sits outside
    import matplotlib.pyplot as plt

    plt.close(figure)
    return buffer.getvalue()


def importance_skipped(study) -> str | None:
    """Why no importance plot can be drawn (None when it can): it needs two complete trials and
    a parameter that took at least two values among them."""
    complete = [trial for trial in study.get_trials(deepcopy=False) if trial.state.name == "COMPLETE"]
    if len(complete) < 2:
        return f"{len(complete)} complete trial(s); the importance plot needs at least 2"
    paths = {path for trial in complete for path in trial.params}
    if not any(len({json.dumps(trial.params.get(path)) for trial in complete}) > 1 for path in paths):
        return "no parameter took two different values"
    return None


def write_report(study, config: TuneConfig, baselines: dict[int, float]) -> tuple[list[Path], list[str]]:
    """best_config.json, top_trials.{md,csv}, study.json, tune_config.json, history.png and
    importance.png (when it can be drawn) into ``config.out``; returns the paths written and
    notes on what was not (e.g. why there is no importance plot)."""
    import matplotlib

    matplotlib.use("Agg")
    optuna = _optuna()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    written, notes = [], []
    complete = [trial for trial in study.get_trials(deepcopy=False) if trial.state.name == "COMPLETE"]
    failed = len(counted_trials(study)) - len(complete)
    best = _best(complete)
    rows = top_trials_rows(study, config.top)
    counts = f"{len(complete)} complete trial(s)" + (f", {failed} failed" if failed else "")

    written.append(write_json(out / "tune_config.json", to_dict(config)))
    if best is not None:
        written.append(write_json(out / "best_config.json", to_dict(best_config(config, best["params"]))))
    written.append(atomic_write_bytes(out / "top_trials.csv", _csv_text(rows).encode()))
    written.append(atomic_write_bytes(out / "top_trials.md", _markdown_text(rows, config, baselines, counts).encode()))
    written.append(write_json(out / "study.json", {
        "study_name": study.study_name, "study_db": str(Path(config.study_db).resolve()),
        "complete": len(complete), "failed": failed, "best": best,
        "baseline": {"method": BASELINE, "validation_spearman": {str(seed): value for seed, value in baselines.items()}},
        "identity": config.identity(),
    }))
    if complete:
        from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

        history = plot_optimization_history(study)
        history.set_ylabel("paired Δρ vs supervised (mean over seeds)")
        written.append(atomic_write_bytes(out / "history.png", _figure_bytes(history)))
        skipped = importance_skipped(study)
        if skipped is None:
            # PED-ANOVA: Optuna's own, deterministic, and without scikit-learn (fANOVA's need).
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()
            with warnings.catch_warnings():
                # With few trials, PED-ANOVA says the importances are all equal; the plot shows it.
                warnings.simplefilter("ignore", UserWarning)
                axes = plot_param_importances(study, evaluator=evaluator)
            written.append(atomic_write_bytes(out / "importance.png", _figure_bytes(axes)))
        else:
            (out / "importance.png").unlink(missing_ok=True)  # not a stale plot of fewer trials
            notes.append(f"no importance plot: {skipped}")
    else:
        notes.append("no complete trial: no best_config.json and no plots")
    return written, notes
