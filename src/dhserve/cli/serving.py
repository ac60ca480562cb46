"""`dhserve serve`, `web` and `worker`: the service's processes."""

from __future__ import annotations

import sys

import click

from dhserve.cli.common import reported, settings_of
from dhserve.config import LAYOUTS, MODES, PROFILE_NAMES, ServingSettings, Settings
from dhserve.logs import configure_logging
from dhserve.serving.launcher import diagnose as run_diagnosis
from dhserve.serving.launcher import serve as run_service
from dhserve.serving.plan import plan_serving
from dhserve.serving.roles import become_render_worker


def _serving(**overrides) -> ServingSettings:
    try:
        return ServingSettings.from_env(**overrides)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _log_level(ctx: click.Context) -> str:
    return "DEBUG" if ctx.obj["verbose"] else "INFO"


def _service_logging(ctx: click.Context, settings: Settings) -> None:
    """The service's processes log to stderr and <data dir>/log/dh.log, with pid and job."""
    configure_logging(settings, _log_level(ctx))


@click.command()
@click.option("--mode", type=click.Choice(MODES), default="auto", show_default=True,
              help="auto: Gunicorn, falling back to Flask's threaded server if Gunicorn "
                   "cannot be imported or fails to boot.")
@click.option("--layout", type=click.Choice(LAYOUTS), default=None,
              help="split (default): web tier + one render worker process per GPU; "
                   "all-in-one: one Gunicorn worker renders in a background thread "
                   "[env DHSERVE_LAYOUT].")
@click.option("--profile", type=click.Choice(PROFILE_NAMES), default=None,
              help="Threads, batch size and memory limit by GPU memory [env DHSERVE_PROFILE; "
                   "default auto].")
@click.option("--gpus", default=None,
              help="auto (every GPU NVML sees), none (CPU), or indices like 0,1 "
                   "[env DHSERVE_GPUS].")
@click.option("--bind", default=None,
              help="host:port [env GUNICORN_BIND or DHSERVE_BIND; default 127.0.0.1:8383].")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Gunicorn web workers [env GUNICORN_WORKERS; split 2, all-in-one 1].")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="Threads per web worker [env GUNICORN_THREADS; default from the profile].")
@click.option("--max-memory", "max_memory_mb", type=click.FloatRange(0), default=None,
              help="MB of RSS, and of GPU memory, a process may hold before it recycles "
                   "after its job; 0: off [env GUNICORN_MAX_MEMORY; default from the profile].")
@click.option("--diagnose", is_flag=True,
              help="Print what would be started and whether it can, then exit.")
@click.pass_context
def serve(ctx: click.Context, mode: str, diagnose: bool, **overrides) -> None:
    """Serve the HTTP API and render jobs: the whole service on this machine.

    Runs until SIGTERM/Ctrl-C (running jobs finish within DHSERVE_STOP_GRACE_SECONDS, or are
    handed back); SIGHUP recycles every process gracefully."""
    settings = settings_of(ctx)
    serving = _serving(**overrides)
    if diagnose:
        sys.exit(run_diagnosis(settings, serving))
    _service_logging(ctx, settings)
    with reported():
        sys.exit(run_service(settings, serving, mode))


@click.command()
@click.option("--bind", default=None,
              help="host:port to listen on [env GUNICORN_BIND or DHSERVE_BIND; "
                   "default 127.0.0.1:8383].")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Gunicorn web workers (they hold no models) [default 2].")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="Threads per web worker [default from the GPU profile].")
@click.pass_context
def web(ctx: click.Context, **overrides) -> None:
    """Serve only the HTTP API (HeyGem /easy, /v1/jobs, /health) under Gunicorn.

    Renders happen in `dhserve worker` processes that share the data dir and job store."""
    from dhserve.serving.web import run_gunicorn  # Gunicorn may be absent (serve falls back)

    settings = settings_of(ctx)
    with reported():
        plan = plan_serving(settings, _serving(layout="split", **overrides), "split")
        run_gunicorn(settings, plan)


@click.command()
@click.option("--device", default=None,
              help="cpu, cuda or cuda:N [env DHSERVE_DEVICE; default cpu].")
@click.option("--database-url", default=None,
              help="Job store [env DHSERVE_DATABASE_URL; default SQLite in the data dir].")
@click.option("--backend", default=None, help="Default lip-sync backend [env DHSERVE_BACKEND].")
@click.option("--max-jobs", type=int, default=None, help="Exit after this many jobs.")
@click.option("--max-memory", "max_memory_mb", type=click.FloatRange(0), default=None,
              help="After a job, exit (to be restarted) if RSS or GPU memory is over this "
                   "many MB [env GUNICORN_MAX_MEMORY; default off].")
@click.pass_context
def worker(ctx: click.Context, max_jobs: int | None, max_memory_mb: float | None,
           **overrides) -> None:
    """Render jobs from the queue until stopped (SIGTERM/SIGINT: finish or hand back;
    SIGHUP: finish the job, then exit to be restarted)."""
    settings = settings_of(ctx, **overrides)
    limit = _serving(max_memory_mb=max_memory_mb).max_memory_mb
    with reported():
        render_worker = become_render_worker(settings, limit or 0, _log_level(ctx))
        render_worker.run(max_jobs=max_jobs)
