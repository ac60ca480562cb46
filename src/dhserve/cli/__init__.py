"""The `dhserve` command: the root group, its global options, and the table of subcommands.

Each subcommand lives in the module of its group (render, serving, jobs, remote, inspection)
and is imported only when it runs, or when `--help` lists it, so `dhserve submit` never loads
what `dhserve worker` needs."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import click

from dhserve import __version__

COMMANDS = {                # adding a command: a function in its group's module, one line here
    "render": "dhserve.cli.render:render",
    "serve": "dhserve.cli.serving:serve",
    "web": "dhserve.cli.serving:web",
    "worker": "dhserve.cli.serving:worker",
    "jobs": "dhserve.cli.jobs:jobs",
    "submit": "dhserve.cli.remote:submit",
    "status": "dhserve.cli.remote:status",
    "doctor": "dhserve.cli.inspection:doctor",
    "models": "dhserve.cli.inspection:models",
    "top": "dhserve.cli.inspection:top",
}

DATA_DIR_HELP = "Where dhserve keeps its files [env DHSERVE_DATA_DIR; default ./data]."
VERBOSE_HELP = "Log what the engine does (and a failure's traceback)."


def _global_options() -> list[click.Option]:
    """--data-dir and -v, accepted after any subcommand too (`dhserve serve --data-dir X`);
    given in both places, the subcommand's wins."""
    return [click.Option(["--data-dir"], type=click.Path(path_type=Path), default=None,
                         expose_value=False, is_eager=True, callback=_set_global,
                         help=DATA_DIR_HELP),
            click.Option(["-v", "--verbose"], is_flag=True, default=None, expose_value=False,
                         is_eager=True, callback=_set_global, help=VERBOSE_HELP)]


def _set_global(ctx: click.Context, param: click.Parameter, value) -> None:
    if value is None or value is False:
        return
    ctx.ensure_object(dict)[param.name] = value
    if param.name == "verbose":
        logging.getLogger().setLevel(logging.INFO)


def _share_global_options(command: click.Command) -> None:
    """The command, and every subcommand of a group, takes the global options as well."""
    command.params.extend(_global_options())
    if isinstance(command, click.Group):
        for subcommand in command.commands.values():
            _share_global_options(subcommand)


class LazyGroup(click.Group):
    """A group whose subcommands are "module:command" names, imported on first use (click's
    documented lazy-loading pattern), each given the global options once."""
    def __init__(self, *args, lazy_subcommands: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = lazy_subcommands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_subcommands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in self.lazy_subcommands:
            return super().get_command(ctx, cmd_name)
        module_name, _, attribute = self.lazy_subcommands[cmd_name].partition(":")
        command = getattr(importlib.import_module(module_name), attribute)
        _share_global_options(command)
        self.add_command(command, cmd_name)       # loaded once per process
        return command


@click.group(cls=LazyGroup, lazy_subcommands=COMMANDS)
@click.version_option(__version__, prog_name="dhserve")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help=DATA_DIR_HELP)
@click.option("-v", "--verbose", is_flag=True, help=VERBOSE_HELP)
@click.pass_context
def main(ctx: click.Context, data_dir: Path | None, verbose: bool) -> None:
    """dhserve: avatar video + speech in, lip-synced talking-head MP4 out.

    --data-dir and -v may come before or after the subcommand."""
    ctx.ensure_object(dict)
    ctx.obj["data_dir"] = data_dir
    ctx.obj["verbose"] = verbose
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
