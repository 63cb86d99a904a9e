"""The command line's error boundary: an :class:`~openhart.errors.OpenHARTError` becomes one line.

Every ``openhart`` command (and the sub-apps ``train``, ``data``, and the standalone
``python -m openhart.synthesize``) runs inside :class:`ErrorBoundaryGroup` or
:class:`ErrorBoundaryCommand`. An expected failure prints ``Error: <message>`` on stderr and exits
with its category's code (:mod:`openhart.errors`); ``--debug`` or ``OPENHART_DEBUG=1`` lets it
through, so the traceback is shown. Anything that is not an OpenHARTError is a bug and keeps its
traceback: the boundary does not catch everything, only what the library raised on purpose.
"""

from __future__ import annotations

import os
from typing import Any

import click
import typer
from typer.core import TyperCommand, TyperGroup

from openhart.errors import OpenHARTError

DEBUG_ENV = "OPENHART_DEBUG"
# Where the global ``--debug`` option leaves its value for the boundary (click's per-run dict).
DEBUG_META_KEY = "openhart.debug"


def debug_requested(ctx: click.Context | None = None) -> bool:
    """Whether tracebacks are wanted: ``--debug`` on this run or ``OPENHART_DEBUG`` set to 1/true."""
    if ctx is not None and ctx.meta.get(DEBUG_META_KEY):
        return True
    return os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def error_line(error: OpenHARTError) -> str:
    """The one line printed for ``error``: its message with any line breaks folded into spaces."""
    message = " ".join(part.strip() for part in str(error).splitlines() if part.strip())
    return f"Error: {message or type(error).__name__}"


class _Boundary:
    """``invoke`` that turns an OpenHARTError into one stderr line and its category's exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)  # type: ignore[misc]
        except OpenHARTError as error:
            if debug_requested(ctx):
                raise
            typer.echo(error_line(error), err=True)
            raise typer.Exit(error.exit_code) from error


class ErrorBoundaryGroup(_Boundary, TyperGroup):
    """The main app's group: the boundary wraps the global options and every subcommand."""


class ErrorBoundaryCommand(_Boundary, TyperCommand):
    """A single-command app (``python -m openhart.synthesize``) with the same boundary."""
