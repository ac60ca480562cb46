"""`dhserve submit` and `status`: the commands that talk to a running service over HTTP."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from urllib.parse import urljoin

import click

from dhserve.cli.common import EXIT_INPUT_ERROR, ProgressBar, reported
from dhserve.client import Client, ServerFile
from dhserve.config import LOOP_MODES, ClientSettings
from dhserve.errors import InputError, InputNotFound, OutputInvalid
from dhserve.jobs.downloads import is_url
from dhserve.jobs.model import CONTENT_TYPES, background_option, default_container

_SERVER_HELP = "The service's URL [env DHSERVE_SERVER; default http://<DHSERVE_BIND>]."
_KEY_HELP = ("API key, sent as 'Authorization: Bearer'. Better set DHSERVE_API_KEY: a flag "
             "shows in `ps` to every user of the machine.")


def _client(server: str | None, api_key: str | None):
    """A client of the running service (dhserve.client), from the flags and the few settings
    a client reads (ClientSettings: a bad unrelated DHSERVE_* variable does not matter)."""
    try:
        settings = ClientSettings.from_env(server=server, api_key=api_key)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    with reported():
        return Client(settings.server_url, settings.api_key or None)


SERVER_PREFIX = "server:"


@click.command()
@click.option("--video", required=True,
              help="Avatar video or still image: a local file (uploaded), an http(s) URL, or "
                   "server:NAME for a file already on the server (a name in its data dir's "
                   "temp/, or a path inside its data dir).")
@click.option("--audio", required=True,
              help="Speech: a local file (uploaded), an http(s) URL, or server:NAME.")
@click.option("--server", default=None, help=_SERVER_HELP)
@click.option("--api-key", default=None, help=_KEY_HELP)
@click.option("--backend", default=None, help="Lip-sync backend [the server's default].")
@click.option("--loop", type=click.Choice(LOOP_MODES), default=None,
              help="How the template repeats when the speech is longer [the server's default].")
@click.option("--background", default=None,
              help="What is behind the person: keep [default], transparent (a .webm, or "
                   ".mov with --container mov), a #rrggbb colour (e.g. '#00b140'), or an "
                   "image: a local file (uploaded), an http(s) URL, or server:NAME.")
@click.option("--container", type=click.Choice(["webm", "mov"]), default=None,
              help="The result's container for a transparent background [webm]; every "
                   "other background gives an mp4.")
@click.option("--id", "job_id", default=None,
              help="Job id (Idempotency-Key): the same id and inputs again is the same job.")
@click.option("--wait", is_flag=True, help="Follow the job to its end with a progress bar.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Download the result to this file (implies --wait).")
@click.option("--quiet", is_flag=True, help="No progress bar, no stage lines: only the result.")
@click.pass_context
def submit(ctx: click.Context, video: str, audio: str, server: str | None,
           api_key: str | None, backend: str | None, loop: str | None,
           background: str | None, container: str | None, job_id: str | None,
           wait: bool, out: Path | None, quiet: bool) -> None:
    """Send a render job to a running service; prints its id, or with --wait follows it
    (exit status 0 when it succeeded, 2 when it failed or was refused).

    \b
    Inputs: a local file is uploaded; an http(s) URL is fetched by the server;
    server:NAME names a file already on the server, e.g.
      dhserve submit --video server:avatar.mp4 --audio speech.wav --wait"""
    with reported():
        if out is not None and not (out.is_dir() or out.parent.is_dir()):
            raise OutputInvalid("--out", f"no such folder: {out.parent}")
        inputs = [_submitted_input(value, flag)
                  for value, flag in ((video, "--video"), (audio, "--audio"))]
        if background and not background_option(background):
            background = _submitted_input(background, "--background")
        _check_out_suffix(out, container or default_container(background))
    client = _client(server, api_key)
    options = {name: value for name, value in (("backend", backend), ("loop", loop),
                                               ("background", background),
                                               ("container", container)) if value}
    with reported():
        job = client.submit(*inputs, job_id=job_id, **options)
    if not (wait or out):
        click.echo(job.id)
        return
    try:
        with ProgressBar(quiet) as bar, reported(bar.finish):
            follow = _WaitDisplay(bar, quiet)
            job = client.wait(job, on_progress=follow.progress, on_retry=follow.retry)
    except KeyboardInterrupt:
        click.echo(f"\nstopped following; job {job.id} goes on (dhserve status {job.id})",
                   err=True)
        sys.exit(130)
    if job.state != "succeeded":
        click.echo(f"error {job.error_code or 'job.' + job.state}: "
                   f"{job.error_message or 'job ' + job.state}", err=True)
        sys.exit(EXIT_INPUT_ERROR)
    result = job.result
    where = str(out) if out else _on_server(client, result.url)
    if out:
        with reported():
            client.download(job, out)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{where}: {result.frames} frames, {result.width}x{result.height} @ "
               f"{result.fps or 0:g} fps, {result.duration or 0:.2f} s of video rendered in "
               f"{result.elapsed or 0:.2f} s (job {job.id}, {result.backend})")


def _check_out_suffix(out: Path | None, container: str) -> None:
    """--out names a file of the container the result comes in (a folder gets <id>.<it>)."""
    suffix = out.suffix.lower().lstrip(".") if out is not None and not out.is_dir() else ""
    if suffix in CONTENT_TYPES and suffix != container:
        raise OutputInvalid("--out", f"the result is {'an' if container == 'mp4' else 'a'} "
                            f"{container}: name it .{container}, not .{suffix}")


def _submitted_input(value: str, flag: str):
    """What `dhserve submit` sends for an input: a local file (uploaded), a URL, or the
    server's own file named with `server:`. Anything else is a local file that does not
    exist, said so: it is not sent to the server as a name by accident."""
    if value.startswith(SERVER_PREFIX):
        name = value[len(SERVER_PREFIX):].strip()
        if not name:
            raise InputError(flag, "server: needs a name after it, "
                             "e.g. server:avatar.mp4")
        return ServerFile(name)
    if is_url(value):
        return value
    path = Path(value).expanduser()
    if not path.exists():
        raise InputNotFound(flag, f"no such local file: {value}; to name a "
                            f"file on the server, write {SERVER_PREFIX}{value}")
    if not path.is_file():
        raise InputNotFound(flag, f"not a file: {value}")
    return path


class _WaitDisplay:
    """Feeds a job's progress to the bar (without a terminal, one line per stage), and says
    when the service cannot be reached for a while: the job is still followed."""
    def __init__(self, bar: ProgressBar, quiet: bool):
        self.bar, self.quiet = bar, quiet
        self.shown: set[str] = set()
        self.fraction = 0.0
        self.outage = False

    def progress(self, job) -> None:
        self.fraction, self.outage = job.progress / 100, False
        self.bar.update(self.fraction, job.stage or job.state)
        if not self.bar.enabled and not self.quiet and job.stage not in self.shown:
            self.shown.add(job.stage)
            click.echo(f"{job.id}: {job.state} {job.progress}% {job.stage}", err=True)

    def retry(self, error) -> None:
        self.bar.update(self.fraction, "reconnecting…")
        if not self.outage and not self.bar.enabled and not self.quiet:
            click.echo(f"reconnecting… ({error.code}: {error.message})", err=True)
        self.outage = True


def _on_server(client, path: str) -> str:
    """A path the server gave (already under its SCRIPT_NAME behind a proxy) as a full URL."""
    return urljoin(client.base_url + "/", path)


@click.command()
@click.argument("job_id", metavar="CODE")
@click.option("--server", default=None, help=_SERVER_HELP)
@click.option("--api-key", default=None, help=_KEY_HELP)
@click.option("--json", "as_json", is_flag=True, help="The job as the server's JSON document.")
@click.pass_context
def status(ctx: click.Context, job_id: str, server: str | None, api_key: str | None,
           as_json: bool) -> None:
    """One job of a running service: state, progress, times, result or error."""
    client = _client(server, api_key)
    with reported():
        job = client.get(job_id)
    if as_json:
        click.echo(json.dumps(job.document, indent=2, sort_keys=True))
        return
    click.echo(f"{job.id} {job.state} {job.progress}% {job.stage}"
               f"{' (cancel requested)' if job.cancel_requested and not job.finished else ''}")
    click.echo(f"  video: {job.video}\n  audio: {job.audio}")
    if job.background:
        click.echo(f"  background: {job.background}")
    click.echo(f"  submitted {job.created_at}, started {job.started_at or '-'}, "
               f"finished {job.finished_at or '-'}")
    if job.result:
        r = job.result
        click.echo(f"  result: {_on_server(client, r.url)} ({r.container}, {r.width}x{r.height}, "
                   f"{r.duration or 0:.2f} s, rendered in {r.elapsed or 0:.2f} s)")
    if job.error_code:
        click.echo(f"  error {job.error_code}: {job.error_message}")
