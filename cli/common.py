"""Shared command-line plumbing: user errors print one line and exit 2, never a traceback."""
from __future__ import annotations

import sys
from typing import Callable

import click

from mksgn.errors import MksgnError

EXIT_USER_ERROR = 2


def run(command: click.Command, families: tuple = (MksgnError,)) -> Callable[[], None]:
    """Wrap a click command as a console-script entry point.

    Exceptions of ``families`` (each package's error family) are printed as
    ``error: <message>`` on stderr with exit status 2; Ctrl-C exits 130.
    """

    def main(argv=None) -> None:
        try:
            command.main(args=argv, standalone_mode=False)
        except families as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(130)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return main
