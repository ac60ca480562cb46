"""What the command modules share: settings from the global options, dhserve's errors as
`error CODE: message`, and the progress bar."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from dhserve.config import Settings
from dhserve.errors import DhserveError, StoreUnreachable, first_line
from dhserve.stages import Stage

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar as ProgressBarDisplay  # what progressbar gives

EXIT_INPUT_ERROR = 2


@contextmanager
def reported(before_exit: Callable[[], None] | None = None) -> Iterator[None]:
    """dhserve's errors end the command as `error CODE: message` and exit status 2, with no
    traceback; an unreachable database is one of them."""
    from sqlalchemy.exc import DBAPIError

    try:
        yield
    except (DhserveError, DBAPIError) as exc:
        if before_exit:
            before_exit()
        code, message = ((exc.code, exc.message) if isinstance(exc, DhserveError)
                         else (StoreUnreachable.code, first_line(exc.orig)))
        click.echo(f"error {code}: {message}", err=True)
        sys.exit(EXIT_INPUT_ERROR)


def settings_of(ctx: click.Context, **overrides) -> Settings:
    """The settings, with the global --data-dir and the command's own flags over the
    environment; a bad value is a usage error."""
    try:
        return Settings.from_env(data_dir=ctx.obj.get("data_dir"), **overrides)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


class ProgressBar:
    """A terminal bar fed with (fraction, stage) updates; silent when quiet or not a TTY."""
    def __init__(self, quiet: bool):
        self.enabled = not quiet and sys.stderr.isatty()
        self._bar: ProgressBarDisplay[int] | None = None
        self._shown = 0

    def __enter__(self):
        if self.enabled:
            self._bar = click.progressbar(length=1000, label=str(Stage.STARTING),
                                          file=sys.stderr, show_percent=True,
                                          width=30).__enter__()
        return self

    def update(self, fraction: float, stage: str) -> None:
        if self._bar is None:
            return
        self._bar.label = f"{stage:<15}"
        target = int(fraction * 1000)
        self._bar.update(max(0, target - self._shown))
        self._shown = max(self._shown, target)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    def __exit__(self, *exc) -> None:
        self.finish()
