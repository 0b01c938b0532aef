"""Shared command-line plumbing: user errors print one line and exit 2, never a traceback.

Ctrl-C and SIGTERM are handled alike: the running step is interrupted (its temp output is
removed by the ``except BaseException`` cleanups of the writers), ``interrupted`` or
``terminated`` is printed and the exit status is 130 / 143. An interrupt that some library
swallowed ("Exception ignored ...") still ends the run with that status, never 0.
"""
from __future__ import annotations

import signal
import sys
from typing import Callable

import click

from mksgn.errors import MksgnError
from mksgn.guard import is_no_space

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every cleanup that handles Ctrl-C handles it too."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run(command: click.Command, families: tuple = (MksgnError,)) -> Callable[[], None]:
    """Wrap a click command as a console-script entry point.

    Exceptions of ``families`` (each package's error family) and click's usage errors are
    printed as one ``error: <message>`` line on stderr with exit status 2; a full disk
    (ENOSPC) as ``error: ... no space left on device``; Ctrl-C exits 130, SIGTERM 143.
    """

    def main(argv=None) -> None:
        seen = []

        def on_signal(signum, frame):
            seen.append(signum)
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, on_signal)
            except (ValueError, OSError):  # not the main thread: leave the handlers alone
                pass
        try:
            try:
                command.main(args=argv, standalone_mode=False)
            except families as exc:
                click.echo(f"error: {exc}", err=True)
                sys.exit(EXIT_USER_ERROR)
            except click.exceptions.Abort as exc:  # click turns KeyboardInterrupt (and so SIGTERM) into Abort
                if isinstance(exc.__context__, Terminated) or (seen and seen[-1] == signal.SIGTERM):
                    click.echo("terminated", err=True)
                    sys.exit(EXIT_TERMINATED)
                click.echo("interrupted" if seen else "aborted", err=True)
                sys.exit(EXIT_INTERRUPTED)
            except click.UsageError as exc:
                hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
                click.echo(f"error: {exc.format_message()}{hint}", err=True)
                sys.exit(EXIT_USER_ERROR)
            except click.ClickException as exc:
                click.echo(f"error: {exc.format_message()}", err=True)
                sys.exit(exc.exit_code)
            except Terminated:
                click.echo("terminated", err=True)
                sys.exit(EXIT_TERMINATED)
            except KeyboardInterrupt:
                click.echo("interrupted", err=True)
                sys.exit(EXIT_INTERRUPTED)
            except OSError as exc:
                if not is_no_space(exc):
                    raise
                where = f" writing {exc.filename}" if exc.filename else ""
                click.echo(f"error: no space left on device{where}; free some space and run again", err=True)
                sys.exit(EXIT_USER_ERROR)
            if seen:  # an interrupt a library caught and printed as "Exception ignored": not a success
                click.echo("terminated" if seen[-1] == signal.SIGTERM else "interrupted", err=True)
                sys.exit(EXIT_TERMINATED if seen[-1] == signal.SIGTERM else EXIT_INTERRUPTED)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    return main
