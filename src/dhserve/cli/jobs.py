"""`dhserve jobs`: look into and feed the job queue directly, as the workers see it."""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path

import click

from dhserve.cli.common import reported, settings_of
from dhserve.jobs import JobSpec, JobStore
from dhserve.jobs.admission import admit
from dhserve.jobs.downloads import is_url
from dhserve.jobs.model import background_option
from dhserve.serving.roles import count_in_service


@click.group()
@click.option("--database-url", default=None,
              help="Job store [env DHSERVE_DATABASE_URL; default SQLite in the data dir].")
@click.pass_context
def jobs(ctx: click.Context, database_url: str | None) -> None:
    """Look into and feed the job queue directly (the workers' side of the HTTP API)."""
    ctx.obj["database_url"] = database_url


def _store(ctx: click.Context, counted: bool = False):
    """The job store; `counted`: the command records metrics (a cancel), which go to a
    running service's metrics folder on this machine."""
    settings = settings_of(ctx, database_url=ctx.obj.get("database_url"))
    with reported():
        store = JobStore.from_settings(settings)
    if counted:
        count_in_service(settings, store)
    return settings, store


def _job_line(job) -> str:
    what = (f"{job.progress:3d}% {job.stage}" if not job.state.finished else
            job.result or f"{job.error_code}: {job.error_message}")
    return f"{job.id:<24} {job.state.value:<9} attempts {job.attempts}  {what}"


@jobs.command("submit")
@click.option("--video", required=True, help="Template: a path or an http(s) URL.")
@click.option("--audio", required=True, help="Speech: a path or an http(s) URL.")
@click.option("--id", "job_id", default=None, help="Job id [default: a new UUID].")
@click.option("--out", default=None,
              help="Result path [default: <data dir>/results/<id>.mp4, or .webm / .mov for a "
                   "transparent background].")
@click.option("--background", default=None,
              help="keep, transparent, a #rrggbb colour, or an image behind the person (a "
                   "path or an http(s) URL).")
@click.option("--priority", type=int, default=0, help="Higher runs first.")
@click.option("--option", "pairs", multiple=True, metavar="NAME=VALUE",
              help="Render option, e.g. loop=restart, face_restore=true (repeatable).")
@click.pass_context
def jobs_submit(ctx: click.Context, video: str, audio: str, job_id: str | None,
                out: str | None, background: str | None, priority: int,
                pairs: tuple[str, ...]) -> None:
    """Queue a render job; prints its id. The result's container follows the background
    (--option container=mov for a transparent .mov)."""
    options = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--option")
        try:
            options[name] = json.loads(raw)
        except ValueError:
            options[name] = raw
    settings, store = _store(ctx)

    def located(value: str) -> str:      # workers may run elsewhere: never a relative path
        return value if is_url(value) else str(Path(value).resolve())

    image = None
    if background_option(background):
        options["background"] = background
    elif background:
        image = located(background)
    spec = JobSpec(located(video), located(audio), located(out) if out else None, options,
                   priority, background=image)
    named = {spec.video: video, spec.audio: audio}
    if image and background:
        named[image] = background
    with reported():        # the checks of /easy and /v1: a refusal reads the same
        job, created = admit(settings, store, job_id or uuid.uuid4().hex, spec, named=named)
    click.echo(job.id if created else f"{job.id} (already queued: same id and inputs)")


@jobs.command("list")
@click.option("--state", type=click.Choice(["queued", "running", "succeeded", "failed",
                                            "canceled"]), default=None)
@click.option("--limit", type=int, default=20)
@click.pass_context
def jobs_list(ctx: click.Context, state: str | None, limit: int) -> None:
    """Recent jobs, newest first, then the queue and the workers."""
    _, store = _store(ctx)
    for job in store.list(state, limit):
        click.echo(_job_line(job))
    counts = ", ".join(f"{n} {s.value}" for s, n in store.counts().items() if n)
    click.echo(f"-- {counts or 'no jobs'}")
    now = store.now()
    for w in store.workers():
        click.echo(f"worker {w.id} on {w.device} ({w.backend or '-'}): {w.state}"
                   f"{' ' + w.job_id if w.job_id else ''}, heartbeat "
                   f"{now - w.heartbeat_at:.0f} s ago")


@jobs.command("show")
@click.argument("job_id")
@click.pass_context
def jobs_show(ctx: click.Context, job_id: str) -> None:
    """One job in full."""
    _, store = _store(ctx)
    with reported():
        job = store.get(job_id)
    click.echo(json.dumps(dataclasses.asdict(job), indent=2, default=str))


@jobs.command("cancel")
@click.argument("job_id")
@click.pass_context
def jobs_cancel(ctx: click.Context, job_id: str) -> None:
    """Cancel a job: at once when queued, at the next frame batch when running."""
    _, store = _store(ctx, counted=True)
    with reported():
        click.echo(_job_line(store.cancel(job_id)))
