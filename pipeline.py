#!/usr/bin/env python
"""Command line of the semi-supervised AQA pipeline: parse, call a stage, report.

Run ``python pipeline.py --help`` for the commands, ``python pipeline.py COMMAND --help`` for one.
"""

from __future__ import annotations

import sys

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
