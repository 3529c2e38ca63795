"""The ``robustkit`` command line: a thin layer over the Python API.

Each command lives in its own module and is added to the group here. User errors
(:class:`robustkit.errors.RobustkitError`) are printed as one line, ``error: ...``, with exit status 2.
"""
from __future__ import annotations

import sys

import click

from robustkit import __version__
from robustkit.errors import RobustkitError

INTERRUPTED = "interrupted: finished batches are saved; run the same command again to resume"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="robustkit")
def cli() -> None:
    """Adversarial-robustness evaluation: attacks, defenses, a model zoo and leaderboards."""


def _add_commands() -> None:
    from . import zoo_cmd

    cli.add_command(zoo_cmd.zoo)
    for mod_name, attr in (("eval_cmd", "eval_cmd"), ("attacks_cmd", "attacks"), ("defenses_cmd", "defenses"),
                           ("datasets_cmd", "datasets"), ("report_cmd", "report"), ("compare_cmd", "compare"),
                           ("export_cmd", "export"), ("train_cmd", "train")):
        try:
            mod = __import__(f"robustkit.cli.{mod_name}", fromlist=[attr])
        except ModuleNotFoundError as exc:
            if exc.name != f"robustkit.cli.{mod_name}":
                raise
            continue
        cli.add_command(getattr(mod, attr))


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning user errors into one line on stderr."""
    _add_commands()
    try:
        cli.main(args=argv, prog_name="robustkit", standalone_mode=False)
    except RobustkitError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except (KeyboardInterrupt, click.exceptions.Abort):
        # click turns Ctrl-C into Abort; either way the batch in progress was rolled back and every
        # committed batch is in the store, which is what the user needs to know
        click.echo(INTERRUPTED, err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
